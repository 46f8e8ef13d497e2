//! # dockyard-testkit
//!
//! Support for the services' integration tests, which run against the real PostgreSQL of the
//! machine (factor 10: no stand-ins).
//!
//! # Layout
//! - [`TestDatabase`]: a fresh, uniquely named database per test on the server that
//!   `DATABASE_URL` points at (default `postgres://postgres@127.0.0.1:5432/postgres`), dropped
//!   when the value is dropped, so tests run in parallel and leave nothing behind.
//! - [`TcpProxy`]: a loopback TCP proxy a test can cut and restore, to stage an outage of a
//!   backing service (the broker, the database) without touching the shared server.
//! - [`LocalDns`]: a DNS server on loopback with answers the caller changes, for service
//!   discovery the way Compose and Kubernetes do it.
//! - [`TokenIssuer`]: an ES256 signing key, its JWKS, and bearer tokens signed with it, for the
//!   gateway's tests and `cargo xtask token` (local development).
//! - [`process`]: a service binary to run as an OS process with only the variables a test
//!   gives it.

mod dns;
mod proxy;
mod tokens;

pub use dns::LocalDns;
pub use proxy::TcpProxy;
use sqlx::{Connection, Executor, PgConnection, PgPool};
pub use tokens::{Grant, TokenIssuer};
use url::Url;

/// The binary `bin` (a test's `env!("CARGO_BIN_EXE_…")`) with an empty environment plus
/// `vars`, killed if the test drops it: configuration comes only from what the test sets.
pub fn process(bin: &str, vars: &[(&str, &str)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(bin);
    command
        .env_clear()
        .envs(vars.iter().copied())
        .kill_on_drop(true);
    command
}

/// The server tests use when `DATABASE_URL` is not set: the machine's local PostgreSQL.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: Url,
    admin_url: Url,
}

impl TestDatabase {
    /// Creates `{prefix}_test_{uuid}` on the test server.
    pub async fn create(prefix: &str) -> Self {
        let server =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
        let mut admin_url = Url::parse(&server).expect("DATABASE_URL must be a valid URL in tests");
        admin_url.set_path("/postgres");
        let name = format!("{prefix}_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(admin_url.as_str())
            .await
            .unwrap_or_else(|e| panic!("tests need PostgreSQL at {admin_url}: {e}"));
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .expect("creating the test database");
        let mut url = admin_url.clone();
        url.set_path(&format!("/{name}"));
        Self {
            name,
            url,
            admin_url,
        }
    }

    /// The connection URI of this database.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A small pool on this database, for arranging and asserting state.
    pub async fn pool(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(self.url())
            .await
            .expect("connecting to the test database")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside or outside a runtime; a thread with its own runtime works in both.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for dropping the test database");
            runtime.block_on(async move {
                let mut admin = PgConnection::connect(admin_url.as_str()).await?;
                admin
                    .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
                    .await
                    .map(drop)
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}
