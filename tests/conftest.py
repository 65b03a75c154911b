"""Suite-wide fixtures: real local servers (S3, MLflow, Prefect) from tests/servers.py, and a
default that keeps every test's local tracking state inside its own temp folder."""

import os

import pytest

pytest_plugins = ["tests.servers"]

# Tests must never write to the developer's ./.t2v or reach a server they did not start.
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("T2V_PARENT_RUN_ID", None)


@pytest.fixture(autouse=True)
def _isolated_t2v_home(tmp_path, monkeypatch):
    monkeypatch.setenv("T2V_HOME", str(tmp_path / "t2v-home"))


@pytest.fixture()
def one_torch_thread():
    """Model tests run on one thread: their timings are steadier and parallel runs do not oversubscribe."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
