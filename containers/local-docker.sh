#!/usr/bin/env bash
# Docker on this machine for tests and laptops without a registry. Idempotent: installs Debian's docker.io
# and debootstrap if missing, starts dockerd if it is not answering, and builds the base image
# localbase:bookworm from a debootstrap rootfs (no registry is reachable here, so no `docker pull`).
# Needs root. Usage: containers/local-docker.sh [start|stop]   (prints the base image name when ready)
set -euo pipefail
action=${1:-start}
base=${ESGRPO_DOCKER_BASE:-localbase:bookworm}
if [ "$action" = stop ]; then
  pkill -x dockerd || true
  exit 0
fi
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
  apt-get clean  # the downloaded .debs are not needed again
fi
if ! docker info >/dev/null 2>&1; then
  mkdir -p /var/log/docker
  nohup dockerd >/var/log/docker/dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/docker/dockerd.log" >&2; exit 1; }
fi
if ! docker image inspect "$base" >/dev/null 2>&1; then
  mirror=$( (grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d \
             2>/dev/null || true) | head -1 | awk '{print $2}')
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  echo "building $base from a debootstrap rootfs (${mirror:-http://deb.debian.org/debian})" >&2
  debootstrap --variant=minbase bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
  tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
fi
echo "$base"
