# dockyard-local/rust:<version>-bookworm: a Rust builder from Debian bookworm packages plus the
# host's rustup toolchain, passed as the named build context "toolchain" (its sysroot):
#   docker buildx build --build-context toolchain="$(rustc --print sysroot)" -f rust.Dockerfile .
# Built by images.sh; the docs (share/) are left out.
ARG BASE_IMAGE=dockyard-local/debian:bookworm
FROM ${BASE_IMAGE}
ARG DEBIAN_MIRROR=http://deb.debian.org/debian
# Versions are not pinned: the image follows bookworm and its updates, like the official ones.
# hadolint ignore=DL3008
RUN set -eux; \
    echo "deb ${DEBIAN_MIRROR} bookworm main" > /etc/apt/sources.list; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates gcc libc6-dev pkg-config; \
    rm -rf /var/lib/apt/lists/*
# `toolchain` is a named build context (--build-context), not a stage.
# hadolint ignore=DL3022
COPY --from=toolchain bin/ /usr/local/rust/bin/
# hadolint ignore=DL3022
COPY --from=toolchain lib/ /usr/local/rust/lib/
# hadolint ignore=DL3022
COPY --from=toolchain libexec/ /usr/local/rust/libexec/
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN set -eux; \
    mkdir -p "$CARGO_HOME/bin"; \
    chmod -R a+w "$CARGO_HOME"; \
    cargo --version; \
    rustc --version
CMD ["bash"]
