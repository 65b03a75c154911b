"""The production stack on loopback for end-to-end tests: a Prefect server with a process worker on
pool `t2v-process` and the deployments of prefect.yaml, an MLflow server, and S3 (moto) as the
artifact store. Started once per test module; the worker stops before the servers."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import BIN, S3_CREDENTIALS

REPO = Path(__file__).resolve().parents[2]
POOL = "t2v-process"


@dataclass
class Stack:
    env: dict[str, str]  # what the worker (and any stage process) sees
    bucket: str  # s3://…
    prefect_api: str
    mlflow_url: str
    logs: Path

    def prefect(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def run_deployment(self, name: str, parameters: dict, timeout: float = 600) -> subprocess.CompletedProcess:
        """`prefect deployment run NAME --watch`: exits 0 only when the flow run completed."""
        return self.prefect("deployment", "run", name, "--params", json.dumps(parameters), "--watch",
                            timeout=timeout)


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def stack(prefect_server, mlflow_server, s3_endpoint, tmp_path_factory) -> Iterator[Stack]:
    import boto3

    home = tmp_path_factory.mktemp("e2e")
    bucket = f"t2v-e2e-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint, **{k.lower(): v for k, v in S3_CREDENTIALS.items()
                                                    if k != "AWS_DEFAULT_REGION"},
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The worker asks for new flow runs every second, not every 10 s: a `local-split` pipeline run
        # hands each stage to it as a flow run of its own, and would wait ~5 s per stage on average.
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
        "AWS_ENDPOINT_URL": s3_endpoint, **S3_CREDENTIALS,
        "PYTHONPATH": str(REPO), "T2V_HOME": str(home / "t2v"),
    }
    env.pop("T2V_PARENT_RUN_ID", None)
    stack = Stack(env, f"s3://{bucket}", prefect_server, mlflow_server, home)
    if stack.prefect("work-pool", "inspect", POOL).returncode != 0:
        _check(stack.prefect("work-pool", "create", POOL, "--type", "process"), "work-pool create")
    _check(stack.prefect("--no-prompt", "deploy", "--all"), "prefect deploy --all")

    log = home / "worker.log"
    with open(log, "w") as handle:
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", POOL], cwd=REPO, env=env,
                                  stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield stack
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, 2)  # SIGINT: the worker must stop before the Prefect server does
        try:
            worker.wait(timeout=5)  # Prefect 3.9's worker does not exit on SIGINT (scripts/demo-down.sh)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, 9)
            worker.wait()
        print(f"worker log: {log}", file=sys.stderr)


@pytest.fixture()
def stack_env(stack, monkeypatch) -> Stack:
    """Point this test process's storage and tracking at the stack too."""
    from components.core import storage

    for key in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", *S3_CREDENTIALS):
        monkeypatch.setenv(key, stack.env[key])
    storage.reset_clients()
    yield stack
    storage.reset_clients()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
