//! # gateway
//!
//! The only public entry point of Dockyard: it routes `/api/<service>/…` to the service's
//! instances, balances across them, and keeps a failing instance from failing requests.
//!
//! # Layout
//! - `main.rs`: command dispatch (`serve | healthcheck`).
//! - [`config`]: settings from the environment, including the route table (`ROUTES`).
//! - [`routes`]: the route table: longest prefix wins, the prefix is stripped.
//! - [`upstream`]: an upstream's endpoints, power-of-two-choices balancing on in-flight
//!   requests, passive outlier ejection with growing back-off.
//! - [`headers`]: hop-by-hop stripping and the `X-Forwarded-*` headers.
//! - [`proxy`]: the forwarding handler: streaming bodies, retries on another endpoint for
//!   idempotent requests, timeouts, problem+json errors.
//! - [`startup`]: builds and runs the application.

pub mod config;
pub mod headers;
pub mod proxy;
pub mod routes;
pub mod startup;
pub mod upstream;

/// The service name in logs, health reports and usage lines.
pub const SERVICE: &str = "gateway";
