#!/usr/bin/env bash
# Local single-node Apache Kafka 4.x (KRaft, broker+controller) on localhost:9092, no Docker.
#
# Usage: scripts/kafka.sh {fetch|start|stop|status|reset}
#   fetch   download the broker jars from Maven Central (via mvn) into ${CACHE_DIR}/kafka/jars
#           (the Prometheus JMX exporter agent into ${CACHE_DIR}/kafka/jars/agent)
#   start   fetch, format storage once, start the broker in the background, wait until it answers
#   stop    stop the broker started by `start` (SIGTERM, then SIGKILL after a bounded wait)
#   status  print running/stopped; exit 0 if running, 1 if not
#   reset   stop and delete the data dir
#
# Environment (paths are relative to the repo root unless absolute):
#   CACHE_DIR (.cache)  RUN_DIR (.run)  PYTHON (.venv/bin/python)
#   KAFKA_HEAP_OPTS (-Xms256m -Xmx512m)  KAFKA_OPTS (extra JVM flags)
#   KAFKA_START_TIMEOUT (90 s)  KAFKA_STOP_TIMEOUT (30 s)  KAFKA_CLUSTER_ID (fixed default)
#   KAFKA_METRICS_PORT (9404): the broker's Prometheus metrics, http://127.0.0.1:<port>/metrics,
#     served by the JMX exporter agent with the rules in deploy/local/kafka/jmx-exporter.yaml
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CACHE_DIR="${CACHE_DIR:-.cache}"
RUN_DIR="${RUN_DIR:-.run}"
PYTHON="${PYTHON:-.venv/bin/python}"

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$ROOT/$1" ;; esac; }
CACHE_DIR="$(abspath "$CACHE_DIR")"
RUN_DIR="$(abspath "$RUN_DIR")"

CONF_DIR="$ROOT/deploy/local/kafka"
POM="$CONF_DIR/pom.xml"
JARS_DIR="$CACHE_DIR/kafka/jars"
STAMP="$JARS_DIR/.pom.sha256"
# The agent lives in a subdirectory so that the `$JARS_DIR/*` classpath does not include it.
AGENT_DIR="$JARS_DIR/agent"
METRICS_RULES="$CONF_DIR/jmx-exporter.yaml"
DATA_DIR="$RUN_DIR/kafka/data"
PROPS="$RUN_DIR/kafka/server.properties"
LOG_DIR="$RUN_DIR/logs"
LOG_FILE="$LOG_DIR/kafka.log"   # log4j2 output (deploy/local/kafka/log4j2.yaml)
OUT_FILE="$LOG_DIR/kafka.out"   # JVM stdout/stderr (crashes, early errors)
PID_FILE="$RUN_DIR/kafka.pid"

HOST=127.0.0.1
PORT=9092
BOOTSTRAP="localhost:$PORT"
METRICS_PORT="${KAFKA_METRICS_PORT:-9404}"
# 16 bytes "tagstream-local1", base64url: a valid, fixed KRaft cluster id (one node, local only).
CLUSTER_ID="${KAFKA_CLUSTER_ID:-dGFnc3RyZWFtLWxvY2FsMQ}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=lib/daemon.sh
source "$ROOT/scripts/lib/daemon.sh"

pom_hash() { sha256sum "$POM" | cut -d' ' -f1; }

jars_ok() {
  [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$(pom_hash)" ]] &&
    compgen -G "$JARS_DIR/kafka_2.13-*.jar" >/dev/null && [[ -n "$(agent_jar)" ]]
}

agent_jar() { compgen -G "$AGENT_DIR/jmx_prometheus_javaagent-*.jar" | head -n 1 || true; }

cmd_fetch() {
  if jars_ok; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (needs Maven 3.6.3+ and Java 17+)"
  command -v java >/dev/null || die "java not found (needs Java 17+)"
  log "fetching Kafka jars into $JARS_DIR (Maven Central) ..."
  mkdir -p "$CACHE_DIR/kafka"
  local tmp="$CACHE_DIR/kafka/jars.tmp.$$"
  rm -rf "$tmp"
  # Maven prints errors on stdout (and stray ANSI resets even with -q): keep its output
  # in a file and show it only on failure.
  local mvn_log="$CACHE_DIR/kafka/mvn.log"
  if ! mvn -B -q -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
    -DoutputDirectory="$tmp" </dev/null >"$mvn_log" 2>&1; then
    cat "$mvn_log" >&2
    rm -rf "$tmp"
    die "mvn dependency:copy-dependencies failed (see $mvn_log)"
  fi
  mkdir -p "$tmp/agent"
  mv "$tmp"/jmx_prometheus_javaagent-*.jar "$tmp/agent/" ||
    { rm -rf "$tmp"; die "the pom did not bring the JMX exporter agent"; }
  pom_hash >"$tmp/.pom.sha256"
  rm -rf "$JARS_DIR"
  mv "$tmp" "$JARS_DIR"
  log "fetched $(find "$JARS_DIR" -name '*.jar' | wc -l) jars"
}

our_pid() { pid_if_ours 'kafka\.Kafka'; }

port_open() { (exec 3<>"/dev/tcp/$HOST/${1:-$PORT}") 2>/dev/null; }

# Does the broker answer Kafka requests (metadata with at least one broker)?
HAVE_PY_CHECK=""
broker_answers() {
  if [[ -z "$HAVE_PY_CHECK" ]]; then
    if [[ -x "$PYTHON" ]] && "$PYTHON" -c 'import confluent_kafka' 2>/dev/null; then
      HAVE_PY_CHECK=yes
    else
      HAVE_PY_CHECK=no
      log "warning: $PYTHON with confluent_kafka not available; readiness = TCP port only"
    fi
  fi
  port_open || return 1
  [[ "$HAVE_PY_CHECK" == yes ]] || return 0
  timeout 15 "$PYTHON" - "$BOOTSTRAP" <<'PY' 2>/dev/null
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0}).list_topics(timeout=5)
sys.exit(0 if md.brokers else 1)
PY
}

LOG_MARK=0  # lines already in kafka.log before this start (it is appended across runs)
fail_start() {
  log "error: $*"
  if [[ -s "$OUT_FILE" ]]; then
    log "--- tail of $OUT_FILE ---"
    tail -n 40 "$OUT_FILE" >&2
  fi
  if [[ -s "$LOG_FILE" ]]; then
    log "--- tail of $LOG_FILE (this run) ---"
    tail -n "+$((LOG_MARK + 1))" "$LOG_FILE" | tail -n 40 >&2
  fi
  exit 1
}

render_props() {
  mkdir -p "$(dirname "$PROPS")"
  sed "s|@DATA_DIR@|$DATA_DIR|g" "$CONF_DIR/server.properties.in" >"$PROPS.tmp"
  mv "$PROPS.tmp" "$PROPS"
}

java_cmd() {
  # shellcheck disable=SC2086  # HEAP_OPTS / KAFKA_OPTS are word lists on purpose
  printf '%s\0' java $HEAP_OPTS \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true -Dlog4j2.shutdownHookEnabled=false \
    "-Dlog4j2.configurationFile=$CONF_DIR/log4j2.yaml" "-Dkafka.logs.dir=$LOG_DIR" \
    ${KAFKA_OPTS:-} -cp "$JARS_DIR/*" "$@"
}

format_storage() {
  if [[ -f "$DATA_DIR/meta.properties" ]]; then
    return 0
  fi
  mkdir -p "$DATA_DIR" "$LOG_DIR"
  log "formatting KRaft storage in $DATA_DIR (cluster id $CLUSTER_ID)"
  local -a cmd
  mapfile -d '' cmd < <(java_cmd kafka.tools.StorageTool format --standalone \
    -t "$CLUSTER_ID" -c "$PROPS")
  if ! "${cmd[@]}" </dev/null >"$LOG_DIR/kafka-format.out" 2>&1; then
    cat "$LOG_DIR/kafka-format.out" >&2
    die "storage format failed"
  fi
}

wait_ready() {
  local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! alive "$pid"; then
      rm -f "$PID_FILE"
      fail_start "broker process $pid exited during startup"
    fi
    if broker_answers; then
      return 0
    fi
    sleep 1
  done
  fail_start "broker did not answer on $BOOTSTRAP within ${START_TIMEOUT}s (pid $pid still running; see scripts/kafka.sh stop)"
}

cmd_start() {
  local pid
  if pid="$(our_pid)"; then
    if broker_answers; then
      log "already running (pid $pid) on $BOOTSTRAP"
      return 0
    fi
    log "broker (pid $pid) is running but not answering yet; waiting"
    wait_ready "$pid"
    log "running (pid $pid) on $BOOTSTRAP"
    return 0
  fi
  rm -f "$PID_FILE"
  if port_open; then
    die "port $PORT is already in use by a process this script did not start"
  fi
  if port_open "$METRICS_PORT"; then
    die "metrics port $METRICS_PORT is already in use (set KAFKA_METRICS_PORT)"
  fi

  cmd_fetch
  render_props
  format_storage

  mkdir -p "$LOG_DIR"
  local -a cmd
  mapfile -d '' cmd < <(java_cmd "-javaagent:$(agent_jar)=$HOST:$METRICS_PORT:$METRICS_RULES" \
    kafka.Kafka "$PROPS")
  log "starting broker (logs: ${LOG_FILE#"$ROOT"/})"
  local t0=$SECONDS
  : >"$OUT_FILE"
  LOG_MARK="$( (wc -l <"$LOG_FILE") 2>/dev/null || echo 0)"
  pid="$(daemon_launch kafka "$OUT_FILE" "${cmd[@]}")" || fail_start "could not launch the broker"
  wait_ready "$pid"
  log "running (pid $pid) on $BOOTSTRAP, ready after $((SECONDS - t0))s"
}

cmd_stop() {
  daemon_stop broker
}

cmd_status() {
  local pid
  if pid="$(our_pid)"; then
    local metrics="no metrics on $HOST:$METRICS_PORT"
    port_open "$METRICS_PORT" && metrics="metrics http://$HOST:$METRICS_PORT/metrics"
    if port_open; then
      echo "running (pid $pid, $BOOTSTRAP, $metrics)"
    else
      echo "running (pid $pid, not listening on $BOOTSTRAP yet)"
    fi
    return 0
  fi
  echo "stopped"
  return 1
}

cmd_reset() {
  cmd_stop
  rm -rf "$RUN_DIR/kafka"
  log "deleted ${RUN_DIR#"$ROOT"/}/kafka (data dir and rendered config)"
}

case "${1:-}" in
  fetch) cmd_fetch ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  reset) cmd_reset ;;
  *)
    echo "usage: $0 {fetch|start|stop|status|reset}" >&2
    exit 2
    ;;
esac
