#!/usr/bin/env bash
# Run the CPU-only Triton server shipped in the nvidia-pytriton wheel, serving
# our own model repository (model_repository/cpu: the ONNX model via the Python backend).
#
#   scripts/triton.sh setup    backend dir + stand-in model if missing (idempotent)
#   scripts/triton.sh start    setup, start in the background, wait until ready
#   scripts/triton.sh stop     SIGTERM the process group, then SIGKILL; no-op if down
#   scripts/triton.sh status   exit 0 if running and ready, 1 if not ready, 3 if down
#
# Environment (defaults in brackets):
#   PYTHON [.venv/bin/python]  interpreter of the venv holding nvidia-pytriton,
#                              numpy and onnxruntime; its libpython and its venv
#                              are handed to the Python backend stub (see start)
#   MODEL_REPOSITORY [model_repository/cpu]   CACHE_DIR [.cache]   RUN_DIR [.run]
#   HTTP_PORT [8000]  GRPC_PORT [8001]  METRICS_PORT [8002]
#   START_TIMEOUT [120]  STOP_TIMEOUT [30]  (seconds)   TRITON_READY_MODEL [resnet50]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

abspath() { case "$1" in /*) echo "$1" ;; *) echo "$ROOT/$1" ;; esac; }

PYTHON="$(abspath "${PYTHON:-.venv/bin/python}")"
MODEL_REPOSITORY="$(abspath "${MODEL_REPOSITORY:-model_repository/cpu}")"
CACHE_DIR="$(abspath "${CACHE_DIR:-.cache}")"
RUN_DIR="$(abspath "${RUN_DIR:-.run}")"
HTTP_PORT="${HTTP_PORT:-8000}"
GRPC_PORT="${GRPC_PORT:-8001}"
METRICS_PORT="${METRICS_PORT:-8002}"
START_TIMEOUT="${START_TIMEOUT:-120}"
STOP_TIMEOUT="${STOP_TIMEOUT:-30}"

MODEL_NAME="${TRITON_READY_MODEL:-resnet50}"  # start waits for this model
BACKEND_ROOT="$CACHE_DIR/triton/backends"
PID_FILE="$RUN_DIR/triton.pid"
LOG_FILE="$RUN_DIR/logs/triton.log"
BASE_URL="http://localhost:$HTTP_PORT"

log() { echo "triton.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# Locations derived from the venv's interpreter: the pytriton package (server,
# backend, stubs), the wheel's bundled libs and the interpreter's own libpython.
py_paths() {
    [[ -x "$PYTHON" ]] || die "no python at $PYTHON (set PYTHON=...)"
    local out
    out="$("$PYTHON" - <<'EOF'
import importlib.util
import sysconfig
from pathlib import Path

spec = importlib.util.find_spec("pytriton")
if spec is None or not spec.submodule_search_locations:
    raise SystemExit("nvidia-pytriton is not installed in this venv")
pkg = Path(list(spec.submodule_search_locations)[0])
print(pkg / "tritonserver")
print(pkg.parent / "nvidia_pytriton.libs")
print(sysconfig.get_config_var("LIBDIR"))
print(f"{sysconfig.get_config_var('py_version_short')}")
EOF
)" || die "cannot locate pytriton with $PYTHON"
    {
        read -r TRITON_HOME
        read -r TRITON_LIBS
        read -r PY_LIBDIR
        read -r PY_VERSION
    } <<<"$out"
    TRITON_BIN="$TRITON_HOME/bin/tritonserver"
    [[ -x "$TRITON_BIN" ]] || die "no tritonserver binary at $TRITON_BIN"
}

setup_backend() {
    local src="$TRITON_HOME/backends/python"
    local stub="$TRITON_HOME/python_backend_stubs/$PY_VERSION/triton_python_backend_stub"
    local dst="$BACKEND_ROOT/python" f
    for f in "$src/libtriton_python.so" "$src/triton_python_backend_utils.py" "$stub"; do
        [[ -f "$f" ]] || die "missing in the pytriton wheel: $f"
    done
    mkdir -p "$dst"
    # Symlinks, so that reinstalling the wheel in place is picked up; ln -sfn is idempotent.
    ln -sfn "$src/libtriton_python.so" "$dst/libtriton_python.so"
    ln -sfn "$src/triton_python_backend_utils.py" "$dst/triton_python_backend_utils.py"
    ln -sfn "$stub" "$dst/triton_python_backend_stub"
}

setup_model() {
    local onnx="$MODEL_REPOSITORY/$MODEL_NAME/1/model.onnx"
    "$PYTHON" -c "import numpy, onnxruntime" ||
        die "$PYTHON lacks numpy/onnxruntime, which model.py needs (pip install -e '.[local]')"
    [[ -f "$onnx" ]] && return 0
    log "exporting the model to $onnx"
    "$PYTHON" -m tools.model.export
}

cmd_setup() {
    py_paths
    setup_backend
    setup_model
}

# Pid of our server if the pid file names a live tritonserver, else nothing.
our_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q tritonserver || return 1
    echo "$pid"
}

is_ready() {
    curl -sf -o /dev/null --max-time 2 "$BASE_URL/v2/health/ready" &&
        curl -sf -o /dev/null --max-time 2 "$BASE_URL/v2/models/$MODEL_NAME/ready"
}

wait_ready() {
    local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        is_ready && return 0
        kill -0 "$pid" 2>/dev/null || { log "tritonserver (pid $pid) exited"; return 1; }
        sleep 1
    done
    log "not ready after ${START_TIMEOUT}s"
    return 1
}

cmd_start() {
    local pid
    if pid="$(our_pid)"; then
        if is_ready; then
            log "already running (pid $pid) and ready"
            return 0
        fi
        log "already running (pid $pid), waiting until ready"
        wait_ready "$pid" || { tail -n 50 "$LOG_FILE" >&2 || true; exit 1; }
        return 0
    fi
    rm -f "$PID_FILE"
    if curl -s -o /dev/null --max-time 2 "$BASE_URL/v2/health/live"; then
        die "something else answers on port $HTTP_PORT; not starting a second server"
    fi

    cmd_setup
    mkdir -p "$(dirname "$LOG_FILE")"
    local start=$SECONDS
    log "starting tritonserver (log: $LOG_FILE)"
    echo "=== $(date -Is) start ===" >>"$LOG_FILE"
    # setsid: own session and process group (pid == pgid), so stop can signal the
    # server together with its triton_python_backend_stub children.
    # LD_LIBRARY_PATH: the venv interpreter's libpython FIRST (the stub links
    # libpython3.x; an older system one breaks it), then the wheel's bundled libs.
    # PATH: the stub embeds Python in isolated mode (PYTHONPATH and the like are
    # ignored) and finds its home by looking up "python3" on PATH; with the venv's
    # bin first it finds the venv's pyvenv.cfg and so the venv's site-packages.
    setsid nohup env \
        LD_LIBRARY_PATH="$PY_LIBDIR:$TRITON_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        PATH="$(dirname "$PYTHON"):$PATH" \
        "$TRITON_BIN" \
        --model-repository="$MODEL_REPOSITORY" \
        --backend-directory="$BACKEND_ROOT" \
        --model-control-mode=none \
        --http-port "$HTTP_PORT" \
        --grpc-port "$GRPC_PORT" \
        --metrics-port "$METRICS_PORT" \
        --allow-metrics=true \
        --allow-gpu-metrics=false \
        --pinned-memory-pool-byte-size=0 \
        --exit-timeout-secs="$STOP_TIMEOUT" \
        >>"$LOG_FILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PID_FILE"

    if ! wait_ready "$pid"; then
        log "start failed; last lines of $LOG_FILE:"
        tail -n 50 "$LOG_FILE" >&2 || true
        cmd_stop >/dev/null 2>&1 || true
        exit 1
    fi
    log "ready (pid $pid) after $((SECONDS - start))s: http :$HTTP_PORT, grpc :$GRPC_PORT, metrics :$METRICS_PORT"
}

# Processes of the group (the server and its stubs), if any are left.
group_alive() { pgrep -g "$1" >/dev/null 2>&1; }

cmd_stop() {
    local pid
    if ! pid="$(our_pid)"; then
        log "not running"
        rm -f "$PID_FILE"
        return 0
    fi
    local pgid
    pgid="$(ps -o pgid= -p "$pid" | tr -d ' ')"
    if [[ "$pgid" != "$pid" ]]; then
        # Not a group leader (should not happen with setsid): signal what we can.
        log "warning: pid $pid is not its group's leader (pgid $pgid)"
        pgid=""
    fi
    signal() {
        if [[ -n "$pgid" ]]; then kill "-$1" -- "-$pgid" 2>/dev/null || true
        else pkill "-$1" -P "$pid" 2>/dev/null || true; kill "-$1" "$pid" 2>/dev/null || true
        fi
    }
    alive() { if [[ -n "$pgid" ]]; then group_alive "$pgid"; else kill -0 "$pid" 2>/dev/null; fi; }

    log "stopping tritonserver (pid $pid)"
    signal TERM
    local deadline=$((SECONDS + STOP_TIMEOUT + 5))
    while alive && ((SECONDS < deadline)); do sleep 0.5; done
    if alive; then
        log "still alive after $((STOP_TIMEOUT + 5))s, sending SIGKILL"
        signal KILL
        deadline=$((SECONDS + 10))
        while alive && ((SECONDS < deadline)); do sleep 0.2; done
        alive && die "processes of group $pgid survive SIGKILL"
    fi
    rm -f "$PID_FILE"
    log "stopped"
}

cmd_status() {
    local pid
    if ! pid="$(our_pid)"; then
        echo "tritonserver: not running"
        return 3
    fi
    if is_ready; then
        echo "tritonserver: running (pid $pid), ready, model $MODEL_NAME ready ($BASE_URL)"
        return 0
    fi
    echo "tritonserver: running (pid $pid), NOT ready (log: $LOG_FILE)"
    return 1
}

case "${1:-}" in
    setup) cmd_setup ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 {setup|start|stop|status}" >&2
        exit 2
        ;;
esac
