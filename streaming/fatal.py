"""The one way a process stops on an internal error: log why, flush the logs, exit at once.

Exiting with ``os._exit`` skips every shutdown hook on purpose: Faust's would commit the offsets
of the batch in flight, and the point of stopping is that nothing of it is committed, so the
restart consumes it again (at-least-once).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import NoReturn

log = logging.getLogger("fraudstream")

#: Exit status of a process that stopped uncommitted on an internal error (BSD's EX_SOFTWARE).
EXIT_INTERNAL_ERROR = 70

#: What :func:`stop_uncommitted` calls to end the process; tests swap it for one that raises.
Exit = Callable[[int], NoReturn]


def exit_now(status: int) -> NoReturn:
    logging.shutdown()
    os._exit(status)


def stop_uncommitted(why: str, exc_info: bool = False, exit: Exit = exit_now) -> NoReturn:
    """Log ``why`` as critical and end the process with :data:`EXIT_INTERNAL_ERROR`."""
    log.critical("%s; stopping without committing", why, exc_info=exc_info)
    exit(EXIT_INTERNAL_ERROR)
