#!/usr/bin/env bash
# Debian packages, installed only when missing, in groups so that each target installs only
# what it uses (a first `make demo` does not wait for Chromium or the container tools):
#
#   scripts/system-deps.sh [GROUP ...]     (no group: stack)
#     stack   what `make up` and `make demo` run: curl, Prometheus (promtool comes with it)
#     test    what the tests use beyond the stack: PostgreSQL, Chromium and a font for it
#     image   what `make image` and the image test use: buildah, podman, runc, catatonit
#             (podman's --init), mmdebstrap (the base image when no registry is reachable)
#
# Java 17, Maven and Python 3.11 are expected on the machine already (see README).
set -euo pipefail

declare -A PACKAGE_GROUPS=(
  [stack]="curl prometheus"
  [test]="postgresql chromium fonts-dejavu-core"
  [image]="buildah podman runc catatonit mmdebstrap"
)

packages=()
for group in "${@:-stack}"; do
  [[ -n "${PACKAGE_GROUPS[$group]:-}" ]] || { echo "system-deps: unknown group $group (stack, test, image)" >&2; exit 2; }
  # shellcheck disable=SC2206  # a group is a list of words
  packages+=(${PACKAGE_GROUPS[$group]})
done

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "system-deps: installing ${missing[*]}" >&2
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's prometheus package starts its own service on :9090; the stack runs its own.
if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null; then
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
