"""Real local servers for tests, all on 127.0.0.1: an S3 endpoint (moto's HTTP server), an MLflow
tracking server and a Prefect server. Each starts once per test session as a subprocess."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-never-logged",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2):
                return
        time.sleep(0.3)
    raise RuntimeError(f"server for {url} not ready after {timeout}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def server(cmd: list[str], health_url: str, log: Path, timeout: float = 90, env: dict | None = None) -> Iterator[None]:
    with open(log, "w") as log_handle:
        proc = subprocess.Popen(cmd, stdout=log_handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True)
    try:
        wait_http(health_url, timeout, proc, log)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 2)  # SIGINT lets uvicorn/gunicorn shut down cleanly
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """URL of a moto S3 server (objects in memory only)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with server([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], f"{url}/moto-api/", log):
        yield url


@pytest.fixture()
def s3_env(s3_endpoint, monkeypatch) -> dict[str, str]:
    """Point boto3 (through AWS_* variables, as a user would) at the local endpoint."""
    from components.core import storage

    env = {"AWS_ENDPOINT_URL": s3_endpoint, **S3_CREDENTIALS}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    storage.reset_clients()
    yield env
    storage.reset_clients()


@pytest.fixture()
def s3_bucket(s3_env) -> str:
    """A fresh, empty bucket; returns its `s3://` URI."""
    import boto3

    name = f"t2v-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """URL of a real `mlflow server` with a sqlite backend and local artifacts."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    with server(cmd, f"{url}/health", root / "server.log", timeout=120, env=env):
        yield url


@pytest.fixture()
def tracking_server(mlflow_server, monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_server


@pytest.fixture()
def local_tracking(tmp_path, monkeypatch) -> Path:
    """The zero-set-up default: a sqlite file under T2V_HOME."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("T2V_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv("T2V_HOME", str(tmp_path / "t2v-home"))
    return tmp_path / "t2v-home"


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[str]:
    """API URL of a real Prefect server (SQLite)."""
    home = tmp_path_factory.mktemp("prefect")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": api, "PREFECT_UI_ENABLED": "true"}
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with server(cmd, f"{api}/health", home / "server.log", timeout=120, env=env):
        yield api


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")
