# One image per service, from one multi-stage build (factor 5: build → release → run):
#   docker buildx build --target catalog --build-arg RELEASE_ID=$(git rev-parse --short HEAD) \
#     -t ghcr.io/dockyard/catalog:dev --load .
# Stages: builder (the toolchain; the four binaries, compiled with BuildKit cache mounts for
# cargo's registry and target directory, so a rebuild after a change compiles only the crates
# that changed) → one small runtime stage per service: no shell, no package manager, non-root;
# the binary's own `healthcheck` command is the container health check.
#
# The base images are build arguments, defaulting to the upstream ones. On a host without a
# registry, `cargo xtask images` builds local equivalents from Debian packages and
# deploy/offline.env names them (BUILDER_IMAGE, RUNTIME_IMAGE).
#
# Behind a TLS-inspecting proxy, hand the proxy's CA bundle to the one step that fetches
# crates as a BuildKit secret: `--secret id=ca,src=$SSL_CERT_FILE`. It is mounted for that
# step only and never written to a layer; without it, the public CAs of the builder are used.

# Debian 12 (bookworm) like the runtime base, so the binaries link against the glibc they run
# with. Rust 1.95 ≥ the workspace's rust-version (1.88) and reads lockfile v4.
ARG BUILDER_IMAGE=rust:1.95-slim-bookworm
# glibc, libgcc and CA certificates only; uid 65532.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
COPY . .
# The registry and target caches live in BuildKit's cache, not in a layer; the binaries are
# copied out of the target cache into the layer. `--locked`: exactly Cargo.lock's versions.
RUN --mount=type=cache,id=dockyard-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=dockyard-target,target=/src/target \
    --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then \
      export CARGO_HTTP_CAINFO=/run/secrets/ca SSL_CERT_FILE=/run/secrets/ca; \
    fi \
    && cargo build --release --locked --bin catalog --bin order --bin gateway --bin console \
    && mkdir -p /out \
    && cp target/release/catalog target/release/order target/release/gateway \
          target/release/console /out/

FROM ${RUNTIME_IMAGE} AS runtime
ARG RELEASE_ID=dev
# RELEASE_ID is read when the process starts, not compiled in: one build serves every release.
ENV RELEASE_ID=${RELEASE_ID} \
    LOG_FORMAT=json \
    HOST=0.0.0.0 \
    PORT=8080
USER 65532:65532
EXPOSE 8080

# Health: every second while starting (`--start-interval`, Docker Engine 25 or later), so a
# container is healthy as soon as its binary is ready; then every 10 s.
FROM runtime AS catalog
COPY --from=builder /out/catalog /app/catalog
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --start-interval=1s --retries=3 CMD ["/app/catalog", "healthcheck"]
ENTRYPOINT ["/app/catalog"]
CMD ["serve"]

FROM runtime AS order
COPY --from=builder /out/order /app/order
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --start-interval=1s --retries=3 CMD ["/app/order", "healthcheck"]
ENTRYPOINT ["/app/order"]
CMD ["serve"]

FROM runtime AS gateway
COPY --from=builder /out/gateway /app/gateway
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --start-interval=1s --retries=3 CMD ["/app/gateway", "healthcheck"]
ENTRYPOINT ["/app/gateway"]
CMD ["serve"]

FROM runtime AS console
COPY --from=builder /out/console /app/console
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --start-interval=1s --retries=3 CMD ["/app/console", "healthcheck"]
ENTRYPOINT ["/app/console"]
CMD ["serve"]
