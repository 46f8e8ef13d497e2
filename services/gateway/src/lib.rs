//! # gateway
//!
//! The only public entry point of Dockyard: it routes `/api/<service>/…` to the service's
//! instances, discovers and balances them, keeps a failing instance from failing requests,
//! and shifts traffic between versions (canary, blue-green).
//!
//! # Layout
//! - `main.rs`: command dispatch (`serve | healthcheck`).
//! - [`config`]: settings from the environment, parsed once into typed values at start.
//! - [`routes`]: the route table (longest prefix wins and is stripped) and its parsing.
//! - [`service`]: a routed service: stable pools (blue-green), canary pool and split, retry
//!   budget.
//! - [`pool`]: one version's endpoints: power-of-two-choices balancing, passive outlier
//!   ejection, the pool's circuit breaker.
//! - [`discovery`]: re-resolving hostnames into endpoints.
//! - [`checks`]: active health checks.
//! - [`ratelimit`]: per-client token buckets, client address behind trusted proxies.
//! - [`headers`]: hop-by-hop stripping and the `X-Forwarded-*` headers.
//! - [`server`]: the data plane's HTTP server (hyper, a runtime and a client per worker).
//! - [`framing`]: refuses requests with ambiguous framing (smuggling) before hyper parses them.
//! - [`body`]: the client's request body: buffered or streamed, cut at the limit.
//! - [`proxy`]: the forwarding handler, in the order of the modules it calls:
//!   [`paths`] (normalisation, internal paths), [`admission`] (rate limit, declared size),
//!   [`auth`] (bearer tokens, per-route policies, identity headers), [`choice`] (canary or stable pool, breakers),
//!   [`attempts`] (endpoints, retries, budget, deadline, what counts against an upstream).
//! - [`admin`]: the admin listener: the authenticated admin API and the gateway's `/metrics`.
//! - [`metrics`]: per route, pool and endpoint metrics.
//! - [`state`]: what the workers share; [`upkeep`]: discovery, health checks and gauges in the
//!   background; [`startup`] builds and runs it all.

pub mod admin;
pub mod admission;
pub mod attempts;
pub mod auth;
pub mod body;
pub mod checks;
pub mod choice;
pub mod config;
pub mod connections;
pub mod discovery;
pub mod framing;
pub mod headers;
pub mod metrics;
pub mod paths;
pub mod pool;
pub mod proxy;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod service;
pub mod startup;
pub mod state;
pub mod upkeep;

/// The service name in logs, health reports and usage lines.
pub const SERVICE: &str = "gateway";
