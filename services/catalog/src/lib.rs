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
//! - [`seed`]: the demo catalog behind `catalog seed`.

pub mod config;
pub mod domain;
pub mod routes;
pub mod seed;
pub mod startup;
pub mod store;

/// The service name in logs, health reports and usage lines.
pub const SERVICE: &str = "catalog";

/// The migrations, embedded in the binary; applied only by `catalog migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
