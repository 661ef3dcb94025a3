# Sourced by the scripts that run one background server (kafka.sh, prometheus.sh): start it
# in a session of its own with its exact pid in a file, find it again, stop it.
# The caller sets PID_FILE and STOP_TIMEOUT and defines log and die.

# Process exists and is not a zombie (a detached process is reparented; a zombie still
# passes `kill -0` until something reaps it).
alive() {
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)"
  [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# The pid in $PID_FILE if that process is alive and its command line matches (grep ARGS...).
pid_if_ours() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$@" || return 1
  printf '%s\n' "$pid"
}

# daemon_launch NAME OUT_FILE CMD...: run CMD detached, in its own session; print its pid.
# The inner shell writes its own pid and `exec`s CMD, so the pid file is exact.
daemon_launch() {
  local name="$1" out="$2"
  shift 2
  # shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
  setsid nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' "$name-launch" "$PID_FILE" "$@" </dev/null >>"$out" 2>&1 &
  for _ in $(seq 50); do
    [[ -s "$PID_FILE" ]] && break
    sleep 0.1
  done
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  printf '%s\n' "$pid"
}

# daemon_stop NAME: SIGTERM the process our_pid names, SIGKILL after STOP_TIMEOUT seconds.
daemon_stop() {
  local name="$1" pid
  if ! pid="$(our_pid)"; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while alive "$pid" && ((SECONDS < deadline)); do
    sleep 0.2
  done
  if alive "$pid"; then
    log "still alive after ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    alive "$pid" && die "pid $pid survived SIGKILL"
  fi
  rm -f "$PID_FILE"
  log "stopped"
}
