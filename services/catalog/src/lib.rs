//! # catalog
//!
//! The Dockyard catalog service: products with prices (integer minor units + ISO 4217
//! currency) and stock, over HTTP, stored in PostgreSQL.
//!
//! # Layout
//! - `main.rs`: command dispatch (`serve | migrate | seed | healthcheck`).
//! - [`config`]: the service's settings from the environment.
//! - [`startup`]: builds the [`startup::Application`] (pool, health, routes) and runs it.
//! - [`routes`]: the HTTP resources, one file per resource.
//! - [`domain`]: validated types with their invariants, no I/O.
//! - [`store`]: the SQL, with sqlx.
//! - [`events`]: the saga: reserving and releasing stock on order events.
//! - [`seed`]: the demo catalog behind `catalog seed`.

pub mod config;
pub mod domain;
pub mod events;
pub mod routes;
pub mod seed;
pub mod startup;
pub mod store;

/// The service name in logs, health reports and usage lines.
pub const SERVICE: &str = "catalog";

/// The catalog's migrations, embedded in the binary; applied only by `catalog migrate`, with
/// those of the messaging library (outbox, inbox).
pub fn migrators() -> [sqlx::migrate::Migrator; 2] {
    let mut own = sqlx::migrate!("./migrations");
    own.set_ignore_missing(true);
    [own, dockyard_messaging::migrator()]
}
