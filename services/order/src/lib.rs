//! # order
//!
//! The Dockyard order service: orders are placed with an `Idempotency-Key`, priced through the
//! catalog when it answers (behind a circuit breaker), and confirmed or rejected by the stock
//! saga over RabbitMQ.
//!
//! # Layout
//! - `main.rs`: command dispatch (`serve | migrate | healthcheck`).
//! - [`config`]: settings from the environment.
//! - [`startup`]: builds and runs the application (HTTP, consumer, outbox relay).
//! - [`routes`]: the `/orders` resources.
//! - [`domain`]: orders, lines and states, no I/O.
//! - [`catalog`]: the HTTP client that prices lines, with timeouts and a circuit breaker.
//! - [`store`]: the SQL: orders, idempotency keys, the outbox.
//! - [`events`]: what the order service publishes and how it reacts to stock events.

pub mod admission;
pub mod catalog;
pub mod config;
pub mod domain;
pub mod events;
pub mod routes;
pub mod startup;
pub mod store;

/// The service name in logs, health reports and usage lines; also its consumer name.
pub const SERVICE: &str = "order";

/// The order service's migrations plus the messaging library's (outbox, inbox).
pub fn migrators() -> [sqlx::migrate::Migrator; 2] {
    let mut own = sqlx::migrate!("./migrations");
    own.set_ignore_missing(true);
    [own, dockyard_messaging::migrator()]
}
