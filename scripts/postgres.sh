#!/usr/bin/env bash
# A throwaway PostgreSQL cluster under .run/postgres, for the sink's tests and local use.
# Installs nothing: it needs Debian's `postgresql` package (initdb, pg_ctl) on the machine.
#
# Usage: scripts/postgres.sh {start|stop|status|url}
#   start   initialise the cluster if there is none, start it on a free loopback port, print its URL
#   stop    fast shutdown; leaves no process behind
#   status  print the URL and exit 0 if it runs, else exit 1
#   url     the URL of the running cluster (database and user `tagstream`)
#
# The cluster listens on 127.0.0.1 only, trusts every local connection and runs with
# fsync off: it is for tests and demos, never for data worth keeping. Run as root, the
# server runs as the `postgres` user (PostgreSQL refuses to run as root).
# PG_DURABLE=1 starts it with fsync and synchronous commit on, as a real server: for
# benchmarks of what a commit costs (bench/bench_sink.py runs one in a PG_DIR of its own).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PG_DIR="$(realpath -m "${PG_DIR:-.run/postgres}")"
DATA="$PG_DIR/data"
LOG_FILE="$PG_DIR/postgres.log"
PORT_FILE="$PG_DIR/port"
NAME=tagstream

log() { printf 'postgres: %s\n' "$*" >&2; }

pg_bin() {
  if [[ -n "${PG_BIN:-}" ]]; then echo "$PG_BIN"; return; fi
  local dir
  dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
  if [[ -z "$dir" || ! -x "$dir/initdb" ]]; then
    log "no PostgreSQL server binaries in /usr/lib/postgresql: install Debian's postgresql package"
    exit 1
  fi
  echo "$dir"
}

BIN="$(pg_bin)"

as_owner() {  # run a server command as the cluster's owner
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

running() { [[ -f "$DATA/PG_VERSION" ]] && as_owner "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; }

url() { echo "postgresql://$NAME@127.0.0.1:$(cat "$PORT_FILE")/$NAME"; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

init_cluster() {
  mkdir -p "$PG_DIR"
  if [[ $(id -u) -eq 0 ]]; then
    chown postgres:postgres "$PG_DIR"
    if ! runuser -u postgres -- test -w "$PG_DIR"; then
      log "the postgres user cannot reach $PG_DIR (a parent directory is not searchable); set PG_DIR"
      exit 1
    fi
  fi
  log "initialising a cluster in $DATA"
  as_owner "$BIN/initdb" -D "$DATA" -U "$NAME" --auth=trust --encoding=UTF8 --no-locale >"$PG_DIR/initdb.log" 2>&1 ||
    { cat "$PG_DIR/initdb.log" >&2; exit 1; }
}

cmd_start() {
  if running; then
    url
    return 0
  fi
  [[ -f "$DATA/PG_VERSION" ]] || init_cluster
  local port durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  [[ "${PG_DURABLE:-0}" != 1 ]] || durability=""
  port="$(free_port)"
  echo "$port" >"$PORT_FILE"
  [[ $(id -u) -ne 0 ]] || { touch "$LOG_FILE"; chown postgres:postgres "$LOG_FILE"; }
  as_owner "$BIN/pg_ctl" start -D "$DATA" -l "$LOG_FILE" -w -t 60 -s \
    -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories='$PG_DIR' $durability" ||
    { log "did not start; the end of its log:"; tail -n 20 "$LOG_FILE" >&2; exit 1; }
  if ! "$BIN/psql" -h 127.0.0.1 -p "$port" -U "$NAME" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$NAME'" |
    grep -q 1; then
    "$BIN/createdb" -h 127.0.0.1 -p "$port" -U "$NAME" "$NAME"
  fi
  log "running on 127.0.0.1:$port"
  url
}

cmd_stop() {
  if running; then
    as_owner "$BIN/pg_ctl" stop -D "$DATA" -m fast -w -t 30 -s
    log "stopped"
  fi
}

cmd_status() {
  if running; then
    url
  else
    echo "stopped"
    return 1
  fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  url) running && url ;;
  *) echo "usage: $0 {start|stop|status|url}" >&2; exit 2 ;;
esac
