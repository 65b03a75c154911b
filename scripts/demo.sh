#!/usr/bin/env bash
# `make demo`: the whole pipeline on the tiny preset with synthetic data, the way it runs in production:
# a Prefect server, a process worker and an MLflow server (all on 127.0.0.1, state under .t2v/demo/),
# the deployments from prefect.yaml, and one run of `t2v-full/local`.
#
# Ports: PREFECT_PORT (default 4200), MLFLOW_PORT (default 5000). KEEP_SERVERS=1 leaves the servers
# and the worker running afterwards (stop them with `kill $(cat .t2v/demo/*.pid)`).
set -euo pipefail
# Job control: each background server gets its own process group, and SIGINT is not ignored in it
# (without it bash starts background jobs with SIGINT ignored, and the worker would never stop).
set -m
cd "$(dirname "$0")/.."
REPO="$PWD"
BIN="$REPO/.venv/bin"
DEMO="$REPO/.t2v/demo"
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
POOL=t2v-process

for tool in python prefect mlflow; do
  [ -x "$BIN/$tool" ] || { echo "demo: $BIN/$tool is missing: run 'make demo' (it creates .venv)" >&2; exit 1; }
done
port_taken() { "$BIN/python" -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', int(sys.argv[1]))) != 0)" "$1"; }
for port in "$PREFECT_PORT" "$MLFLOW_PORT"; do
  if port_taken "$port"; then
    echo "demo: port $port on 127.0.0.1 is already in use; free it or set PREFECT_PORT / MLFLOW_PORT" >&2
    exit 1
  fi
done

mkdir -p "$DEMO/prefect" "$DEMO/mlflow/artifacts" "$DEMO/logs"
export PREFECT_HOME="$DEMO/prefect"
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
export T2V_HOME="$DEMO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

PIDS=()
start() {  # start NAME CMD...: run in its own process group, log to $DEMO/logs/NAME.log
  local name="$1"; shift
  "$@" >"$DEMO/logs/$name.log" 2>&1 &
  PIDS+=("$!")
  echo "$!" >"$DEMO/$name.pid"
}
stop() {  # SIGINT the process group and wait; the worker goes first or it hangs on a dead server
  local pid="$1"
  kill -INT -- "-$pid" 2>/dev/null || return 0
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || true
}
cleanup() {
  local status=$?
  if [ "${KEEP_SERVERS:-0}" = 1 ] && [ "$status" = 0 ]; then
    echo "demo: servers keep running (KEEP_SERVERS=1); stop them with: kill -INT \$(cat $DEMO/*.pid)"
    return
  fi
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do stop "${PIDS[$i]}"; done  # reverse order: worker first
  rm -f "$DEMO"/*.pid
}
trap cleanup EXIT
wait_http() {  # wait_http URL NAME
  for _ in $(seq 1 240); do
    if "$BIN/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null; then
      return 0
    fi
    sleep 0.5
  done
  echo "demo: $2 did not come up; see $DEMO/logs/$2.log" >&2
  tail -n 30 "$DEMO/logs/$2.log" >&2
  exit 1
}

echo "demo: starting the MLflow server (port $MLFLOW_PORT) and the Prefect server (port $PREFECT_PORT)"
start mlflow "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
  --backend-store-uri "sqlite:///$DEMO/mlflow/mlflow.db" --artifacts-destination "$DEMO/mlflow/artifacts"
start prefect-server "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
wait_http "$MLFLOW_TRACKING_URI/health" mlflow
wait_http "$PREFECT_API_URL/health" prefect-server

"$BIN/prefect" work-pool inspect "$POOL" >/dev/null 2>&1 || "$BIN/prefect" work-pool create "$POOL" --type process >/dev/null
"$BIN/prefect" --no-prompt deploy --all >"$DEMO/logs/deploy.log" 2>&1 \
  || { echo "demo: 'prefect deploy --all' failed; see $DEMO/logs/deploy.log" >&2; tail -n 30 "$DEMO/logs/deploy.log" >&2; exit 1; }
start worker "$BIN/prefect" worker start --pool "$POOL"

# The VAE phases run as two processes (torchrun, gloo on CPU), so the demo exercises distributed
# training; DEMO_PARAMS replaces these parameters.
PARAMS="${DEMO_PARAMS:-{\"overrides\": [\"vae.launch.nproc_per_node=2\"]\}}"
echo "demo: running t2v-full/local (tiny preset, synthetic data, parameters $PARAMS)"
started=$(date +%s)
"$BIN/prefect" deployment run t2v-full/local --params "$PARAMS" --watch
echo "demo: pipeline finished in $(( $(date +%s) - started ))s"

cat <<EOF

Where to look:
  Prefect UI     http://127.0.0.1:$PREFECT_PORT  (flow run 't2v-full', its Artifacts tab holds the stage table)
  MLflow UI      $MLFLOW_TRACKING_URI  (experiment 't2v-pipeline': run 't2v-full' with one nested run per stage)
  Artifacts      $DEMO/runs/tiny  (one folder per stage, each with manifest.json; report.md)
  Logs           $DEMO/logs
EOF
