"""Fixtures for the data stage's tests: isolated MLflow tracking, small synthetic datasets and shards
shared across a session. (The S3 endpoint is the suite-wide one in tests/servers.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.data.shard_fixtures import many_shards, mixed_clips, mixed_shards, tracking_home  # noqa: F401


@pytest.fixture(autouse=True)
def isolated_tracking(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test logs to a private sqlite MLflow store (shared within the session for speed)."""
    home = tmp_path_factory.getbasetemp() / "t2v_home"
    monkeypatch.setenv("T2V_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("T2V_PARENT_RUN_ID", raising=False)
    return home


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
