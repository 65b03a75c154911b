#!/usr/bin/env bash
# `make down`: stop what `make demo` left running, worker first (it hangs on a server that is gone), and
# remove the pid files, stale ones too. `demo-down.sh NAME...` stops only those.
set -uo pipefail
cd "$(dirname "$0")/.."
DEMO="${T2V_DEMO_DIR:-$PWD/.t2v/demo}"
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(worker prefect-server mlflow)

# Prefect 3.9's process worker logs "Received SIGINT" and then keeps running (still up after 30 minutes,
# idle): its grace is short. The servers shut down cleanly on SIGINT within seconds.
grace_s() { if [ "$1" = worker ]; then echo 5; else echo 30; fi; }

stop() {  # SIGINT the process group and wait; SIGKILL after its grace
  local name="$1" pid
  [ -f "$DEMO/$name.pid" ] || return 0
  pid="$(cat "$DEMO/$name.pid")"
  if kill -INT -- "-$pid" 2>/dev/null; then
    for _ in $(seq 1 $(( $(grace_s "$name") * 2 ))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null; fi
    echo "down: stopped $name (pid $pid)"
  fi
  rm -f "$DEMO/$name.pid"
}

for name in worker prefect-server mlflow; do
  for one in "${wanted[@]}"; do
    if [ "$one" = "$name" ]; then stop "$name"; fi
  done
done
