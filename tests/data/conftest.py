"""Fixtures for the data stage's tests: isolated MLflow tracking, a real local S3 endpoint (moto's
server in a subprocess), and small synthetic datasets shared across a session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.core import storage

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
BUCKET = "t2v-test"


@pytest.fixture(autouse=True)
def isolated_tracking(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test logs to a private sqlite MLflow store (shared within the session for speed)."""
    home = tmp_path_factory.getbasetemp() / "t2v_home"
    monkeypatch.setenv("T2V_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("T2V_PARENT_RUN_ID", raising=False)
    return home


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """moto's S3 server on a free loopback port for the whole session; yields its URL."""
    executable = MOTO_SERVER if MOTO_SERVER.exists() else Path("/work/main/.venv/bin/moto_server")
    port = _free_port()
    process = subprocess.Popen([str(executable), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            assert process.poll() is None, "moto_server exited at start-up"
            time.sleep(0.2)
    else:
        process.terminate()
        raise RuntimeError(f"moto_server did not listen on port {port} within 30 s")
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture()
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS environment pointed at the moto server, a fresh bucket; yields `s3://bucket/<test prefix>`."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    storage.reset_clients()
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if BUCKET not in existing:
        client.create_bucket(Bucket=BUCKET)
    yield f"s3://{BUCKET}/{os.urandom(4).hex()}"
    storage.reset_clients()


@pytest.fixture(scope="session")
def synth_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 synthetic shape clips (seed 7), every defect present; built once per session."""
    from components.data.synth import synthesize

    folder = tmp_path_factory.mktemp("synth_shapes")
    old = os.environ.get("T2V_HOME")
    os.environ["T2V_HOME"] = str(tmp_path_factory.getbasetemp() / "t2v_home")
    saved_uri = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        synthesize(str(folder), num=30, seed=7)
    finally:
        if old is None:
            os.environ.pop("T2V_HOME", None)
        else:
            os.environ["T2V_HOME"] = old
        if saved_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved_uri
    return folder
