"""streaming.children with real child processes (small ``python -c`` scripts)."""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from streaming import children
from streaming.children import Child, Children, free_port, log_tail, wait_for, wait_http

#: Installs a SIGTERM handler that does nothing, says so, then sleeps: only a kill stops it.
STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: print('ignored SIGTERM', flush=True))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)
#: Leaves with status 7 on SIGTERM.
POLITE = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def python(script: str) -> list[str]:
    return [sys.executable, "-c", script]


def wait_ready(child: Child) -> None:
    wait_for(child, lambda: "ready" in child.log_tail(), "ready line", timeout=20, interval=0.02)


def test_output_and_errors_go_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    child = children.start("c", python("import sys; print('out'); print('err', file=sys.stderr)"), log)
    assert child.wait(20) == 0
    assert log.read_text().split() == ["out", "err"]
    assert child.log_tail() == log.read_text()


def test_stdout_to_its_own_file_and_logs_append_unless_told(tmp_path: Path) -> None:
    log, out = tmp_path / "c.log", tmp_path / "c.out"
    script = python("import sys; print('{\"x\": 1}'); print('progress', file=sys.stderr)")
    children.start("c", script, log, stdout=out).wait(20)
    children.start("c", script, log, stdout=out).wait(20)
    assert out.read_text() == '{"x": 1}\n'  # stdout is rewritten, never mixed with the log
    assert log.read_text() == "progress\nprogress\n"
    children.start("c", script, log, stdout=out, append=False).wait(20)
    assert log.read_text() == "progress\n"


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    child = children.start("stubborn", python(STUBBORN), tmp_path / "s.log", stop_timeout=1.0)
    wait_ready(child)
    started = time.monotonic()
    code = child.stop()
    took = time.monotonic() - started
    assert code == -signal.SIGKILL
    assert 1.0 <= took < 10.0
    assert "ignored SIGTERM" in child.log_tail()  # it was asked first


def test_a_child_that_handles_sigterm_exits_with_its_own_status(tmp_path: Path) -> None:
    child = children.start("polite", python(POLITE), tmp_path / "p.log", stop_timeout=30.0)
    wait_ready(child)
    started = time.monotonic()
    assert child.stop() == 7
    assert time.monotonic() - started < 10.0
    assert child.stop() == 7  # stopping a stopped child changes nothing


def test_the_stop_signal_is_the_childs_own(tmp_path: Path) -> None:
    script = (
        "import time\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    raise SystemExit(3)\n"
    )
    child = children.start("c", python(script), tmp_path / "c.log", stop_signal=signal.SIGINT)
    wait_ready(child)
    assert child.stop() == 3


def test_wait_names_the_child_and_stops_it_after_the_timeout(tmp_path: Path) -> None:
    child = children.start("slow", python(POLITE), tmp_path / "slow.log")
    wait_ready(child)
    with pytest.raises(TimeoutError, match=r"slow still running after 1s") as err:
        child.wait(1)
    assert "ready" in str(err.value)
    assert child.returncode == 7


def test_wait_http_fails_at_once_when_the_child_dies(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/ready"
    child = children.start("api", python("print('cannot load the model'); raise SystemExit(2)"), tmp_path / "api.log")
    started = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        wait_http(url, child, timeout=60)
    assert time.monotonic() - started < 20
    message = str(err.value)
    assert "api exited with code 2" in message and url in message
    assert str(tmp_path / "api.log") in message and "cannot load the model" in message


def test_wait_http_times_out_naming_the_url_and_the_log(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/ready"
    script = python("print('still starting', flush=True); import time; time.sleep(60)")
    child = children.start("worker", script, tmp_path / "worker.log")
    try:
        with pytest.raises(TimeoutError) as err:
            wait_http(url, child, timeout=1)
    finally:
        child.stop()
    message = str(err.value)
    assert f"worker: no answer from {url} after 1s" in message and "still starting" in message


def test_wait_http_returns_once_the_url_answers(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "ready").write_text("ok")
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    with Children(tmp_path) as group:
        server = group.start("http", argv)
        wait_http(f"http://127.0.0.1:{port}/ready", server, timeout=30)
        assert server.running()
    assert not server.running()


def test_stop_all_stops_children_side_by_side_and_on_errors(tmp_path: Path) -> None:
    group = Children(tmp_path)
    with pytest.raises(ValueError, match="boom"), group:
        stubborn = [group.start(f"s{i}", python(STUBBORN), stop_timeout=1.0) for i in range(3)]
        polite = group.start("p", python(POLITE))
        finished = group.start("done", python("pass"))
        finished.wait(20)
        for child in (*stubborn, polite):
            wait_ready(child)
        started = time.monotonic()
        raise ValueError("boom")
    took = time.monotonic() - started
    # Three stubborn children with 1 s each: killed after ~1 s together, not 3 s in turn.
    assert 1.0 <= took < 2.5
    assert [c.returncode for c in stubborn] == [-signal.SIGKILL] * 3
    assert polite.returncode == 7 and finished.returncode == 0
    assert (tmp_path / "s0.log").exists() and group.log_path("p") == tmp_path / "p.log"


def test_log_tail_reads_the_end_of_a_large_log(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_bytes(b"x" * 1_000_000 + "the end: é\n".encode())
    assert log_tail(path, chars=11) == "the end: é\n"
    assert log_tail(path).endswith("the end: é\n") and len(log_tail(path)) == 4000
    assert log_tail(tmp_path / "missing.log").startswith("(no log: ")


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
