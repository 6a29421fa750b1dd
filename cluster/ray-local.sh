#!/usr/bin/env bash
# A local Ray head bound to loopback, with the dashboard (and job API) on 127.0.0.1.
#
#   cluster/ray-local.sh start    start the head; returns once the dashboard answers
#   cluster/ray-local.sh stop     stop it (idempotent); only this head's processes are touched
#   cluster/ray-local.sh status   say whether it runs; `ray status` for it (exit 3 when stopped)
#
# Settings (environment):
#   RAY_PORT=6379 DASHBOARD_PORT=8265 NUM_CPUS=2    the usual knobs
#   RAY_LOCAL_DIR=/tmp/cmbert-ray-$RAY_PORT          pid file, log and Ray's temp dir for this head
#   START_TIMEOUT=120                                seconds to wait for the dashboard
#   DASHBOARD_AGENT_PORT, DASHBOARD_AGENT_GRPC_PORT, RAY_CLIENT_PORT, METRICS_PORT,
#   RUNTIME_ENV_AGENT_PORT, NODE_MANAGER_PORT, OBJECT_MANAGER_PORT   optional; set them all to run
#   a second head beside another one (the job API reaches the agent on DASHBOARD_AGENT_PORT).
#
# Jobs submitted with `ray job submit --address http://127.0.0.1:$DASHBOARD_PORT -- python ...` run with this
# repo's .venv interpreter: the head starts with .venv/bin first on PATH. Set RAY_AUTH_MODE=token for the ray
# CLI (Ray 2.60 enables token auth; the token lives in ~/.ray/auth_token).
#
# `ray stop` is never used: it stops every Ray instance of this user on the machine. The head runs in its
# own process group, and stop ends that group plus any process whose command line or working directory
# lies inside this head's RAY_LOCAL_DIR (workers, job drivers), by pid.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAY="$REPO/.venv/bin/ray"
PY="$REPO/.venv/bin/python"
RAY_PORT="${RAY_PORT:-6379}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
NUM_CPUS="${NUM_CPUS:-2}"
START_TIMEOUT="${START_TIMEOUT:-120}"
DIR="${RAY_LOCAL_DIR:-/tmp/cmbert-ray-$RAY_PORT}"
PIDFILE="$DIR/head.pid"
LOG="$DIR/head.log"
DASHBOARD="http://127.0.0.1:$DASHBOARD_PORT"

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # without it Ray binds the external interface; `ray status` hangs
export RAY_USAGE_STATS_ENABLED=0
# A job's entrypoint (`-- python jobs/x.py`) is a shell command run with the head's PATH: put the venv first
# so that `python` is the repo's interpreter, not the system's.
export PATH="$REPO/.venv/bin:$PATH"
# Ray 2.60 turns on token auth for a new head; say so explicitly so that the CLI (status, job submit) sends
# the token from ~/.ray/auth_token too. Clients of this head need RAY_AUTH_MODE=token as well.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

die() { echo "ray-local: $*" >&2; exit 1; }

head_pid() {
    # The pid (= process group) of the running head, or nothing.
    [[ -f "$PIDFILE" ]] || return 0
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
    return 0
}

http_ok() {
    if command -v curl >/dev/null; then
        curl -sf -m 3 -o /dev/null "$1"
    else
        "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "$1" >/dev/null 2>&1
    fi
}

dashboard_up() {
    # Health paths need no token (Ray 2.60 turns token auth on; the ray CLI reads ~/.ray/auth_token).
    # The job API needs the dashboard head (GCS health) and the head node's agent, which runs the jobs.
    http_ok "$DASHBOARD/api/gcs_healthz" &&
        http_ok "http://127.0.0.1:${DASHBOARD_AGENT_PORT:-52365}/api/healthz"
}

port_args() {
    local -a args=()
    [[ -n "${DASHBOARD_AGENT_PORT:-}" ]] && args+=(--dashboard-agent-listen-port="$DASHBOARD_AGENT_PORT")
    [[ -n "${DASHBOARD_AGENT_GRPC_PORT:-}" ]] && args+=(--dashboard-agent-grpc-port="$DASHBOARD_AGENT_GRPC_PORT")
    [[ -n "${RAY_CLIENT_PORT:-}" ]] && args+=(--ray-client-server-port="$RAY_CLIENT_PORT")
    [[ -n "${METRICS_PORT:-}" ]] && args+=(--metrics-export-port="$METRICS_PORT")
    [[ -n "${RUNTIME_ENV_AGENT_PORT:-}" ]] && args+=(--runtime-env-agent-port="$RUNTIME_ENV_AGENT_PORT")
    [[ -n "${NODE_MANAGER_PORT:-}" ]] && args+=(--node-manager-port="$NODE_MANAGER_PORT")
    [[ -n "${OBJECT_MANAGER_PORT:-}" ]] && args+=(--object-manager-port="$OBJECT_MANAGER_PORT")
    echo "${args[@]}"
}

cluster_pids() {
    # Processes of this head found by pid: command line or working directory inside $DIR.
    local p cmd cwd
    for p in /proc/[0-9]*; do
        p="${p#/proc/}"
        [[ "$p" == "$$" ]] && continue
        cmd="$( (tr '\0' ' ' <"/proc/$p/cmdline") 2>/dev/null || true)"
        cwd="$(readlink "/proc/$p/cwd" 2>/dev/null || true)"
        if [[ "$cmd" == *"$DIR/"* || "$cwd" == "$DIR"/* ]]; then
            echo "$p"
        fi
    done
}

start() {
    [[ -x "$RAY" ]] || die "$RAY not found: run 'make test' or create the venv first"
    # On a loaded machine the dashboard can miss Ray's own start-up deadline: one clean retry.
    start_once && return 0
    echo "ray-local: start failed; cleaning up and retrying once" >&2
    stop >/dev/null 2>&1 || true
    start_once || die "head did not start twice (log: $LOG)"
}

start_once() {
    if [[ -n "$(head_pid)" ]]; then
        echo "ray-local: already running (pid $(head_pid)), dashboard $DASHBOARD"
        return 0
    fi
    mkdir -p "$DIR"
    # shellcheck disable=SC2046
    setsid "$RAY" start --head --block \
        --node-ip-address=127.0.0.1 \
        --port="$RAY_PORT" \
        --num-cpus="$NUM_CPUS" \
        --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
        --min-worker-port=0 --max-worker-port=0 \
        --temp-dir="$DIR/ray" \
        --disable-usage-stats \
        $(port_args) \
        >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    local deadline=$((SECONDS + START_TIMEOUT))
    until dashboard_up; do
        if [[ -z "$(head_pid)" ]]; then
            tail -n 30 "$LOG" >&2 || true
            rm -f "$PIDFILE"
            echo "ray-local: head exited during start (log: $LOG)" >&2
            return 1
        fi
        if (( SECONDS >= deadline )); then
            tail -n 30 "$LOG" >&2 || true
            stop
            echo "ray-local: dashboard $DASHBOARD did not answer within ${START_TIMEOUT}s (log: $LOG)" >&2
            return 1
        fi
        sleep 0.5
    done
    echo "ray-local: running (pid $(head_pid)); dashboard and job API $DASHBOARD; GCS 127.0.0.1:$RAY_PORT"
}

stop() {
    local pid
    pid="$(head_pid)"
    if [[ -n "$pid" ]]; then
        # SIGTERM to `ray start --block` alone: it stops its processes in order (~8 s). A SIGTERM to the
        # whole group at once leaves it waiting ~20 s on children that are already gone.
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    local left
    left="$(cluster_pids)"
    if [[ -n "$left" ]]; then
        # shellcheck disable=SC2086
        kill -TERM $left 2>/dev/null || true
        sleep 1
        left="$(cluster_pids)"
        # shellcheck disable=SC2086
        [[ -n "$left" ]] && kill -KILL $left 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    if [[ -n "$pid" ]]; then echo "ray-local: stopped"; else echo "ray-local: not running"; fi
}

status() {
    local pid
    pid="$(head_pid)"
    if [[ -z "$pid" ]]; then
        echo "ray-local: not running"
        return 3
    fi
    echo "ray-local: running (pid $pid); dashboard $DASHBOARD $(dashboard_up && echo answers || echo 'does not answer')"
    timeout 30 "$RAY" status --address "127.0.0.1:$RAY_PORT" || true
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
