# syntax=docker/dockerfile:1
# One image per service, from one multi-stage build (factor 5: build → release → run):
#   docker build --target catalog --build-arg RELEASE_ID=$(git rev-parse --short HEAD) -t dockyard/catalog .
# Stages: chef (the toolchain + cargo-chef) → planner (dependency recipe) → builder (dependencies
# cooked once and cached while only our code changes, then the four binaries) → one small
# runtime stage per service: distroless, non-root, no shell, no curl; the binary's own
# `healthcheck` command is the container health check.

# The builder is Debian 12 (bookworm) like the runtime base, so the binaries link against the
# glibc they run with. Rust 1.95 ≥ the workspace's rust-version (1.88) and reads lockfile v4.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.77
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Only the dependencies: this layer is reused until Cargo.lock or a manifest changes. The same
# packages as the build below; every member depends on libs/workspace-hack (cargo hakari), so
# the features are the whole workspace's, the same as `cargo build --workspace` and the tests.
RUN cargo chef cook --release --locked -p catalog -p order -p gateway -p console --recipe-path recipe.json
COPY . .
ARG RELEASE_ID=dev
ENV RELEASE_ID=${RELEASE_ID}
RUN cargo build --release --locked -p catalog -p order -p gateway -p console

# The runtime base: glibc and CA certificates only; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG RELEASE_ID=dev
ENV RELEASE_ID=${RELEASE_ID} \
    LOG_FORMAT=json \
    HOST=0.0.0.0 \
    PORT=8080
USER 65532:65532
EXPOSE 8080

FROM runtime AS catalog
COPY --from=builder /src/target/release/catalog /app/catalog
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/app/catalog", "healthcheck"]
ENTRYPOINT ["/app/catalog"]
CMD ["serve"]

FROM runtime AS order
COPY --from=builder /src/target/release/order /app/order
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/app/order", "healthcheck"]
ENTRYPOINT ["/app/order"]
CMD ["serve"]

FROM runtime AS gateway
COPY --from=builder /src/target/release/gateway /app/gateway
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/app/gateway", "healthcheck"]
ENTRYPOINT ["/app/gateway"]
CMD ["serve"]

FROM runtime AS console
COPY --from=builder /src/target/release/console /app/console
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/app/console", "healthcheck"]
ENTRYPOINT ["/app/console"]
CMD ["serve"]
