#!/usr/bin/env bash
# The local stack, no Docker: Kafka, Triton, Prometheus, the demo image server and the four services.
#
# Usage: scripts/stack.sh {up|down|status|restart [service ...]}
#   up       start whatever is not running yet, create the topics, return when all are ready
#   down     stop everything `up` started; leaves no process behind
#   status   one line per part
#   restart  stop and start the named services (default: all four), e.g. after a code change
#
# Settings of the services: deploy/local/services.env. Logs: .run/logs/<part>.log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RUN_DIR="${RUN_DIR:-.run}"
PYTHON="${PYTHON:-.venv/bin/python}"
DEMO_IMAGES_DIR="$RUN_DIR/demo-images"
DEMO_IMAGES_PORT="${DEMO_IMAGES_PORT:-8765}"
READY_TIMEOUT="${STACK_READY_TIMEOUT:-180}"
# shellcheck source=../deploy/local/services.env
source deploy/local/services.env

# The stages and their health ports, from the stage graph (services/common/stages.py).
SERVICES=()
declare -A HEALTH_PORT=()
while read -r name port; do
  SERVICES+=("$name")
  HEALTH_PORT[$name]=$port
done < <("$PYTHON" -m services.common.stages)

log() { printf 'stack: %s\n' "$*" >&2; }

alive() {  # alive NAME: our process for NAME is running
  local pid_file="$RUN_DIR/$1.pid"
  [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

start_bg() {  # start_bg NAME CMD...: run CMD in its own session, pid and log under $RUN_DIR
  local name="$1"; shift
  if alive "$name"; then
    log "$name already running (pid $(cat "$RUN_DIR/$name.pid"))"
    return 0
  fi
  mkdir -p "$RUN_DIR/logs"
  setsid nohup "$@" >>"$RUN_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
  log "$name started (pid $!)"
}

stop_bg() {  # stop_bg NAME: SIGTERM the process group, SIGKILL after 20 s
  local name="$1" pid_file="$RUN_DIR/$1.pid" pid
  [[ -f "$pid_file" ]] || return 0
  pid="$(cat "$pid_file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop in 20 s: killing it"
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    log "$name stopped"
  fi
  rm -f "$pid_file"
}

wait_healthy() {  # wait_healthy NAME URL
  local name="$1" url="$2" deadline=$((SECONDS + READY_TIMEOUT))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    if ! alive "$name"; then
      log "$name exited; the end of its log:"; tail -n 30 "$RUN_DIR/logs/$name.log" >&2; return 1
    fi
    if ((SECONDS > deadline)); then
      log "$name not ready after ${READY_TIMEOUT} s ($url):"; curl -sS "$url" >&2 || true
      tail -n 30 "$RUN_DIR/logs/$name.log" >&2; return 1
    fi
    sleep 0.5
  done
  log "$name ready"
}

cmd_up() {
  scripts/kafka.sh start
  "$PYTHON" -m services.common.topics
  scripts/triton.sh start
  scripts/prometheus.sh start
  "$PYTHON" -m tools.demo_data images "$DEMO_IMAGES_DIR"
  start_bg demo-images "$PYTHON" -m http.server "$DEMO_IMAGES_PORT" --bind 127.0.0.1 --directory "$DEMO_IMAGES_DIR"
  for service in "${SERVICES[@]}"; do
    start_bg "$service" "$PYTHON" -m "services.$service"
  done
  wait_healthy demo-images "http://127.0.0.1:$DEMO_IMAGES_PORT/photo-00.jpg"
  for service in "${SERVICES[@]}"; do
    wait_healthy "$service" "http://127.0.0.1:${HEALTH_PORT[$service]}/healthz"
  done
  log "up: Kafka localhost:9092, Triton localhost:8001, sink API http://localhost:8080/api/predictions, Prometheus http://localhost:9090"
}

cmd_down() {
  local service
  for service in "${SERVICES[@]}"; do stop_bg "$service"; done
  stop_bg demo-images
  scripts/prometheus.sh stop
  scripts/triton.sh stop
  scripts/kafka.sh stop
}

cmd_status() {
  local name rc=0
  for name in "${SERVICES[@]}" demo-images; do
    if alive "$name"; then echo "$name: running"; else echo "$name: stopped"; rc=1; fi
  done
  scripts/triton.sh status || rc=1
  scripts/kafka.sh status || rc=1
  scripts/prometheus.sh status || rc=1
  return $rc
}

cmd_restart() {
  local service
  (($# > 0)) || set -- "${SERVICES[@]}"
  for service in "$@"; do stop_bg "$service"; done
  for service in "$@"; do start_bg "$service" "$PYTHON" -m "services.$service"; done
  for service in "$@"; do wait_healthy "$service" "http://127.0.0.1:${HEALTH_PORT[$service]}/healthz"; done
}

case "${1:-}" in
  up) cmd_up ;;
  restart) shift; cmd_restart "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 {up|down|status}" >&2; exit 2 ;;
esac
