#!/usr/bin/env bash
# One progress line per setup step: `scripts/step.sh NAME COMMAND` runs COMMAND (a shell
# command line) with its output appended to ${SETUP_LOG} and prints
#   setup: NAME ........ 12 s
# or, when it fails, the end of its output. The Makefile's setup targets use it.
set -euo pipefail

[[ $# -eq 2 ]] || { echo "usage: $0 NAME COMMAND" >&2; exit 2; }
name="$1" command="$2"
log_file="${SETUP_LOG:-.run/logs/setup.log}"
mkdir -p "$(dirname "$log_file")"

pad=$((56 - ${#name}))
((pad >= 2)) || pad=2
printf 'setup: %s %s' "$name" "$(printf '%*s' "$pad" '' | tr ' ' .)" >&2
printf '=== %s %s: %s\n' "$(date -u +%FT%TZ)" "$name" "$command" >>"$log_file"
start=$SECONDS
if bash -c "$command" >>"$log_file" 2>&1; then
  printf ' %3d s\n' $((SECONDS - start)) >&2
else
  status=$?
  printf ' failed after %d s (exit %d); the end of %s:\n' $((SECONDS - start)) "$status" "$log_file" >&2
  tail -n 25 "$log_file" >&2
  exit "$status"
fi
