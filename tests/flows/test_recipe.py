"""The README's Prefect recipe, run line by line as a user types it, against real local servers.

Only the ports (free ones), the state folder (`.t2v/` -> a temporary folder), the venv's location and
the pipeline's parameters differ: the deployment trains for minutes (the demo's settings), the test
passes the quick ones of tests/quick_pipeline.py. `source` and `export` lines carry over to the lines
after them, as in one shell. flows/README.md shows the same block."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.quick_pipeline import PARAMETERS
from tests.servers import BIN, free_port, wait_http

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def recipe(path: Path) -> list[str]:
    text = path.read_text()
    block = re.search(r"<!-- recipe -->\n```bash\n(.*?)\n```", text, re.S)
    assert block, f"{path}: no recipe block"
    return block.group(1).splitlines()


def test_flows_readme_shows_the_same_recipe():
    assert recipe(REPO / "flows" / "README.md") == recipe(REPO / "README.md")


def test_the_readme_recipe_runs_the_pipeline(tmp_path):
    prefect_port, mlflow_port = free_port(), free_port()
    lines = [line.replace("4200", str(prefect_port)).replace("5000", str(mlflow_port))
             .replace(".t2v/", f"{tmp_path}/").replace(".venv/", f"{BIN.parent}/") for line in recipe(REPO / "README.md")]
    run = "prefect deployment run t2v-full/local --watch"
    assert run in lines
    lines[lines.index(run)] = f"{run} --params '{json.dumps(PARAMETERS)}'"
    # The test runs this worktree's code with the test venv, and keeps its state out of the repository.
    env = {**os.environ, "PYTHONPATH": str(REPO), "T2V_HOME": str(tmp_path / "home"),
           "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "T2V_PARENT_RUN_ID"):
        env.pop(name, None)
    shell_state: list[str] = []  # source/export lines: what the user's shell carries from line to line
    background: list[subprocess.Popen] = []
    try:
        for line in lines:
            if line.startswith(("source ", "export ")):
                shell_state.append(line)
                continue
            script = "\n".join([*shell_state, line.removesuffix("&").strip()])
            if line.endswith("&"):
                log = tmp_path / f"background-{len(background)}.log"
                with open(log, "w") as handle:
                    proc = subprocess.Popen(["bash", "-c", script], cwd=REPO, env=env,
                                            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
                background.append(proc)
                if "prefect server start" in line:
                    wait_http(f"http://127.0.0.1:{prefect_port}/api/health", 120, proc, log)
                elif "mlflow server" in line:
                    wait_http(f"http://127.0.0.1:{mlflow_port}/health", 120, proc, log)
                continue
            done = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=900)
            assert done.returncode == 0, f"{line}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        report = (tmp_path / "home" / "runs" / "tiny" / "report.md").read_text()
        assert report.startswith("# t2v-full: completed")
        assert (tmp_path / "mlflow.db").is_file()  # the runs went to the recipe's MLflow server
    finally:
        for proc in reversed(background):  # the worker first: it hangs on a server that is gone
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

