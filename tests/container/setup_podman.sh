#!/usr/bin/env bash
# Prepare a machine to build and run inferd's image with podman, for tests/container.
#
#   tests/container/setup_podman.sh          # install what is missing, build the stand-in base once
#   eval "$(tests/container/setup_podman.sh --env)"   # only print the environment podman needs
#
# Idempotent: a second run finds everything in place and takes about a second.
# It writes nothing to /etc: podman reads the project's own containers.conf and storage.conf
# through CONTAINERS_CONF and CONTAINERS_STORAGE_CONF.
#
# No registry can be reached from CI, so `FROM python:3.11-slim` is served by a local stand-in:
# Debian bookworm (debootstrap, minbase) with Debian's python3 and a venv at /usr/local, the
# layout of the official image (python, pip and site-packages under /usr/local). The stand-in
# also trusts the CA bundle that the host's pip trusts, so pip inside a build reaches the index
# the same way the host does, and the production Dockerfile stays standard.
#
# Environment knobs: DEBIAN_MIRROR (default: the mirror apt uses), INFERD_CI_CACHE (default
# /var/cache/inferd-ci), PIP_CA_BUNDLE (default: pip's configured `cert`, else the system bundle).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BASE_TAG="docker.io/library/python:3.11-slim"
# Bump when the recipe below changes, so cached stand-ins are rebuilt.
STANDIN_REVISION="1"

print_env() {
  echo "export CONTAINERS_CONF='$HERE/containers.conf'"
  echo "export CONTAINERS_STORAGE_CONF='$HERE/storage.conf'"
}

if [[ "${1:-}" == "--env" ]]; then
  print_env
  exit 0
fi

export CONTAINERS_CONF="$HERE/containers.conf"
export CONTAINERS_STORAGE_CONF="$HERE/storage.conf"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[setup_podman %5ss] %s\n' "$SECONDS" "$*" >&2; }

if [[ "$(id -u)" != 0 ]]; then
  log "needs root (apt-get, debootstrap and rootful podman)"
  exit 3
fi

# --- packages -------------------------------------------------------------------------------
# netavark + iptables give containers a bridge network with published ports; runc because crun
# refuses hybrid cgroup layouts; debootstrap for the stand-in base; prometheus for the scrape test.
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
[[ -x /usr/lib/podman/netavark ]] || need+=(netavark)
[[ -x /usr/lib/podman/aardvark-dns ]] || need+=(aardvark-dns)
command -v iptables >/dev/null || need+=(iptables)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v prometheus >/dev/null || need+=(prometheus)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  # Try the package lists we have first; refresh them only if that fails (stale lists).
  if ! apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; then
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  fi
  # The Debian package starts a prometheus service where systemd runs; the tests start their own.
  log "installed"
fi

hard_nofile="$(ulimit -Hn)"
hard_nproc="$(ulimit -Hu)"
for pair in "nofile:$hard_nofile" "nproc:$hard_nproc"; do
  name="${pair%%:*}"
  hard="${pair#*:}"
  if [[ "$hard" != unlimited ]] && ((hard < 8192)); then
    log "hard $name limit is $hard; lower default_ulimits in $HERE/containers.conf to fit"
    exit 4
  fi
done

# --- stand-in base image ----------------------------------------------------------------------
have_revision="$(podman image inspect --format '{{ index .Labels "org.inferd.standin" }}' \
  "$BASE_TAG" 2>/dev/null || true)"
if [[ "$have_revision" == "$STANDIN_REVISION" ]]; then
  log "stand-in $BASE_TAG present (revision $STANDIN_REVISION)"
  exit 0
fi

mirror="${DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
  mirror="$(grep -hoE '(URIs:|^deb) +https?://[^ ]+/debian/?( |$)' \
    /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | awk '{print $2}' | head -n1 || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
fi

ca_bundle="${PIP_CA_BUNDLE:-$(pip3 config get global.cert 2>/dev/null || true)}"
ca_bundle="${ca_bundle:-/etc/ssl/certs/ca-certificates.crt}"

cache="${INFERD_CI_CACHE:-/var/cache/inferd-ci}"
rootfs="$cache/bookworm-rootfs"
mkdir -p "$cache"
rm -rf "$rootfs"
log "debootstrap bookworm from $mirror"
debootstrap --variant=minbase \
  --include=python3,python3-venv,ca-certificates,netbase,tzdata \
  bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
  || { tail -n 20 "$cache/debootstrap.log" >&2; exit 5; }

log "python venv at /usr/local"
chroot "$rootfs" /usr/bin/python3 -m venv /usr/local
install -m 0644 "$ca_bundle" "$rootfs/usr/local/share/ca-bundle.crt"
# The stand-in only: pip trusts the host's CA bundle, as the host's pip does.
printf '[global]\ncert = /usr/local/share/ca-bundle.crt\n' >"$rootfs/etc/pip.conf"
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin

log "importing as $BASE_TAG"
tar -C "$rootfs" -c . | podman import \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL org.inferd.standin=$STANDIN_REVISION" \
  --change 'CMD ["python3"]' \
  - "$BASE_TAG" >/dev/null 2>&1
rm -rf "$rootfs"
log "stand-in $BASE_TAG ready"
