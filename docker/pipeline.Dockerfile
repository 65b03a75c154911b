# syntax=docker/dockerfile:1
# Every image built from the project's code, one target each (compose.yaml builds them all):
#   data   `python -m components.data …`  (synthesize, filter, shard, verify)
#   vae    `python -m components.vae …`   (train, evaluate, inspect)
#   dit    `python -m components.dit …`   (the diffusion transformer)
#   eval   `python -m components.eval …`  (metrics and reports)
#   flows  Prefect flows and their process worker; no ENTRYPOINT, code in /app
# Build from the repository root: docker build -f docker/pipeline.Dockerfile --target vae \
#   --build-arg EXTRAS=vae --build-arg TORCH_PACKAGES="torch torchvision" \
#   --build-arg CODE="components/vae components/data" .
# The defaults (EXTRAS=all, every folder) suit the flows target; docker/compose.yaml sets the three per image.
# The base and the torch index are build arguments (docker/README.md, "Bases"):
#   CPU (default)  BASE=python:3.11-slim-trixie                 TORCH_INDEX=https://download.pytorch.org/whl/cpu
#   CUDA           BASE=nvidia/cuda:13.0.2-runtime-ubuntu24.04  TORCH_INDEX=https://download.pytorch.org/whl/cu130
#   Ascend (NPU)   BASE=<Ascend CANN image with Python 3.11>    TORCH_INDEX=https://download.pytorch.org/whl/cpu
#                  EXTRAS=<extra>,npu  (torch_npu from the project's `npu` extra)
ARG BASE=python:3.11-slim-trixie

FROM ${BASE} AS base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Python 3.11 on every base, the minor version the constraints are resolved for: the python image has
# it; other bases (the CUDA image is Ubuntu 24.04, whose own Python is 3.12) get a standalone CPython
# 3.11 from uv, mounted for this step only. ~/.cache exists up front so that a named volume mounted
# there starts out owned by t2v, not root.
RUN --mount=from=ghcr.io/astral-sh/uv:0.13.9,source=/uv,target=/usr/local/bin/uv \
    if ! command -v python3.11 >/dev/null; then \
        UV_PYTHON_INSTALL_DIR=/opt/python UV_PYTHON_BIN_DIR=/usr/local/bin uv python install 3.11; \
    fi \
    && groupadd --gid 10001 t2v \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin t2v \
    && install -d -o t2v -g t2v /home/t2v/.cache

FROM base AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_PACKAGES="torch torchvision"
ARG EXTRAS=all
# The code folders this image runs, besides components/core (and the package's __init__ and `t2v` entry
# point), which every image has: the component itself and the components it imports.
ARG CODE="components/data components/vae components/dit components/eval flows"
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
# 1. torch (and torchvision where the extra needs it) at the versions the constraints pin, from the
#    index that matches the base: +cpu or +cuXYZ builds. torchvision must come from the same index as
#    torch, or its C++ operators do not load.
# 2. the package with this image's extra only, against the constraints minus the lines that
#    describe PyPI's CUDA torch build (nvidia-*, cuda-*, triton): the torch index decides those.
RUN --mount=type=cache,target=/root/.cache/pip \
    "$(readlink -f "$(command -v python3.11)")" -m venv /opt/venv \
    && /opt/venv/bin/pip install pip==26.3 \
    && for name in ${TORCH_PACKAGES}; do \
           grep -E "^${name}==" requirements/constraints.txt || { echo "no ${name} pin" >&2; exit 1; }; \
       done > /tmp/torch.txt \
    && /opt/venv/bin/pip install --index-url "${TORCH_INDEX}" -r /tmp/torch.txt \
    && grep -v -E '^(nvidia-|cuda-|triton==)' requirements/constraints.txt > /tmp/constraints.txt
COPY pyproject.toml README.md ./
COPY components /tmp/code/components
COPY flows /tmp/code/flows
# Only the folders in CODE are installed (and, for flows, kept in /app).
RUN for path in components/__init__.py components/cli.py components/core ${CODE}; do \
        test -e "/tmp/code/${path}" || { echo "CODE names ${path}, which does not exist" >&2; exit 1; }; \
        mkdir -p "$(dirname "${path}")" && cp -r "/tmp/code/${path}" "${path}"; \
    done \
    && rm -rf /tmp/code
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install -c /tmp/constraints.txt ".[${EXTRAS}]"

FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    T2V_HOME=/home/t2v/.t2v \
    HF_HOME=/home/t2v/.cache/huggingface \
    TORCH_HOME=/home/t2v/.cache/torch
USER 10001:10001
WORKDIR /home/t2v

FROM runtime AS data
ENTRYPOINT ["python", "-m", "components.data"]
CMD ["--help"]

FROM runtime AS vae
ENTRYPOINT ["python", "-m", "components.vae"]
CMD ["--help"]

FROM runtime AS dit
ENTRYPOINT ["python", "-m", "components.dit"]
CMD ["--help"]

FROM runtime AS eval
ENTRYPOINT ["python", "-m", "components.eval"]
CMD ["--help"]

FROM runtime AS flows
# The flow files stay importable by path: deployments name entrypoints like flows/<file>.py:<flow>
# and their working directory is /app (T2V_CODE_DIR=/app when deploying; docker/README.md).
COPY --from=build /src /app
WORKDIR /app
# No ENTRYPOINT: a Prefect docker worker starts flow runs by setting the container's command, and the
# compose worker service runs `prefect worker start …`; both must not be prefixed by anything.
CMD ["python", "-m", "flows", "--help"]
