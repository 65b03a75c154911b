"""`make demo` leaves working links behind: its servers and worker outlive the script, a second demo reuses
them, and `make down` stops them and removes their pid files. The pipeline runs its first stage only
(DEMO_PARAMS); the full pipeline through the same servers is tests/e2e."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.servers import free_port

REPO = Path(__file__).resolve().parents[1]
NAMES = ("mlflow", "prefect-server", "worker")
pytestmark = pytest.mark.slow


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_leaves_its_servers_up_reuses_them_and_down_stops_them(tmp_path):
    demo = tmp_path / "demo"
    prefect_port, mlflow_port = free_port(), free_port()
    env = {**os.environ, "T2V_DEMO_DIR": str(demo), "T2V_VENV": sys.prefix, "PREFECT_PORT": str(prefect_port),
           "MLFLOW_PORT": str(mlflow_port), "DEMO_PARAMS": json.dumps({"until": "synth", "num": 3})}
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "T2V_HOME", "T2V_PARENT_RUN_ID"):
        env.pop(name, None)
    links = (f"http://127.0.0.1:{prefect_port}/api/health", f"http://127.0.0.1:{mlflow_port}/health")
    try:
        first = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=600)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert "the servers and the worker keep running; 'make down' stops them" in first.stdout
        assert "source .venv/bin/activate" in first.stdout
        pids = {name: int((demo / f"{name}.pid").read_text()) for name in NAMES}
        assert all(_alive(pid) for pid in pids.values())
        assert all(_answers(link) for link in links)  # after the script returned
        assert (demo / "runs" / "tiny" / "synth" / "manifest.json").is_file()

        second = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=600)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        for name in NAMES:
            assert f"reusing the running {name} (pid {pids[name]}" in second.stdout
        assert {name: int((demo / f"{name}.pid").read_text()) for name in NAMES} == pids

        # A failed pipeline run still ends with the links (to look at the failure), and the servers stay up.
        failing = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, capture_output=True, text=True, timeout=600,
                                 env={**env, "DEMO_PARAMS": json.dumps({"overrides": ["vae.train.lrr=1"]})})
        assert failing.returncode != 0
        assert "the pipeline run failed" in failing.stderr and "Where to look" in failing.stdout
        assert all(_alive(pid) for pid in pids.values()) and all(_answers(link) for link in links)
    finally:
        down = subprocess.run(["bash", "scripts/demo-down.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)
    assert down.returncode == 0, down.stderr
    assert [line.split()[2] for line in down.stdout.splitlines()] == ["worker", "prefect-server", "mlflow"]
    assert not any(_alive(pid) for pid in pids.values())
    assert not any(_answers(link) for link in links)
    assert not list(demo.glob("*.pid"))
    # A stale pid file (its process gone) is removed too, and `down` with nothing running is fine.
    (demo / "worker.pid").write_text("999999")
    again = subprocess.run(["bash", "scripts/demo-down.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0 and not list(demo.glob("*.pid"))
