"""The registry through a real MLflow tracking server (the compose `mlflow` service, a Helm
tracking URI): `fraud train` uploads its run and model through the server, `fraud models`
moves the alias, and a holder downloads the champion through the server's artifact proxy."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from model.registry import CHAMPION, Registry, RegistrySource
from model.scoring import ModelHolder
from streaming.kafka.broker import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def mlflow_server(tmp_path: Path, mlflow_template: Path) -> Iterator[str]:
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    assert mlflow, "the mlflow command comes with the test extras (the ui extra: full mlflow)"
    db = tmp_path / "server" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(mlflow_template, db)
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("wb")
    # The server's job runner (GenAI jobs: a pool of consumer processes) is of no use here; its
    # own session, so that stopping it stops every process it started.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [
            mlflow, "server", f"--backend-store-uri=sqlite:///{db}",
            f"--artifacts-destination={tmp_path / 'server' / 'artifacts'}",
            "--host=127.0.0.1", f"--port={port}", "--workers=1",
        ],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow server not up:\n" + (tmp_path / "mlflow-server.log").read_text()
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def fraud(*args: str, uri: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FRAUD_MLFLOW_TRACKING_URI": uri, "FRAUD_ACTOR": "ops"}
    return subprocess.run(
        [sys.executable, "-m", "streaming.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


@pytest.mark.timeout(1200)  # a server to start, two CLI runs importing MLflow: minutes on a busy machine
def test_train_promote_and_serve_through_a_tracking_server(
    mlflow_server: str, tmp_path: Path, train_frame: pd.DataFrame
) -> None:
    csv = tmp_path / "train.csv"
    train_frame.to_csv(csv, index=False)
    out = fraud("train", "--data", str(csv), "--out", str(tmp_path / "m"), "--model", "logreg", uri=mlflow_server)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "registered fraudstream version 1" in out.stdout
    assert f"MLflow {mlflow_server}/#/experiments/" in out.stdout  # a link into the UI
    out = fraud("models", "promote", "1", "--reason", "first through the server", uri=mlflow_server)
    assert out.returncode == 0, out.stderr[-3000:]
    listed = fraud("models", "list", uri=mlflow_server)
    assert listed.returncode == 0 and " champion " in listed.stdout, listed.stdout

    registry = Registry(mlflow_server)
    run = registry.client.get_run(registry.versions()[0].run_id)
    # Stored by the server, not by the client: the artifacts travel through its proxy.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    holder = ModelHolder(RegistrySource(registry, CHAMPION))
    assert holder.load() and holder.stamp == "1"
    assert holder.scorer.version == registry.versions()[0].artifact_version
    assert any(p.name == "model.joblib" for p in (tmp_path / "server" / "artifacts").rglob("*"))
