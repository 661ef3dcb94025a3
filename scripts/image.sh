#!/usr/bin/env bash
# The container image of the four services (Dockerfile), built and run with Debian's buildah
# and podman: no Docker engine, no registry needed. Everything lives in the project's own
# container storage, ${IMAGE_STORE} (images, layers, containers), so the machine's own
# podman storage is untouched and `make clean` removes all of it.
#
# Usage: scripts/image.sh {build|base|run|podman|down|clean}
#   build           the base if missing, then the image ${IMAGE} from the Dockerfile; layers
#                   are cached, so a rebuild after a code change reinstalls no dependency
#   base            the Dockerfile's base image (its FROM), if missing: pulled from its registry,
#                   or, when no registry is reachable, made with mmdebstrap (Debian bookworm with
#                   python3, python3-venv, ca-certificates; the root filesystem is cached in
#                   ${CACHE_DIR}/image) and tagged with the FROM name
#   run [OPT...] MODULE
#                   podman run of ${IMAGE} with the flags this machine needs (runc, explicit
#                   ulimits, host network, an init, a read-only root filesystem); OPTs go to
#                   podman run, MODULE is the service: services.ingest|fetcher|classifier|sink
#   podman ARG...   podman on the project's storage, e.g. `scripts/image.sh podman images`
#   down            stop and remove every container of the project's storage
#   clean           down, then remove the images and the storage (not the cached root filesystem)
#
# Environment: IMAGE (localhost/tagstream:latest), IMAGE_STORE (.run/containers),
#   CACHE_DIR (.cache), IMAGE_BASE_SOURCE (auto | registry | mmdebstrap),
#   DEBIAN_MIRROR (http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR
#   (http://deb.debian.org/debian-security), HOST_CA_BUNDLE (/etc/ssl/certs/ca-certificates.crt)
# Needs root (or sudo) and the `image` group of scripts/system-deps.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$ROOT/$1" ;; esac; }
IMAGE="${IMAGE:-localhost/tagstream:latest}"
STORE="$(abspath "${IMAGE_STORE:-.run/containers}")"
CACHE_DIR="$(abspath "${CACHE_DIR:-.cache}")"
BASE_SOURCE="${IMAGE_BASE_SOURCE:-auto}"
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
HOST_CA_BUNDLE="${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
PULL_TIMEOUT=120

log() { printf 'image.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

# Storage of our own; cgroupfs and file events because no systemd runs here.
PODMAN=(podman --root "$STORE/storage" --runroot "$STORE/run" --storage-driver overlay
  --cgroup-manager cgroupfs --events-backend file)
pm() { $SUDO "${PODMAN[@]}" "$@"; }

need_tools() {
  local tool
  for tool in podman buildah "$@"; do
    command -v "$tool" >/dev/null || die "$tool not found: scripts/system-deps.sh image installs it"
  done
}

# The Dockerfile's base, fully qualified as podman stores it (python:3.11-slim-bookworm →
# docker.io/library/python:3.11-slim-bookworm). Every stage starts from the same one.
base_name() {
  local name
  name="$(awk 'toupper($1) == "FROM" { print $2; exit }' Dockerfile)"
  [[ -n "$name" ]] || die "no FROM in Dockerfile"
  case "$name" in
    */*/*) ;;
    */*) name="docker.io/$name" ;;
    *) name="docker.io/library/$name" ;;
  esac
  printf '%s\n' "$name"
}

# Debian's root filesystem for the stand-in base, cached by what goes into it.
debian_rootfs() {
  local key tarball
  key="$(printf '%s\n' "$DEBIAN_SUITE" "$BASE_PACKAGES" "$DEBIAN_MIRROR" "$DEBIAN_SECURITY_MIRROR" |
    sha256sum | cut -c1-12)"
  tarball="$CACHE_DIR/image/debian-$DEBIAN_SUITE-$key.tar"
  if [[ ! -f "$tarball" ]]; then
    command -v mmdebstrap >/dev/null || die "mmdebstrap not found: scripts/system-deps.sh image installs it"
    log "making the base's root filesystem with mmdebstrap ($DEBIAN_SUITE: $BASE_PACKAGES)"
    mkdir -p "$(dirname "$tarball")"
    # Mirrors on the command line: without them mmdebstrap reads sources from a non-terminal stdin.
    $SUDO mmdebstrap --quiet --format=tar --variant=minbase --include="$BASE_PACKAGES" "$DEBIAN_SUITE" "$tarball.tmp" \
      "deb $DEBIAN_MIRROR $DEBIAN_SUITE main" \
      "deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main" \
      "deb $DEBIAN_SECURITY_MIRROR $DEBIAN_SUITE-security main" </dev/null
    mv "$tarball.tmp" "$tarball"
  fi
  printf '%s\n' "$tarball"
}

cmd_base() {
  need_tools
  local base
  base="$(base_name)"
  if pm image exists "$base"; then
    log "base $base: present"
    return 0
  fi
  if [[ "$BASE_SOURCE" != mmdebstrap ]]; then
    log "base $base: pulling"
    local error
    if error="$(timeout "$PULL_TIMEOUT" $SUDO "${PODMAN[@]}" pull --quiet "$base" 2>&1 >/dev/null)"; then
      log "base $base: pulled"
      return 0
    fi
    error="$(tail -n 1 <<<"$error" | cut -c1-160)"
    [[ "$BASE_SOURCE" == auto ]] || die "could not pull $base: $error"
    log "base $base: no registry reachable ($error); making it from Debian"
  fi
  local tarball
  tarball="$(debian_rootfs)"
  # The official image's environment, as far as the Dockerfile relies on it: `python` on the
  # PATH (python-is-python3), a UTF-8 locale.
  pm import --quiet \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --change "LABEL org.opencontainers.image.description=tagstream-stand-in-base:mmdebstrap-$DEBIAN_SUITE" \
    "$tarball" "$base" >/dev/null
  log "base $base: imported from ${tarball#"$ROOT"/}"
}

cmd_build() {
  need_tools
  mkdir -p "$STORE"
  cmd_base
  [[ -f "$HOST_CA_BUNDLE" ]] || die "no CA bundle at $HOST_CA_BUNDLE (HOST_CA_BUNDLE=...)"
  log "building $IMAGE"
  local t0=$SECONDS previous
  previous="$(pm image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
  # chroot isolation: no daemon, no user namespaces or cgroups needed. The host's CA bundle
  # is mounted for the build's downloads only (a mount is never part of a layer).
  pm build --quiet --isolation chroot --pull=never --layers --format docker \
    --volume "$HOST_CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro" \
    --tag "$IMAGE" --file Dockerfile . >/dev/null
  # The image this build replaced under its tag (the build stage's layers stay: they are the cache).
  if [[ -n "$previous" && "$previous" != "$(pm image inspect --format '{{.Id}}' "$IMAGE")" ]]; then
    pm rmi "$previous" >/dev/null 2>&1 || log "kept the previous $IMAGE ($previous): a container uses it"
  fi
  log "built $IMAGE in $((SECONDS - t0)) s"
}

cmd_run() {
  need_tools runc
  [[ $# -ge 1 ]] || die "usage: $0 run [podman run options] MODULE"
  local module="${*: -1}"
  # runc: crun fails on this machine's hybrid cgroups. The ulimits: podman's defaults exceed
  # the sandbox's hard limits. No healthcheck: podman schedules it with systemd timers, and
  # no systemd runs here (probe /healthz on the service's metrics port instead).
  pm run --runtime runc --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 \
    --network host --init --read-only --no-healthcheck "${@:1:$#-1}" "$IMAGE" "$module"
}

cmd_down() {
  [[ -d "$STORE/storage" ]] && command -v podman >/dev/null || return 0
  local ids
  ids="$(pm ps --all --quiet)"
  if [[ -n "$ids" ]]; then
    # shellcheck disable=SC2086  # one id per word
    pm rm --force --time 10 $ids >/dev/null
    log "removed $(wc -w <<<"$ids") container(s)"
  fi
}

cmd_clean() {
  cmd_down
  if [[ -d "$STORE/storage" ]] && command -v podman >/dev/null; then
    pm rmi --all --force >/dev/null 2>&1 || true
  fi
  # The overlay driver keeps mounts under its directory: unmount them, deepest first.
  local mount
  awk -v store="$STORE" 'index($5, store "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r mount; do $SUDO umount "$mount" || $SUDO umount --lazy "$mount"; done
  if [[ -e "$STORE" ]]; then
    $SUDO rm -rf "$STORE"
    log "removed ${STORE#"$ROOT"/}"
  fi
}

case "${1:-}" in
  build) cmd_build ;;
  base) cmd_base ;;
  run) shift; cmd_run "$@" ;;
  podman) shift; need_tools; pm "$@" ;;
  down) cmd_down ;;
  clean) cmd_clean ;;
  *)
    echo "usage: $0 {build|base|run [OPT...] MODULE|podman ARG...|down|clean}" >&2
    exit 2
    ;;
esac
