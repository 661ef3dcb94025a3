#!/usr/bin/env bash
# Local Prometheus (Debian's `prometheus` package, run directly: not its system service)
# scraping the stack with deploy/prometheus/prometheus.yml, on http://127.0.0.1:9090.
#
# Usage: scripts/prometheus.sh {start|stop|status|rules FILE}
#   start   copy the config to ${RUN_DIR}/prometheus/ and the alert rules to its rules/,
#           check both, start Prometheus in the background, wait until /-/ready answers
#   stop    stop the Prometheus started by `start` (SIGTERM, then SIGKILL after a bounded wait)
#   status  print running/stopped; exit 0 if running and ready, 1 if not
#   rules   write the alert rules as a Prometheus rule file to FILE (`-`: standard output)
#
# Environment (paths are relative to the repo root unless absolute):
#   RUN_DIR (.run): pid file, logs/prometheus.log, prometheus/ (the running copy of the config,
#     data/ = the TSDB, targets/ = extra scrape targets, see the `registered` job)
#   PROMETHEUS_BIN (prometheus on PATH)  PROMETHEUS_CONFIG (deploy/prometheus/prometheus.yml)
#   PROMETHEUS_RULES (deploy/k8s/base/monitoring/alerts.yaml: a PrometheusRule, its `spec` is used)
#   PROMETHEUS_PORT (9090)  PROMETHEUS_RETENTION (2d)
#   PROMETHEUS_START_TIMEOUT (60 s)  PROMETHEUS_STOP_TIMEOUT (30 s)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALLER_DIR="$PWD"  # `rules FILE` is relative to where the script was called from
cd "$ROOT"

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$ROOT/$1" ;; esac; }
RUN_DIR="$(abspath "${RUN_DIR:-.run}")"
CONFIG="$(abspath "${PROMETHEUS_CONFIG:-deploy/prometheus/prometheus.yml}")"
RULES="$(abspath "${PROMETHEUS_RULES:-deploy/k8s/base/monitoring/alerts.yaml}")"

HOME_DIR="$RUN_DIR/prometheus"
RUN_CONFIG="$HOME_DIR/prometheus.yml"  # relative paths in it (targets/*.json) resolve here
DATA_DIR="$HOME_DIR/data"
TARGETS_DIR="$HOME_DIR/targets"
RULES_DIR="$HOME_DIR/rules"  # prometheus.yml loads rules/*.yml
LOG_DIR="$RUN_DIR/logs"
LOG_FILE="$LOG_DIR/prometheus.log"
PID_FILE="$RUN_DIR/prometheus.pid"

HOST=127.0.0.1
PORT="${PROMETHEUS_PORT:-9090}"
URL="http://$HOST:$PORT"
RETENTION="${PROMETHEUS_RETENTION:-2d}"
START_TIMEOUT="${PROMETHEUS_START_TIMEOUT:-60}"
STOP_TIMEOUT="${PROMETHEUS_STOP_TIMEOUT:-30}"

log() { printf 'prometheus.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=lib/daemon.sh
source "$ROOT/scripts/lib/daemon.sh"

find_bin() {
  local bin="${PROMETHEUS_BIN:-$(command -v prometheus || true)}"
  [[ -n "$bin" && -x "$bin" ]] ||
    die "prometheus not found (Debian: apt-get install prometheus; scripts/system-deps.sh installs it)"
  printf '%s\n' "$bin"
}

our_pid() { pid_if_ours -F -- "--storage.tsdb.path=$DATA_DIR "; }

# The PrometheusRule's `spec` is a Prometheus rule file indented by two spaces: the lines
# after `spec:`, dedented. (alerts.yaml keeps `spec` last; tests/deploy/test_alerts.py checks
# that this gives exactly its `spec`.) Plain text tools, so `make up` needs no YAML library.
write_rules() {
  local out="$1"
  [[ -f "$RULES" ]] || die "no alert rules at $RULES"
  grep -q '^spec:$' "$RULES" || die "$RULES has no top-level spec:"
  if [[ "$out" == - ]]; then
    sed -e '1,/^spec:$/d' -e 's/^  //' "$RULES"
  else
    sed -e '1,/^spec:$/d' -e 's/^  //' "$RULES" >"$out.tmp"
    mv "$out.tmp" "$out"
  fi
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

ready() { curl -fsS -o /dev/null --max-time 2 "$URL/-/ready" 2>/dev/null; }

check_config() {
  local promtool
  promtool="$(dirname "$1")/promtool"
  [[ -x "$promtool" ]] || promtool="$(command -v promtool || true)"
  if [[ -z "$promtool" ]]; then
    log "warning: promtool not found; config not checked before start"
    return 0
  fi
  local out
  if ! out="$("$promtool" check config "$RUN_CONFIG" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "invalid config $CONFIG"
  fi
}

LOG_MARK=0  # lines already in prometheus.log before this start (it is appended across runs)
fail_start() {
  log "error: $*"
  if [[ -s "$LOG_FILE" ]]; then
    log "--- tail of $LOG_FILE (this run) ---"
    tail -n "+$((LOG_MARK + 1))" "$LOG_FILE" | tail -n 30 >&2
  fi
  exit 1
}

wait_ready() {
  local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! alive "$pid"; then
      rm -f "$PID_FILE"
      fail_start "prometheus (pid $pid) exited during startup"
    fi
    if ready; then
      return 0
    fi
    sleep 0.5
  done
  fail_start "not ready on $URL within ${START_TIMEOUT}s (pid $pid still running; see scripts/prometheus.sh stop)"
}

cmd_start() {
  local pid
  if pid="$(our_pid)"; then
    if ! ready; then
      log "prometheus (pid $pid) is running but not ready yet; waiting"
      wait_ready "$pid"
    fi
    log "already running (pid $pid) on $URL"
    return 0
  fi
  rm -f "$PID_FILE"
  if port_open; then
    die "port $PORT is already in use by a process this script did not start"
  fi
  local bin
  bin="$(find_bin)"
  [[ -f "$CONFIG" ]] || die "no config at $CONFIG"
  mkdir -p "$DATA_DIR" "$TARGETS_DIR" "$RULES_DIR" "$LOG_DIR"
  cp "$CONFIG" "$RUN_CONFIG.tmp"
  mv "$RUN_CONFIG.tmp" "$RUN_CONFIG"
  write_rules "$RULES_DIR/tagstream.yml"
  check_config "$bin"
  LOG_MARK="$( (wc -l <"$LOG_FILE") 2>/dev/null || echo 0)"
  log "starting prometheus (config: ${CONFIG#"$ROOT"/}, logs: ${LOG_FILE#"$ROOT"/})"
  local t0=$SECONDS
  pid="$(daemon_launch prometheus "$LOG_FILE" "$bin" "--config.file=$RUN_CONFIG" "--storage.tsdb.path=$DATA_DIR" \
    "--storage.tsdb.retention.time=$RETENTION" "--web.listen-address=$HOST:$PORT")" ||
    fail_start "could not launch prometheus"
  wait_ready "$pid"
  log "running (pid $pid) on $URL, ready after $((SECONDS - t0))s"
}

cmd_stop() {
  daemon_stop prometheus
}

cmd_status() {
  local pid
  if pid="$(our_pid)"; then
    if ready; then
      echo "prometheus: running (pid $pid, $URL)"
      return 0
    fi
    echo "prometheus: running (pid $pid, not ready on $URL)"
    return 1
  fi
  echo "prometheus: stopped"
  return 1
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  rules)
    [[ $# -eq 2 ]] || { echo "usage: $0 rules FILE" >&2; exit 2; }
    case "$2" in -|/*) write_rules "$2" ;; *) write_rules "$CALLER_DIR/$2" ;; esac
    ;;
  *)
    echo "usage: $0 {start|stop|status|rules FILE}" >&2
    exit 2
    ;;
esac
