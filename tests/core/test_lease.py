"""The output-folder lease on local disk and on a real S3 endpoint (moto over HTTP on 127.0.0.1)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from components.core import lease, storage


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_bucket") + "/out"


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _plant(folder: str, **fields) -> None:
    record = {"owner": "t2v data shard", "host": socket.gethostname(), "pid": "1", "token": "theirs",
              "acquired_at": "2026-12-07T09:00:00+00:00", "heartbeat": f"{time.time():.0f}", **fields}
    storage.write_json(storage.join(folder, lease.LEASE_FILE), record)


def test_second_writer_is_refused_naming_the_holder(folder):
    with lease.hold(folder, owner="t2v data shard") as held:
        on_disk = storage.read_json(held.uri)
        assert on_disk["owner"] == "t2v data shard" and on_disk["pid"] == str(os.getpid())
        with pytest.raises(lease.LeaseHeld, match=r"being written by 't2v data shard' \(process \d+ on "):
            lease.acquire(folder, owner="another run")
        held.check()
    assert not storage.exists(storage.join(folder, lease.LEASE_FILE))  # released
    with lease.hold(folder, owner="the next run"):  # free again
        pass


def test_stale_lease_is_taken_over_after_saying_so(folder, caplog):
    _plant(folder, heartbeat=f"{time.time() - 1000:.0f}", host="elsewhere")  # silent for 1000 s
    with caplog.at_level(logging.WARNING, logger="components.core.lease"):
        with lease.hold(folder, owner="new run", stale_after_s=90) as held:
            assert storage.read_json(held.uri)["token"] == held.record["token"]
    assert "taking over the stale lease" in caplog.text and "stopped without releasing" in caplog.text


def test_live_holder_on_another_host_is_respected_until_its_heartbeat_is_stale(folder):
    _plant(folder, host="elsewhere", heartbeat=f"{time.time() - 30:.0f}")
    with pytest.raises(lease.LeaseHeld, match="on elsewhere, heartbeat 3"):
        lease.acquire(folder, owner="new run", stale_after_s=90)
    assert lease.acquire(folder, owner="new run", stale_after_s=10).record["owner"] == "new run"


def test_dead_pid_on_this_host_frees_the_lease_at_once(tmp_path):
    folder = str(tmp_path / "out")
    _plant(folder, pid=str(_dead_pid()))
    assert lease.acquire(folder, owner="new run").record["owner"] == "new run"


def test_unreadable_lease_is_stale(tmp_path, caplog):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / lease.LEASE_FILE).write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING):
        lease.acquire(str(folder), owner="new run")
    assert "unreadable lease file" in caplog.text


def test_heartbeat_refreshes_and_a_takeover_is_noticed(folder):
    with lease.hold(folder, owner="slow run", heartbeat_s=0.05) as held:
        first = held.version
        deadline = time.monotonic() + 5
        while held.version == first:  # a beat replaced the lease (its heartbeat a new second, or not)
            assert time.monotonic() < deadline, "no heartbeat recorded"
            time.sleep(0.05)
        # Another run decides we are stale and takes over: our next check (before a manifest) fails.
        found = storage.read_versioned(held.uri)
        theirs = {**json.loads(found[0]), "token": "theirs", "owner": "impatient run"}
        assert storage.replace_if_unchanged(held.uri, json.dumps(theirs).encode(), found[1])
        with pytest.raises(lease.LeaseLost, match="now held by 'impatient run'"):
            held.check()
    # Release leaves the new holder's lease alone.
    assert storage.read_json(storage.join(folder, lease.LEASE_FILE))["token"] == "theirs"


def test_conditional_writes(folder):
    uri = storage.join(folder, "claim.json")
    version = storage.create_exclusive(uri, b"one")
    assert version and storage.create_exclusive(uri, b"two") is None
    assert storage.read_versioned(uri) == (b"one", version)
    assert storage.replace_if_unchanged(uri, b"three", "stale-version") is None
    newer = storage.replace_if_unchanged(uri, b"three", version)
    assert newer and storage.read_bytes(uri) == b"three"
    assert not storage.delete_if_unchanged(uri, version) and storage.exists(uri)
    assert storage.delete_if_unchanged(uri, newer) and storage.read_versioned(uri) is None
