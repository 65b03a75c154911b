"""A real local S3 endpoint for the shard and loader tests: moto's HTTP server in a subprocess."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.core import storage


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def shard_s3_bucket():
    """AWS_* pointed at a fresh moto server; yields a bucket name that exists.

    (Named apart from tests/data/conftest.py's `s3_endpoint`, which a conftest fixture would shadow.)
    """
    moto_server = Path(sys.executable).parent / "moto_server"
    port = _free_port()
    process = subprocess.Popen([str(moto_server), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", endpoint)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.delenv("AWS_PROFILE", raising=False)
        storage.reset_clients()
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError("moto_server did not start") from None
                    time.sleep(0.1)
            import boto3

            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="t2v-test")
            yield "t2v-test"
        finally:
            process.terminate()
            process.wait(timeout=10)
            storage.reset_clients()
