#!/usr/bin/env bash
# Builds the local, registry-free images the Dockyard stack can run on when no container
# registry is reachable. Everything comes from Debian bookworm packages (deb.debian.org over
# plain HTTP) plus, for the builder, the host's own Rust toolchain. No image is pulled.
#
# Each tag names what it is (dockyard-local/..., never an upstream name), and an image that
# already exists is left alone (`docker image inspect TAG` succeeds -> "exists"); remove it
# with `docker image rm TAG` to rebuild it.
#
#   dockyard-local/debian:bookworm
#       The base of all the others: `mmdebstrap --variant=minbase bookworm`, imported with
#       `docker import`; docs, man pages and translations excluded by dpkg (as in the slim
#       images). Needs mmdebstrap on the host (run as root).
#   dockyard-local/rust:<host rustc major.minor>-bookworm      (rust.Dockerfile)
#       A builder: gcc, libc6-dev, pkg-config, ca-certificates from Debian, plus the host's
#       toolchain ($(rustc --print sysroot): bin/, lib/, libexec/, not the docs) in
#       /usr/local/rust; CARGO_HOME=/usr/local/cargo; both bin dirs on PATH.
#   dockyard-local/runtime-cc:bookworm                        (runtime-cc.Dockerfile)
#       A distroless-cc-like runtime: no shell, no package manager; the files of libc6 and
#       libgcc-s1, tzdata, netbase, the CA bundle at /etc/ssl/certs/ca-certificates.crt,
#       /etc/passwd and /etc/group with root and nonroot (65532), /etc/nsswitch.conf,
#       /tmp (1777). Runs as 65532:65532.
#   dockyard-local/postgres:15-bookworm                       (postgres.Dockerfile)
#       Debian's postgresql-15 with postgres-entrypoint.sh, which honours POSTGRES_USER,
#       POSTGRES_PASSWORD, POSTGRES_DB and /docker-entrypoint-initdb.d/*.sql|*.sql.gz|*.sh
#       like the official image; PGDATA=/var/lib/postgresql/data; listens on *:5432.
#   dockyard-local/rabbitmq:3.10-bookworm                     (rabbitmq.Dockerfile)
#       Debian's rabbitmq-server 3.10 with rabbitmq-entrypoint.sh, which honours
#       RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS (and _VHOST); data in /var/lib/rabbitmq;
#       runs in the foreground as the rabbitmq user; AMQP on 5672, all interfaces.
#   dockyard-local/prometheus:2.42-bookworm                   (prometheus.Dockerfile)
#       Debian's prometheus (no recommends), entrypoint /usr/bin/prometheus, runs as the
#       prometheus user, data in /prometheus.
#
# Usage: deploy/offline/images.sh [debian|rust|runtime-cc|postgres|rabbitmq|prometheus]...
#        (no argument: all of them, in that order; the base image is built first if missing)
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DOCKER (default docker).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
docker="${DOCKER:-docker}"

base_tag="dockyard-local/debian:bookworm"
runtime_tag="dockyard-local/runtime-cc:bookworm"
postgres_tag="dockyard-local/postgres:15-bookworm"
rabbitmq_tag="dockyard-local/rabbitmq:3.10-bookworm"
prometheus_tag="dockyard-local/prometheus:2.42-bookworm"

log() { printf '==> %s\n' "$*" >&2; }

exists() {
  if "$docker" image inspect "$1" >/dev/null 2>&1; then
    printf '%s: exists\n' "$1"
    return 0
  fi
  return 1
}

# docker build of one Dockerfile in this directory (the context is this directory, small).
build() {
  local tag="$1" dockerfile="$2" description="$3"
  shift 3
  log "building $tag from $dockerfile"
  local start=$SECONDS
  "$docker" buildx build --load \
    --label "org.opencontainers.image.description=$description" \
    --build-arg "DEBIAN_MIRROR=$mirror" \
    --build-arg "BASE_IMAGE=$base_tag" \
    -f "$here/$dockerfile" -t "$tag" "$@" "$here"
  log "$tag built in $((SECONDS - start)) s"
}

build_debian() {
  exists "$base_tag" && return 0
  command -v mmdebstrap >/dev/null || { echo "mmdebstrap is needed for $base_tag" >&2; return 1; }
  local dir start=$SECONDS
  dir="$(mktemp -d)"
  # Removed on return (and on any exit while it runs).
  # shellcheck disable=SC2064  # expand "$dir" now, on purpose
  trap "rm -rf -- '$dir'" EXIT
  log "mmdebstrap --variant=minbase bookworm -> $dir"
  # Like debian:*-slim: dpkg leaves out docs (but the copyright files), man pages and
  # translations, here and in every image built FROM this one (the options end up in the
  # rootfs's /etc/dpkg/dpkg.cfg.d/).
  mmdebstrap --variant=minbase \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    bookworm "$dir" "$mirror"
  # The rootfs points at the same mirror over plain HTTP (mmdebstrap writes the given URL).
  tar -C "$dir" -c . | "$docker" import \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'LABEL org.opencontainers.image.description="Debian bookworm minbase (mmdebstrap), local build, not the official debian image"' \
    - "$base_tag" >/dev/null
  rm -rf -- "$dir"
  trap - EXIT
  log "$base_tag imported in $((SECONDS - start)) s"
}

build_rust() {
  local sysroot version tag
  command -v rustc >/dev/null || { echo "rustc is needed on the host for the rust image" >&2; return 1; }
  sysroot="$(rustc --print sysroot)"
  # "rustc 1.95.0 (59807616e 2026-04-14)" -> 1.95
  version="$(rustc --version | awk '{print $2}' | cut -d. -f1,2)"
  tag="dockyard-local/rust:${version}-bookworm"
  exists "$tag" && return 0
  for d in bin lib libexec; do
    [[ -d "$sysroot/$d" ]] || { echo "$sysroot/$d is missing" >&2; return 1; }
  done
  # The toolchain is a second, named build context (buildx --build-context); the Dockerfile
  # copies only its bin/, lib/ and libexec/.
  build "$tag" rust.Dockerfile \
    "Rust $(rustc --version | awk '{print $2}') builder on Debian bookworm: the host's rustup toolchain plus gcc/libc6-dev/pkg-config; local build, not the official rust image" \
    --build-context "toolchain=$sysroot"
}

build_runtime_cc() {
  exists "$runtime_tag" && return 0
  build "$runtime_tag" runtime-cc.Dockerfile \
    "Distroless-cc-like runtime from Debian bookworm packages (libc6, libgcc-s1, CA bundle, tzdata; no shell), uid 65532; local build, not gcr.io/distroless"
}

build_postgres() {
  exists "$postgres_tag" && return 0
  build "$postgres_tag" postgres.Dockerfile \
    "Debian bookworm postgresql-15 with an entrypoint honouring POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB; local build, not the official postgres image"
}

build_rabbitmq() {
  exists "$rabbitmq_tag" && return 0
  build "$rabbitmq_tag" rabbitmq.Dockerfile \
    "Debian bookworm rabbitmq-server 3.10 with an entrypoint honouring RABBITMQ_DEFAULT_USER/RABBITMQ_DEFAULT_PASS; local build, not the official rabbitmq image"
}

build_prometheus() {
  exists "$prometheus_tag" && return 0
  build "$prometheus_tag" prometheus.Dockerfile \
    "Debian bookworm prometheus 2.42 package; local build, not prom/prometheus"
}

main() {
  local targets=("$@")
  if ((${#targets[@]} == 0)); then
    targets=(debian rust runtime-cc postgres rabbitmq prometheus)
  fi
  local t
  for t in "${targets[@]}"; do
    case "$t" in
      debian | rust | runtime-cc | postgres | rabbitmq | prometheus) ;;
      *) echo "unknown image: $t (debian|rust|runtime-cc|postgres|rabbitmq|prometheus)" >&2; exit 2 ;;
    esac
  done
  # Every other image is built FROM the base.
  build_debian
  for t in "${targets[@]}"; do
    case "$t" in
      debian) ;;
      rust) build_rust ;;
      runtime-cc) build_runtime_cc ;;
      postgres) build_postgres ;;
      rabbitmq) build_rabbitmq ;;
      prometheus) build_prometheus ;;
    esac
  done
}

main "$@"
