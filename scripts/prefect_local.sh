#!/usr/bin/env bash
# Local Prefect for persona-icm: a server on 127.0.0.1, a worker per pool, deployments, a run.
#   scripts/prefect_local.sh run    # up + deploy + run persona-icm/full (GPU) or /smoke (no GPU), watched
#   scripts/prefect_local.sh up     # server + work pools + workers (only what is not running yet)
#   scripts/prefect_local.sh stop   # stop the server and workers this checkout started
# State, pids and logs live in .prefect/ of this checkout. Servers are started with nohup, never
# `prefect server start --background` (it dies with its parent's pipe; NOTES/prefect.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-.venv/bin}
PORT=${PREFECT_PORT:-4200}
STATE=$ROOT/.prefect
mkdir -p "$STATE"
export PERSONA_ICM_ROOT=$ROOT
export PREFECT_HOME=$STATE
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
export PREFECT_SERVER_API_HOST=127.0.0.1  # the UI and API listen on loopback only, whatever starts the server
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90
PREFECT="$BIN/prefect"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
healthy() { "$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen('$PREFECT_API_URL/health', timeout=2)" 2>/dev/null; }
n_gpus() { if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true; else echo 0; fi; }

start_server() {
    if healthy; then echo "Prefect server already up at $PREFECT_API_URL"; return; fi
    echo "starting Prefect server on 127.0.0.1:$PORT (log: .prefect/server.log)"
    setsid nohup "$PREFECT" server start --host 127.0.0.1 --port "$PORT" >"$STATE/server.log" 2>&1 &
    echo $! >"$STATE/server.pid"
    for _ in $(seq 1 90); do
        if healthy; then echo "server up"; return; fi
        if ! alive "$STATE/server.pid"; then echo "server exited; see .prefect/server.log" >&2; tail -20 "$STATE/server.log" >&2; exit 1; fi
        sleep 1
    done
    echo "server did not answer on $PREFECT_API_URL within 90 s; see .prefect/server.log" >&2
    exit 1
}

ensure_pool() {
    "$PREFECT" work-pool inspect "$1" >/dev/null 2>&1 || "$PREFECT" work-pool create "$1" --type process >/dev/null
}

start_worker() {  # pool, pid-name, [CUDA_VISIBLE_DEVICES]
    local pidfile=$STATE/worker-$2.pid
    if alive "$pidfile"; then echo "worker $2 already running"; return; fi
    echo "starting worker $2 on pool $1 (log: .prefect/worker-$2.log)"
    if [ -n "${3:-}" ]; then
        CUDA_VISIBLE_DEVICES=$3 setsid nohup "$PREFECT" worker start --pool "$1" --limit 1 --name "$2" >"$STATE/worker-$2.log" 2>&1 &
    else
        setsid nohup "$PREFECT" worker start --pool "$1" --name "$2" >"$STATE/worker-$2.log" 2>&1 &
    fi
    echo $! >"$pidfile"
}

up() {
    start_server
    ensure_pool cpu
    ensure_pool gpu
    start_worker cpu "cpu-$(hostname -s)"
    local gpus
    gpus=$(n_gpus)
    for ((i = 0; i < gpus; i++)); do start_worker gpu "gpu$i-$(hostname -s)" "$i"; done
}

deploy() { "$PREFECT" --no-prompt deploy --all; }

run() {
    up
    deploy
    local deployment=persona-icm/smoke job=()
    [ "$(n_gpus)" -gt 0 ] && deployment=persona-icm/full
    if [ -n "${GOQA_PATH:-}" ]; then
        local goqa
        goqa=$(cd "$(dirname "$GOQA_PATH")" && pwd)/$(basename "$GOQA_PATH")
        [ -f "$goqa" ] || { echo "GOQA_PATH=$GOQA_PATH: no such file" >&2; exit 1; }
        job=(--job-variable "env={\"GOQA_PATH\": \"$goqa\"}")
    fi
    echo "running $deployment"
    "$PREFECT" deployment run "$deployment" --watch "${job[@]}"
    local run_id
    run_id=$("$BIN/persona-icm" sql "SELECT run_id FROM runs ORDER BY coalesce(finished_at, started_at) DESC LIMIT 1" 2>/dev/null | grep -oE '(seed|paper|smoke)-[0-9a-f]{12}' | head -1 || true)
    echo
    echo "warehouse: $ROOT/warehouse/persona_icm.duckdb   (persona-icm sql \"select * from results_by_country order by all\")"
    [ -n "$run_id" ] && echo "report:    $ROOT/warehouse/reports/$run_id/report.html"
    echo "Prefect UI: http://127.0.0.1:$PORT   (stop server and workers: make stop)"
}

descendants() {  # pids of every process below $1 (flow runs a worker started in their own sessions)
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do descendants "$child"; echo "$child"; done
}

stop() {
    for pidfile in "$STATE"/worker-*.pid "$STATE"/server.pid; do
        [ -f "$pidfile" ] || continue
        local pid
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            echo "stopping $(basename "$pidfile" .pid) (pid $pid)"
            # each was started with setsid: its process group holds its children (uvicorn); flow
            # runs of a worker start their own sessions, so they are found through the parent links
            local below
            below=$(descendants "$pid")
            kill -TERM -- "-$pid" $below 2>/dev/null || true
            for _ in $(seq 1 10); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null || true  # workers can ignore TERM for a while
            for child in $below; do kill -0 "$child" 2>/dev/null && kill -KILL "$child" 2>/dev/null || true; done
        fi
        rm -f "$pidfile"
    done
}

case "${1:-run}" in
    run) run ;;
    up) up ;;
    deploy) deploy ;;
    stop) stop ;;
    *) echo "usage: $0 run|up|deploy|stop" >&2; exit 2 ;;
esac
