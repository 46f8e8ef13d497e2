#!/usr/bin/env bash
# Installs and starts a Docker Engine with Compose v2 and buildx on a Debian bookworm host that
# has none running (the reference machine and CI): Debian's engine, and Compose and buildx from
# Debian's next release (trixie), pinned at priority 100 so that nothing else is taken from it.
# `cargo xtask compose-test` runs it when `docker info` does not answer. Needs root.
#
# Idempotent: packages already installed are kept, and an engine that answers is left alone.
# The engine's log goes to /var/log/dockerd.log; it keeps running after this script (stop it
# with `pkill dockerd`).
set -euo pipefail

docker=/usr/bin/docker
log() { printf '==> %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  echo "installing and starting the Docker engine needs root" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! command -v dockerd >/dev/null || [[ ! -x /usr/libexec/docker/cli-plugins/docker-compose ]] \
  || [[ ! -x /usr/libexec/docker/cli-plugins/docker-buildx ]]; then
  if [[ ! -f /etc/apt/sources.list.d/trixie.sources ]]; then
    log "adding Debian trixie as a low-priority source (Compose v2 and buildx)"
    awk 'BEGIN{RS="";ORS="\n\n"} !/security/' /etc/apt/sources.list.d/debian.sources \
      | sed 's/^Suites:.*/Suites: trixie/' >/etc/apt/sources.list.d/trixie.sources
    printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' >/etc/apt/preferences.d/trixie
  fi
  log "installing docker.io, iptables, docker-compose and docker-buildx"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io iptables >/dev/null
  apt-get install -y -qq -t trixie docker-compose docker-buildx >/dev/null
fi
if ! command -v mmdebstrap >/dev/null; then
  log "installing mmdebstrap (the local base images are built with it)"
  apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

if ! "$docker" info >/dev/null 2>&1; then
  log "starting dockerd"
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 60); do
    "$docker" info >/dev/null 2>&1 && break
    sleep 1
  done
fi
"$docker" info --format 'engine {{.ServerVersion}}, storage {{.Driver}}'
"$docker" compose version
"$docker" buildx version
