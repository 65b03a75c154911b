"""The artifact store on local disk and on a real S3 endpoint (moto over HTTP on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from components.core import storage
from tests.flaky_proxy import FlakyProxy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "file-uri", "s3"])
def store_root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "file-uri":
        return (tmp_path / "store").as_uri()
    return request.getfixturevalue("s3_bucket") + "/prefix"


def test_round_trip_list_and_delete(store_root):
    digest = storage.write_bytes(storage.join(store_root, "a", "x.bin"), b"hello")
    storage.write_json(storage.join(store_root, "b.json"), {"k": [1, 2]})
    assert digest == storage.sha256_bytes(b"hello")
    assert storage.read_bytes(storage.join(store_root, "a/x.bin"), expected_sha256=digest) == b"hello"
    assert storage.read_json(storage.join(store_root, "b.json")) == {"k": [1, 2]}
    assert storage.exists(storage.join(store_root, "a/x.bin"))
    assert not storage.exists(storage.join(store_root, "missing"))
    listed = [storage.relative_to(uri, store_root) for uri in storage.list_files(store_root)]
    assert listed == ["a/x.bin", "b.json"]
    with storage.open_stream(storage.join(store_root, "a/x.bin")) as stream:
        assert stream.read() == b"hello"
    storage.delete_prefix(store_root)
    assert storage.list_files(store_root) == []


def test_files_round_trip_with_checksums(store_root, tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(300_000))
    digest = storage.put_file(source, storage.join(store_root, "f.bin"))
    assert digest == storage.sha256_file(source)
    back = storage.get_file(storage.join(store_root, "f.bin"), tmp_path / "back.bin", expected_sha256=digest)
    assert back.read_bytes() == source.read_bytes()


def test_checksum_mismatch_is_detected(store_root, tmp_path):
    uri = storage.join(store_root, "c.bin")
    storage.write_bytes(uri, b"original")
    storage.write_bytes(uri, b"tampered")  # what a corrupting writer or bit rot would leave
    with pytest.raises(storage.ChecksumMismatch, match="c.bin"):
        storage.read_bytes(uri, expected_sha256=storage.sha256_bytes(b"original"))
    with pytest.raises(storage.ChecksumMismatch):
        storage.get_file(uri, tmp_path / "c.bin", expected_sha256=storage.sha256_bytes(b"original"))
    assert not (tmp_path / "c.bin").exists()  # a failed verified download leaves no file behind


def test_missing_object_fails_with_uri(store_root):
    with pytest.raises(storage.StorageError, match="nothing-here"):
        storage.read_bytes(storage.join(store_root, "nothing-here"))


def test_local_write_is_atomic_on_failure(tmp_path):
    target = tmp_path / "out" / "file.bin"

    def failing_writer(handle):
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        storage._atomic_local_write(target, failing_writer)
    assert list((tmp_path / "out").iterdir()) == []  # neither the target nor a temp file


KILLED_UPLOADER = """
import sys
from components.core import storage
storage.MULTIPART_THRESHOLD = storage.MULTIPART_CHUNK = 5 * 1024 * 1024
storage.put_file(sys.argv[1], sys.argv[2])
"""


def test_writer_killed_mid_upload_leaves_no_object(s3_bucket, s3_env, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(80 * 1024 * 1024))
    uri = f"{s3_bucket}/big.bin"
    env = {**os.environ, **s3_env, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_UPLOADER, str(big), uri], env=env)
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    bucket = s3_bucket.removeprefix("s3://")
    deadline = time.monotonic() + 60
    while not client.list_multipart_uploads(Bucket=bucket).get("Uploads"):
        assert proc.poll() is None, "uploader finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not storage.exists(uri)
    assert storage.list_files(s3_bucket) == []


@pytest.fixture()
def flaky(s3_env, monkeypatch):
    proxies = []

    def make(failures: int, mode: str = "503") -> FlakyProxy:
        proxy = FlakyProxy(s3_env["AWS_ENDPOINT_URL"], failures, mode)
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        storage.reset_clients()
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
    storage.reset_clients()


@pytest.mark.parametrize("mode", ["503", "reset"])
def test_transient_errors_are_retried(s3_bucket, flaky, mode):
    proxy = flaky(failures=2, mode=mode)
    uri = f"{s3_bucket}/retry.json"
    storage.write_json(uri, {"ok": True})
    assert proxy.requests == 3  # two injected failures, then the real write
    assert storage.read_json(uri) == {"ok": True}


def test_retries_run_out_with_clear_message(s3_bucket, flaky, monkeypatch):
    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 3)
    proxy = flaky(failures=100)
    with pytest.raises(storage.StorageError) as err:
        storage.write_bytes(f"{s3_bucket}/never.bin", b"x")
    message = str(err.value)
    assert "never.bin" in message and "3 attempts" in message and "SlowDown" in message
    assert proxy.requests == 3, proxy.log
    assert "testing-secret-never-logged" not in message and "testing-key-id" not in message


def test_permanent_errors_fail_at_once(s3_env, flaky):
    proxy = flaky(failures=0)
    with pytest.raises(storage.StorageError) as err:
        storage.write_bytes("s3://no-such-bucket-t2v/x.bin", b"x")
    assert "s3://no-such-bucket-t2v/x.bin" in str(err.value) and "NoSuchBucket" in str(err.value)
    assert "permanent" in str(err.value)
    assert proxy.requests == 1
