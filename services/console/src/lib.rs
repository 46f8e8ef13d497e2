//! # console
//!
//! The Dockyard platform live, in one page: the topology (routes → pools → instances, with
//! their state, in-flight requests, rate, errors and latency), the release controls (canary
//! weight, blue/green switch), the saga (orders by state, outbox backlogs, dead letters) and
//! the recent traces, each as a waterfall. A process like the others (twelve-factor, `PORT`,
//! env config, `/health/*`, `/metrics`, SIGTERM drain), holding no state but what it saw
//! lately, in memory.
//!
//! - [`traces`]: the OTLP/HTTP receiver (`POST /v1/traces`, protobuf or JSON) and the bounded
//!   store of recent traces.
//! - [`observer`]: polls the gateway's admin API (`/upstreams`, `/metrics`) and every instance's
//!   `/metrics`, and keeps the overview with a few minutes of history.
//! - [`routes`]: the page (embedded in the binary: no CDN, no build step) and its JSON API.
//! - [`config`], [`startup`]: settings and assembly.

pub mod config;
pub mod observer;
pub mod routes;
pub mod startup;
pub mod traces;

/// The service's name, in logs, health reports and its own spans.
pub const SERVICE: &str = "console";
