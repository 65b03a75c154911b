"""prefect.yaml, read as data: every stage and the pipeline deployed on one process pool, from the code folder."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import yaml

from flows import preflight
from flows.stage_flows import STAGE_FLOWS
from flows.stages import chain

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "prefect.yaml").read_text())


def _entrypoints() -> dict[str, str]:
    """`flow name/deployment name` -> entrypoint."""
    import importlib

    found = {}
    for deployment in CONFIG["deployments"]:
        path, _, attribute = deployment["entrypoint"].partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        found[f"{getattr(module, attribute).name}/{deployment['name']}"] = deployment["entrypoint"]
    return found


def test_every_stage_and_the_pipeline_have_a_local_deployment():
    names = set(_entrypoints())
    assert {"t2v-full/local", "t2v-full/local-split"} <= names
    assert {f"{flow.name}/local" for flow in STAGE_FLOWS.values()} <= names
    assert {deployment["work_pool"]["name"] for deployment in CONFIG["deployments"]} == {"t2v-process"}


def test_the_pipeline_deployments_carry_the_demo_settings_and_nothing_else():
    """Tiny preset and synthetic data by default; the demo's longer training is one shared override list."""
    (full,) = [d for d in CONFIG["deployments"] if d["entrypoint"].endswith(":pipeline") and d["name"] == "local"]
    demo = CONFIG["definitions"]["demo_overrides"]
    clips = CONFIG["definitions"]["demo_clips"]
    assert full["parameters"] == {"num": clips, "overrides": demo}
    split = [d for d in CONFIG["deployments"] if d["name"] == "local-split"][0]
    assert split["parameters"] == {"stage_deployment": "local", "num": clips, "overrides": demo}
    assert preflight.problems(chain(), "tiny", demo) == []


def test_code_folder_is_the_deploy_folder_or_t2v_code_dir(tmp_path):
    step = CONFIG["build"][0]["prefect.deployments.steps.run_shell_script"]
    assert CONFIG["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == \
        "{{ " + step["id"] + ".stdout }}"
    env = {key: value for key, value in os.environ.items() if key != "T2V_CODE_DIR"}
    run = lambda env: subprocess.run(shlex.split(step["script"]), cwd=tmp_path, env=env, capture_output=True,  # noqa: E731
                                     text=True, check=True).stdout.strip()
    assert run({**env, "PWD": str(tmp_path)}) == str(tmp_path)
    assert run({**env, "T2V_CODE_DIR": "/app"}) == "/app"


def test_docker_deployments_mirror_the_local_ones():
    docker = yaml.safe_load((REPO / "prefect.docker.yaml").read_text())
    local = {(d["entrypoint"], d["name"]) for d in CONFIG["deployments"] if d["name"] == "local"}
    assert {(d["entrypoint"], d["name"]) for d in docker["deployments"]} == {(e, "docker") for e, _ in local}
    (full,) = [d for d in docker["deployments"] if d["entrypoint"].endswith(":pipeline")]
    assert full["parameters"]["stage_deployment"] == "docker"
    assert {d["work_pool"]["name"] for d in docker["deployments"]} == {"t2v-docker"}
    assert docker["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == "/app"
