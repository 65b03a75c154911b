# syntax=docker/dockerfile:1
# MLflow tracking server for the compose stack: the mlflow version the project pins, plus the Postgres
# driver (backend store) and boto3 (artifacts proxied to MinIO). No torch, no project code.
FROM python:3.11-slim-trixie
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
# psycopg2-binary is not a project dependency, so it is pinned here rather than in the constraints.
RUN --mount=type=cache,target=/root/.cache/pip \
    groupadd --gid 10001 mlflow \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin mlflow \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c requirements/constraints.txt mlflow boto3 psycopg2-binary==2.9.13
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true
USER 10001:10001
WORKDIR /home/mlflow
ENTRYPOINT ["mlflow"]
CMD ["server", "--help"]
