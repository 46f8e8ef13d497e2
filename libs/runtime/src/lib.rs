//! # dockyard-runtime
//!
//! The twelve-factor process that every Dockyard service is built on. A service supplies its
//! routes and its backing-service checks; this crate supplies everything a process needs to
//! behave well in a container platform, so no service writes it twice.
//!
//! # Layout
//! - [`command`]: the one-off commands of a service binary (`serve | migrate | seed | healthcheck`).
//! - [`config`]: typed configuration from environment variables only; errors name the variable.
//! - [`secret`]: [`secret::SecretUrl`], a backing-service URI whose password never reaches logs.
//! - [`database`]: the PostgreSQL pool (lazy, so start order never matters) and its readiness check.
//! - [`telemetry`]: JSON log lines on stdout (or `pretty` for humans), filtered by `RUST_LOG`.
//! - [`observe`]: per-request middleware: `X-Request-Id`, the request's span (continuing the
//!   caller's trace), one log event and RED metrics per request.
//! - [`trace`]: distributed tracing: OpenTelemetry spans, W3C trace context in and out, OTLP export.
//! - [`main_runtime`]: running backing-service I/O on the main runtime, which outlives actix's workers.
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`health`]: `/health/live` and `/health/ready`, and the draining flag shutdown flips.
//! - [`identity`]: the caller the gateway vouches for (`X-Identity-*` headers, `REQUIRE_IDENTITY`).
//! - [`id`]: [`id::Id`], a UUID in the one spelling the API documents.
//! - [`number`]: [`number::Whole`], an integer as JSON Schema means it (`12.0` included).
//! - [`openapi`]: shared OpenAPI schemas, `GET /openapi.json`, `405` with `Allow`.
//! - [`problem`]: RFC 9457 `application/problem+json` errors, including for extractor failures.
//! - [`server`]: binds `HOST:PORT`, assembles the actix `App`, runs until a shutdown signal, drains.
//! - [`shutdown`]: the SIGTERM / SIGINT future.
//! - [`healthcheck`]: the client behind the `healthcheck` command (containers ship no curl).
//! - [`exit`]: exit codes: 2 for bad usage or configuration, 1 for a failed command.

pub mod command;
pub mod config;
pub mod database;
pub mod exit;
pub mod health;
pub mod healthcheck;
pub mod id;
pub mod identity;
pub mod main_runtime;
pub mod metrics;
pub mod number;
pub mod observe;
pub mod openapi;
pub mod problem;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

/// Identifies this build: `RELEASE_ID` from the environment at run time, else the one baked in
/// at build time (the Dockerfile passes the git sha), else `dev`.
pub fn release_id() -> String {
    std::env::var("RELEASE_ID")
        .ok()
        .filter(|id| !id.is_empty())
        .or_else(|| option_env!("RELEASE_ID").map(str::to_owned))
        .unwrap_or_else(|| "dev".to_owned())
}
