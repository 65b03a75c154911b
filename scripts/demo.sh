#!/usr/bin/env bash
# `make demo`: the whole pipeline on the tiny preset with synthetic data, the way it runs in production:
# a Prefect server, a process worker and an MLflow server (all on 127.0.0.1, state under .t2v/demo/),
# the deployments from prefect.yaml, and one run of `t2v-full/local`.
#
# The servers and the worker keep running afterwards, so the printed links answer; `make down`
# (scripts/demo-down.sh) stops them. A second `make demo` reuses the ones still running (pid files
# .t2v/demo/<name>.pid). Ports: PREFECT_PORT (default 4200), MLFLOW_PORT (default 5000); DEMO_PARAMS adds
# pipeline parameters (JSON).
set -euo pipefail
# Job control: each background server gets its own process group, and SIGINT is not ignored in it
# (without it bash starts background jobs with SIGINT ignored, and the worker would never stop).
set -m
cd "$(dirname "$0")/.."
REPO="$PWD"
BIN="${T2V_VENV:-$REPO/.venv}/bin"
DEMO="${T2V_DEMO_DIR:-$REPO/.t2v/demo}"  # tests use their own
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
POOL=t2v-process

for tool in python prefect mlflow; do
  [ -x "$BIN/$tool" ] || { echo "demo: $BIN/$tool is missing: run 'make demo' (it creates .venv)" >&2; exit 1; }
done
port_taken() { "$BIN/python" -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', int(sys.argv[1]))) != 0)" "$1"; }
answers() { "$BIN/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null; }
running() { [ -f "$DEMO/$1.pid" ] && kill -0 "$(cat "$DEMO/$1.pid")" 2>/dev/null; }  # its pid file names a live process

mkdir -p "$DEMO/prefect" "$DEMO/mlflow/artifacts" "$DEMO/logs"
export PREFECT_HOME="$DEMO/prefect"
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
# The worker looks for new flow runs every 2 s (Prefect's default: 10): `t2v-full/local-split` hands it
# one flow run per stage, each of which would otherwise wait ~5 s to start.
export PREFECT_WORKER_QUERY_SECONDS="${PREFECT_WORKER_QUERY_SECONDS:-2}"
export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
export T2V_HOME="$DEMO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

STARTED=()  # what this run started: stopped again only when the demo cannot get its servers up
start() {  # start NAME CMD...: its own process group, outliving this script; log to $DEMO/logs/NAME.log
  local name="$1"; shift
  nohup "$@" >"$DEMO/logs/$name.log" 2>&1 &
  echo "$!" >"$DEMO/$name.pid"
  STARTED+=("$name")
}
cleanup() {
  local status=$?
  if [ "$status" != 0 ] && [ "${SERVERS_UP:-0}" != 1 ] && [ "${#STARTED[@]}" -gt 0 ]; then
    bash "$REPO/scripts/demo-down.sh" "${STARTED[@]}"
  fi
}
trap cleanup EXIT
wait_http() {  # wait_http URL NAME
  for _ in $(seq 1 240); do
    answers "$1" && return 0
    sleep 0.5
  done
  echo "demo: $2 did not come up; see $DEMO/logs/$2.log" >&2
  tail -n 30 "$DEMO/logs/$2.log" >&2
  exit 1
}
serve() {  # serve NAME PORT HEALTH_URL CMD...: reuse our running server, or start one on a free port
  local name="$1" port="$2" health="$3"; shift 3
  if running "$name"; then
    answers "$health" || { echo "demo: $name runs (pid $(cat "$DEMO/$name.pid")) but does not answer" \
      "on port $port; run 'make down' first" >&2; exit 1; }
    echo "demo: reusing the running $name (pid $(cat "$DEMO/$name.pid"), port $port)"
    return
  fi
  rm -f "$DEMO/$name.pid"  # stale: its process is gone
  if port_taken "$port"; then
    echo "demo: port $port on 127.0.0.1 is taken by something else; free it or set PREFECT_PORT / MLFLOW_PORT" >&2
    exit 1
  fi
  echo "demo: starting $name (port $port)"
  start "$name" "$@"
}

serve mlflow "$MLFLOW_PORT" "$MLFLOW_TRACKING_URI/health" "$BIN/mlflow" server --host 127.0.0.1 \
  --port "$MLFLOW_PORT" --workers 1 --backend-store-uri "sqlite:///$DEMO/mlflow/mlflow.db" \
  --artifacts-destination "$DEMO/mlflow/artifacts"
serve prefect-server "$PREFECT_PORT" "$PREFECT_API_URL/health" \
  "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
wait_http "$MLFLOW_TRACKING_URI/health" mlflow
wait_http "$PREFECT_API_URL/health" prefect-server

"$BIN/prefect" work-pool inspect "$POOL" >/dev/null 2>&1 || "$BIN/prefect" work-pool create "$POOL" --type process >/dev/null
"$BIN/prefect" --no-prompt deploy --all >"$DEMO/logs/deploy.log" 2>&1 \
  || { echo "demo: 'prefect deploy --all' failed; see $DEMO/logs/deploy.log" >&2; tail -n 30 "$DEMO/logs/deploy.log" >&2; exit 1; }
if running worker; then
  echo "demo: reusing the running worker (pid $(cat "$DEMO/worker.pid"))"
else
  rm -f "$DEMO/worker.pid"
  start worker "$BIN/prefect" worker start --pool "$POOL"
fi
SERVERS_UP=1  # from here on they stay up whatever the pipeline does: a failed run is worth a look too

# The deployment's own parameters (prefect.yaml): the VAE's demo steps, its phases on two processes
# (torchrun, gloo on CPU) so the demo exercises distributed training. DEMO_PARAMS replaces them key by key.
PARAMS="${DEMO_PARAMS:-{\}}"
echo "demo: running t2v-full/local (tiny preset, synthetic data, parameters $PARAMS)"
started=$(date +%s)
status=0
"$BIN/prefect" deployment run t2v-full/local --params "$PARAMS" --watch || status=$?
if [ "$status" = 0 ]; then
  echo "demo: pipeline finished in $(( $(date +%s) - started ))s"
else
  echo "demo: the pipeline run failed (exit $status); its logs and error are in the Prefect UI below" >&2
fi

cat <<EOF

Where to look (the servers and the worker keep running; 'make down' stops them):
  Prefect UI     http://127.0.0.1:$PREFECT_PORT  (flow run 't2v-full': its logs, and its Artifacts tab's stage table)
  MLflow UI      $MLFLOW_TRACKING_URI  (experiment 't2v-pipeline': run 't2v-full' with one nested run per stage)
  Artifacts      $DEMO/runs/tiny  (one folder per stage, each with manifest.json; report.md)
  Logs           $DEMO/logs

More from a new shell (README, "Your own Prefect server"):
  source .venv/bin/activate      # puts t2v, prefect and mlflow on PATH
  export PREFECT_API_URL=$PREFECT_API_URL MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI T2V_HOME=$DEMO
  prefect deployment run t2v-full/local --watch
EOF
exit "$status"
