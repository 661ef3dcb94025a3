#!/usr/bin/env bash
# Local Apache Kafka 4.x in KRaft mode (each node broker + controller), no Docker: one node on
# localhost:9092 by default, or a cluster of KAFKA_NODES nodes on consecutive ports.
#
# Usage: scripts/kafka.sh {fetch|start|stop|status|reset} [NODE ...]
#   fetch   download the broker jars from Maven Central (via mvn) into ${CACHE_DIR}/kafka/jars
#           (the Prometheus JMX exporter agent into ${CACHE_DIR}/kafka/jars/agent)
#   start   fetch, format storage once, start the nodes in the background, wait until they answer
#   stop    stop the nodes started by `start` (SIGTERM, then SIGKILL after a bounded wait)
#   status  print running/stopped per node; exit 0 if all run, 1 if not
#   reset   stop and delete the data dirs
# NODE is a node id, 1..KAFKA_NODES; without one, every node.
#
# Environment (paths are relative to the repo root unless absolute):
#   CACHE_DIR (.cache)  RUN_DIR (.run)  PYTHON (.venv/bin/python)
#   KAFKA_NODES (1): with 3, a three-node cluster, replication factor 3 and min.insync.replicas 2
#     as in deploy/k8s (a static controller quorum of the three)
#   KAFKA_PORT (9092): node 1's client port; node n listens on KAFKA_PORT + 2(n-1), its
#     controller on the port above
#   KAFKA_HEAP_OPTS (-Xms256m -Xmx512m)  KAFKA_OPTS (extra JVM flags)
#   KAFKA_START_TIMEOUT (90 s)  KAFKA_STOP_TIMEOUT (30 s)  KAFKA_CLUSTER_ID (fixed default)
#   KAFKA_METRICS_PORT (9404): node 1's Prometheus metrics, http://127.0.0.1:<port>/metrics (node n
#     on the port n-1 above), served by the JMX exporter agent with deploy/local/kafka/jmx-exporter.yaml
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
NODES="${KAFKA_NODES:-1}"
BASE_PORT="${KAFKA_PORT:-9092}"
BASE_METRICS_PORT="${KAFKA_METRICS_PORT:-9404}"
HOST=127.0.0.1

node_port() { echo $((BASE_PORT + 2 * ($1 - 1))); }

# use_node N: point the per-node variables at node N. One node keeps the layout it always had.
use_node() {
  NODE="$1"
  PORT="$(node_port "$NODE")"
  CONTROLLER_PORT=$((PORT + 1))
  METRICS_PORT=$((BASE_METRICS_PORT + NODE - 1))
  BOOTSTRAP="localhost:$PORT"
  if ((NODES == 1)); then
    DATA_DIR="$RUN_DIR/kafka/data"
    PROPS="$RUN_DIR/kafka/server.properties"
    LOG_DIR="$RUN_DIR/logs"
    PID_FILE="$RUN_DIR/kafka.pid"
  else
    DATA_DIR="$RUN_DIR/kafka/node-$NODE/data"
    PROPS="$RUN_DIR/kafka/node-$NODE/server.properties"
    LOG_DIR="$RUN_DIR/logs/kafka-$NODE"
    PID_FILE="$RUN_DIR/kafka-$NODE.pid"
  fi
  LOG_FILE="$LOG_DIR/kafka.log"   # log4j2 output (deploy/local/kafka/log4j2.yaml)
  OUT_FILE="$LOG_DIR/kafka.out"   # JVM stdout/stderr (crashes, early errors)
}

# select_nodes [N ...]: SELECTED, the nodes a command is for: those named, or all. Run in the
# main shell, so that a node that does not exist ends the script.
SELECTED=()
select_nodes() {
  if (($# == 0)); then
    mapfile -t SELECTED < <(seq 1 "$NODES")
    return
  fi
  local n
  for n in "$@"; do
    [[ "$n" =~ ^[0-9]+$ ]] && ((n >= 1 && n <= NODES)) || die "no node $n (KAFKA_NODES=$NODES)"
  done
  SELECTED=("$@")
}
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
  local quorum replicas min_isr
  if ((NODES == 1)); then
    # Dynamic quorum: the storage is formatted with --standalone, this node the sole voter.
    quorum="controller.quorum.bootstrap.servers=$HOST:$CONTROLLER_PORT"
    replicas=1 min_isr=1
  else
    local n voters=()
    for n in $(seq 1 "$NODES"); do voters+=("$n@$HOST:$(($(node_port "$n") + 1))"); done
    quorum="controller.quorum.voters=$(IFS=,; echo "${voters[*]}")"
    replicas=$((NODES < 3 ? NODES : 3))
    min_isr=$((replicas > 1 ? 2 : 1))
  fi
  mkdir -p "$(dirname "$PROPS")"
  sed -e "s|@DATA_DIR@|$DATA_DIR|g" -e "s|@NODE_ID@|$NODE|g" -e "s|@HOST@|$HOST|g" \
    -e "s|@PORT@|$PORT|g" -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" -e "s|@QUORUM@|$quorum|g" \
    -e "s|@REPLICAS@|$replicas|g" -e "s|@MIN_ISR@|$min_isr|g" \
    "$CONF_DIR/server.properties.in" >"$PROPS.tmp"
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
  local -a cmd standalone=()
  ((NODES == 1)) && standalone=(--standalone)
  mapfile -d '' cmd < <(java_cmd kafka.tools.StorageTool format "${standalone[@]}" \
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

# launch_node: start the selected node in the background unless it runs; its pid in
# LAUNCHED_PID, and in LOG_MARK the lines its log held before.
launch_node() {
  LOG_MARK="$( (wc -l <"$LOG_FILE") 2>/dev/null || echo 0)"
  if LAUNCHED_PID="$(our_pid)"; then
    return 0
  fi
  rm -f "$PID_FILE"
  if port_open; then
    die "port $PORT is already in use by a process this script did not start"
  fi
  if port_open "$METRICS_PORT"; then
    die "metrics port $METRICS_PORT is already in use (set KAFKA_METRICS_PORT)"
  fi
  render_props
  format_storage
  mkdir -p "$LOG_DIR"
  local -a cmd
  mapfile -d '' cmd < <(java_cmd "-javaagent:$(agent_jar)=$HOST:$METRICS_PORT:$METRICS_RULES" \
    kafka.Kafka "$PROPS")
  log "starting node $NODE (logs: ${LOG_FILE#"$ROOT"/})"
  : >"$OUT_FILE"
  LAUNCHED_PID="$(daemon_launch "kafka-$NODE" "$OUT_FILE" "${cmd[@]}")" || fail_start "could not launch node $NODE"
}

cmd_start() {
  cmd_fetch
  local n t0=$SECONDS
  declare -A pids=() marks=()
  select_nodes "$@"
  # Every node is launched before any is waited for: a controller quorum needs a majority up.
  for n in "${SELECTED[@]}"; do
    use_node "$n"
    launch_node
    pids[$n]="$LAUNCHED_PID" marks[$n]="$LOG_MARK"
  done
  for n in "${SELECTED[@]}"; do
    use_node "$n"
    LOG_MARK="${marks[$n]}"
    wait_ready "${pids[$n]}"
    log "running (node $n, pid ${pids[$n]}) on $BOOTSTRAP, ready after $((SECONDS - t0))s"
  done
}

cmd_stop() {
  local n pid
  select_nodes "$@"
  # All are told first: a node waiting for a quorum the others already left stops slowly.
  for n in "${SELECTED[@]}"; do
    use_node "$n"
    if pid="$(our_pid)"; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for n in "${SELECTED[@]}"; do
    use_node "$n"
    daemon_stop "broker $n"
  done
}

cmd_status() {
  local n pid rc=0
  select_nodes "$@"
  for n in "${SELECTED[@]}"; do
    use_node "$n"
    local prefix=""
    ((NODES > 1)) && prefix="node $n: "
    if pid="$(our_pid)"; then
      local metrics="no metrics on $HOST:$METRICS_PORT"
      port_open "$METRICS_PORT" && metrics="metrics http://$HOST:$METRICS_PORT/metrics"
      if port_open; then
        echo "${prefix}running (pid $pid, $BOOTSTRAP, $metrics)"
      else
        echo "${prefix}running (pid $pid, not listening on $BOOTSTRAP yet)"
      fi
    else
      echo "${prefix}stopped"
      rc=1
    fi
  done
  return $rc
}

cmd_reset() {
  cmd_stop
  rm -rf "$RUN_DIR/kafka"
  log "deleted ${RUN_DIR#"$ROOT"/}/kafka (data dirs and rendered configs)"
}

use_node 1
command="${1:-}"
(($#)) && shift
case "$command" in
  fetch) cmd_fetch ;;
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status "$@" ;;
  reset) cmd_reset ;;
  *)
    echo "usage: $0 {fetch|start|stop|status|reset} [NODE ...]" >&2
    exit 2
    ;;
esac
