"""Child processes for the demo, the bench, the embedded broker and the integration tests.

A child writes its output to a log file (or nowhere), is waited for until it answers (over
HTTP, or any other check) with an error that names what was awaited and ends with the tail of
its log, and is stopped with a polite signal, then killed after a timeout.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType

#: How much of a log an error message carries.
TAIL_CHARS = 4000


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it; a race with other processes is possible)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def python_module(module: str, *args: str) -> list[str]:
    """The argv that runs ``module`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def log_tail(path: Path | None, chars: int = TAIL_CHARS) -> str:
    """The last ``chars`` characters of ``path`` (read from the end: logs can be large)."""
    if path is None:
        return "(no log kept)"
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - chars * 4))  # up to 4 bytes a character in UTF-8
            return fh.read().decode(errors="replace")[-chars:]
    except OSError as exc:
        return f"(no log: {exc})"


@dataclass
class Child:
    """A started process, its log, and how to stop it."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 30.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = TAIL_CHARS) -> str:
        return log_tail(self.log_path, chars)

    def explain(self) -> str:
        where = f" (last lines of {self.log_path})" if self.log_path is not None else ""
        return f"{where}:\n{self.log_tail()}"

    def signal(self, sig: int | None = None) -> None:
        """Send the stop signal (or ``sig``) if the child still runs; does not wait."""
        if self.running():
            self.proc.send_signal(self.stop_signal if sig is None else sig)

    def stop(self, sig: int | None = None, timeout: float | None = None) -> int:
        """Signal the child, wait up to ``timeout`` seconds, then kill it; its exit status."""
        self.signal(sig)
        return self.reap(timeout)

    def reap(self, timeout: float | None = None) -> int:
        """Wait for the child to exit, killing it after ``timeout`` seconds; its exit status."""
        try:
            return self.proc.wait(self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def wait(self, timeout: float) -> int:
        """Wait for the child to finish by itself; past ``timeout`` it is stopped and this raises
        ``TimeoutError`` with its log tail."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError(f"{self.name} still running after {timeout:.0f}s{self.explain()}") from None


def start(
    name: str,
    argv: list[str],
    log_path: Path | None,
    env: Mapping[str, str] | None = None,
    *,
    stdout: Path | None = None,
    append: bool = True,
    stop_signal: int = signal.SIGTERM,
    stop_timeout: float = 30.0,
) -> Child:
    """Start ``argv`` with its stderr (and stdout, unless ``stdout`` names another file) going to
    ``log_path``, appended to unless ``append`` is false; ``None`` discards them."""
    mode = "ab" if append else "wb"
    with contextlib.ExitStack() as files:  # the child holds its own descriptors
        log = files.enter_context(log_path.open(mode)) if log_path is not None else subprocess.DEVNULL
        out = files.enter_context(stdout.open("wb")) if stdout is not None else log
        err = subprocess.STDOUT if out is log else log
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err)  # noqa: S603 - argv from our own callers
    return Child(name, proc, log_path, stop_signal, stop_timeout)


def wait_for(child: Child, ready: Callable[[], bool], what: str, timeout: float, interval: float = 0.2) -> None:
    """Call ``ready`` until it is true. Raises ``RuntimeError`` as soon as ``child`` exits and
    ``TimeoutError`` after ``timeout`` seconds, each naming ``what`` and ending with the log tail."""
    deadline = time.monotonic() + timeout
    while True:
        if not child.running():
            raise RuntimeError(f"{child.name} exited with code {child.returncode} before {what}{child.explain()}")
        if ready():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{child.name}: no {what} after {timeout:.0f}s{child.explain()}")
        if interval:
            time.sleep(interval)


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 within a second."""
    import httpx

    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_http(url: str, child: Child, timeout: float = 90.0) -> None:
    """Wait until ``url`` answers 200; fail at once if ``child`` exits (see :func:`wait_for`)."""
    wait_for(child, partial(http_ok, url), f"answer from {url}", timeout)


def stop_all(children: Iterable[Child]) -> None:
    """Stop every child: all are signalled at once (latest first) and shut down side by side;
    each is killed when its own timeout, counted from then, has passed."""
    running = [c for c in reversed(list(children)) if c.running()]
    for child in running:
        child.signal()
    signalled = time.monotonic()
    for child in running:
        child.reap(max(0.0, signalled + child.stop_timeout - time.monotonic()))


class Children:
    """The children of one program, each logging to ``NAME.log`` in ``logdir``; a context manager
    that stops them all on the way out."""

    def __init__(self, logdir: Path, *, append: bool = True) -> None:
        self.logdir = logdir
        self.append = append
        self.started: list[Child] = []

    def log_path(self, name: str) -> Path:
        return self.logdir / f"{name}.log"

    def start(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        *,
        stdout: Path | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 30.0,
    ) -> Child:
        child = start(
            name,
            argv,
            self.log_path(name),
            env,
            stdout=stdout,
            append=self.append,
            stop_signal=stop_signal,
            stop_timeout=stop_timeout,
        )
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        stop_all(self.started)

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
