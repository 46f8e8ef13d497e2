//! PostgreSQL as an attached resource (factor 4): one `DATABASE_URL`, a lazy pool, a readiness
//! check, and migrations run only by the `migrate` command.

use std::{future::Future, pin::Pin, str::FromStr, time::Duration};

use tracing::Instrument;

use serde::Deserialize;
use sqlx::{
    Connection, PgConnection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{
    config::ConfigError,
    health::{ReadinessCheck, Verdict},
    secret::SecretUrl,
};

/// Database settings, from `DATABASE_URL`, `DATABASE_MAX_CONNECTIONS`,
/// `DATABASE_ACQUIRE_TIMEOUT_MS`, `DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS`.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/database`; the password is redacted when shown.
    pub database_url: SecretUrl,
    /// Size of the process's shared pool (the catalog adds one connection per HTTP worker
    /// for its single-product reads). Sum over all replicas must stay under the server's
    /// `max_connections`; by Little's law, requests/s × mean query time is what is needed.
    #[serde(default = "default_max_connections")]
    pub database_max_connections: u32,
    /// How long a request waits for a pooled connection before failing (and readiness with it).
    #[serde(default = "default_acquire_timeout_ms")]
    pub database_acquire_timeout_ms: u64,
    /// PostgreSQL's `idle_in_transaction_session_timeout` for this process's sessions (`0`:
    /// the server's setting). A transaction holds its row locks until it ends; a process on a
    /// slow or lossy link (or one that stalls) would hold them between its statements for as
    /// long as the link takes, and every other instance waiting on those rows with it. The
    /// server ends such a session, the transaction rolls back, and the process retries
    /// ([`is_transient`]). A healthy process sends its next statement within a millisecond.
    #[serde(default = "default_idle_in_transaction_timeout_ms")]
    pub database_idle_in_transaction_timeout_ms: u64,
}

fn default_idle_in_transaction_timeout_ms() -> u64 {
    300
}

fn default_max_connections() -> u32 {
    10
}

fn default_acquire_timeout_ms() -> u64 {
    3000
}

impl DatabaseConfig {
    /// Validates the URI as a PostgreSQL connection string.
    pub fn connect_options(&self) -> Result<PgConnectOptions, ConfigError> {
        if !matches!(self.database_url.scheme(), "postgres" | "postgresql") {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "expected a postgres:// or postgresql:// URI",
            ));
        }
        let options = PgConnectOptions::from_str(self.database_url.expose())
            .map_err(|e| ConfigError::new("DATABASE_URL", format!("is not usable: {e}")))?;
        Ok(match self.database_idle_in_transaction_timeout_ms {
            0 => options,
            ms => options.options([("idle_in_transaction_session_timeout", ms.to_string())]),
        })
    }

    /// A pool that connects on first use, so the process starts (and reports itself not ready)
    /// even while the database is still coming up.
    pub fn connect_lazy(&self) -> Result<PgPool, ConfigError> {
        if self.database_max_connections == 0 {
            return Err(ConfigError::new(
                "DATABASE_MAX_CONNECTIONS",
                "must be at least 1",
            ));
        }
        Ok(PgPoolOptions::new()
            .max_connections(self.database_max_connections)
            .acquire_timeout(Duration::from_millis(self.database_acquire_timeout_ms))
            .connect_lazy_with(self.connect_options()?))
    }
}

/// The pool, with every query executed on the process's main runtime.
///
/// actix-web serves each worker thread with its own single-threaded runtime, and a database
/// socket belongs to the runtime that opened it. Graceful shutdown stops idle workers first;
/// their runtimes end, and with them every pooled connection they opened, even one a busy
/// worker is using to finish a request. Running queries on the main runtime, which outlives
/// the HTTP server, keeps connections valid until the pool is closed.
#[derive(Debug, Clone)]
pub struct Database {
    pool: PgPool,
    runtime: tokio::runtime::Handle,
}

impl Database {
    /// Wraps `pool`; call from the main runtime (it is captured here).
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Runs `work` with the pool on the main runtime and waits for it, in a client span named
    /// `operation` (the statement's kind and table, e.g. `SELECT products`: the span's name in
    /// a trace) under the caller's span. The work completes even if the caller stops waiting
    /// (a client hung up), so a transaction is never cut off midway by a cancelled request.
    pub async fn run<T, F, Fut>(&self, operation: &'static str, work: F) -> Result<T, sqlx::Error>
    where
        F: FnOnce(PgPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let span = tracing::info_span!(
            "query",
            otel.name = operation,
            otel.kind = "client",
            db.system.name = "postgresql",
        );
        self.spawn(work(self.pool.clone()).instrument(span)).await
    }

    async fn spawn<T, Fut>(&self, work: Fut) -> Result<T, sqlx::Error>
    where
        Fut: Future<Output = Result<T, sqlx::Error>> + Send + 'static,
        T: Send + 'static,
    {
        // `None`: the main runtime is shutting down.
        crate::main_runtime::run_on(&self.runtime, work)
            .await
            .unwrap_or(Err(sqlx::Error::PoolClosed))
    }

    /// `SELECT 1` on the main runtime, without a span (readiness checks run every few seconds).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        let pool = self.pool.clone();
        self.spawn(async move { sqlx::query("SELECT 1").execute(&pool).await.map(drop) })
            .await
    }

    /// The pool itself, for work that already runs on the main runtime (background tasks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Waits for checked-out connections to return, then closes them.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Connects now, for one-off commands (`migrate`, `seed`): a failure surfaces the driver's real
/// error instead of a pool time-out.
pub async fn connect(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    let options = config
        .connect_options()
        .map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?;
    // One direct attempt first: the pool would retry until its time-out and report only that,
    // where a direct connection reports the real cause (refused, unknown database, auth).
    PgConnection::connect_with(&options).await?.close().await?;
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(config.database_acquire_timeout_ms))
        .connect_with(options)
        .await
}

/// Applies each migrator (embedded with `sqlx::migrate!`, with `set_ignore_missing(true)` so
/// that a service's and a library's migrations can share one database).
pub async fn migrate(
    pool: &PgPool,
    migrators: &[Migrator],
) -> Result<(), sqlx::migrate::MigrateError> {
    for migrator in migrators {
        migrator.run(pool).await?;
    }
    let known: usize = migrators.iter().map(|m| m.iter().count()).sum();
    tracing::info!(migrations = known, "database schema is up to date");
    Ok(())
}

/// Whether a failed statement may succeed if simply tried again.
///
/// `true` for failures of the connection or the server, not of the statement: I/O and TLS
/// errors, pool time-outs, and the SQLSTATE classes 08 (connection exception), 40 (transaction
/// rollback: serialization failures, deadlocks), 53 (insufficient resources), 57 (operator
/// intervention: the server is shutting down or restarting), 58 (system error) and
/// `55P03` (lock not available) and `25P03` (the session sat idle in its transaction past
/// `idle_in_transaction_session_timeout`: the link or the process was slow, not the statement).
/// Everything else is about the statement and its data (class
/// 22 data exception, 23 integrity constraint violation, 42 syntax or access rule, rows that
/// do not decode): trying the same statement again gives the same answer.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            matches!(code.get(..2), Some("08" | "40" | "53" | "57" | "58"))
                || code == "55P03"
                || code == "25P03"
        }),
        _ => false,
    }
}

/// The problem a handler answers when a query failed: `503` with `Retry-After` while the
/// database is unavailable ([`is_transient`]), else `500` (a statement the server refused is
/// a bug of ours: client input is validated before it reaches SQL). Logs the cause.
pub fn problem(error: &sqlx::Error) -> crate::problem::Problem {
    use actix_web::http::StatusCode;
    let cause = crate::exit::error_chain(error);
    if is_transient(error) {
        tracing::error!(error = %cause, "database unavailable");
        crate::problem::Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .detail("the database is unavailable; retry shortly")
            .retry_after(1)
    } else {
        tracing::error!(error = %cause, "database query failed");
        crate::problem::Problem::internal()
    }
}

/// Readiness: the database answers `SELECT 1`.
#[derive(Debug, Clone)]
pub struct DatabaseCheck {
    database: Database,
}

impl DatabaseCheck {
    pub fn new(database: Database) -> Self {
        Self { database }
    }
}

impl ReadinessCheck for DatabaseCheck {
    fn name(&self) -> &'static str {
        "database"
    }

    fn check(&self) -> Pin<Box<dyn Future<Output = Verdict> + Send + '_>> {
        Box::pin(async move { self.database.ping().await.map_err(|e| e.to_string()).into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transaction whose next statement comes later than the idle timeout is ended by the
    /// server, and the error says "try again", not "this statement is wrong" (a consumer would
    /// otherwise give up on the event and compensate it). Needs `DATABASE_URL`.
    #[tokio::test]
    async fn a_transaction_left_idle_past_the_timeout_ends_with_a_transient_error() {
        let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (a real PostgreSQL)");
        let config: DatabaseConfig = crate::config::from_vars([
            ("DATABASE_URL", url.as_str()),
            ("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS", "200"),
        ])
        .unwrap();
        let pool = connect(&config).await.unwrap();
        let mut transaction = pool.begin().await.unwrap();
        sqlx::query("SELECT 1")
            .execute(&mut *transaction)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let error = sqlx::query("SELECT 1")
            .execute(&mut *transaction)
            .await
            .expect_err("the server ended the idle transaction");
        assert!(is_transient(&error), "{error:?}");
        drop(transaction);
        pool.close().await;

        let default: DatabaseConfig =
            crate::config::from_vars([("DATABASE_URL", url.as_str())]).unwrap();
        assert_eq!(default.database_idle_in_transaction_timeout_ms, 300);
    }
}
