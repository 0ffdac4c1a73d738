"""stop_uncommitted: the log line, the exit status, and an exit that skips every shutdown hook."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from streaming.fatal import EXIT_INTERNAL_ERROR, stop_uncommitted
from tests.conftest import Exited, exit_raises


def test_logs_why_as_critical_and_exits_with_the_internal_error_status(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.CRITICAL, logger="fraudstream"), pytest.raises(Exited) as exited:
        stop_uncommitted("the seek failed", exit=exit_raises)
    assert exited.value.status == EXIT_INTERNAL_ERROR == 70
    [record] = caplog.records
    assert record.levelno == logging.CRITICAL and record.name == "fraudstream"
    assert record.getMessage() == "the seek failed; stopping without committing"
    assert not record.exc_info


def test_exc_info_carries_the_exception_being_handled(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.CRITICAL, logger="fraudstream"), pytest.raises(Exited):
        try:
            raise RuntimeError("broker gone")
        except RuntimeError:
            stop_uncommitted("the seek failed", exc_info=True, exit=exit_raises)
    [record] = caplog.records
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


CHILD = textwrap.dedent(
    """
    import atexit, logging, logging.handlers, sys

    from streaming.fatal import stop_uncommitted

    # Buffered below every level: only logging.shutdown() writes the record out.
    out = logging.StreamHandler(sys.stderr)
    out.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    buffered = logging.handlers.MemoryHandler(100, flushLevel=logging.CRITICAL + 1, target=out)
    logging.getLogger().addHandler(buffered)
    atexit.register(lambda: print("atexit ran", file=sys.stderr, flush=True))
    try:
        stop_uncommitted("replica behind")
    finally:
        print("finally ran", file=sys.stderr, flush=True)
    """
)


def test_a_real_process_stops_with_status_70_the_log_line_flushed_and_no_shutdown_hook() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == EXIT_INTERNAL_ERROR, done.stderr
    assert "CRITICAL fraudstream: replica behind; stopping without committing" in done.stderr
    # Faust's shutdown would commit the batch in flight: no hook and no cleanup may run.
    assert "atexit ran" not in done.stderr and "finally ran" not in done.stderr
