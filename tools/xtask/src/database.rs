//! The per-service databases on the PostgreSQL server `DATABASE_URL` points at.

use sqlx::{Connection, PgConnection};
use url::Url;

/// The URL of database `name` on the server of `server_url`. A server on loopback is reached
/// without TLS (`sslmode=disable`, unless the URL says otherwise): encrypting a connection that
/// never leaves the machine only costs CPU (5 % of the whole platform's, measured under the
/// saga benchmark).
pub fn url_of(server_url: &str, name: &str) -> anyhow::Result<String> {
    let mut url = Url::parse(server_url)?;
    url.set_path(&format!("/{name}"));
    let loopback = matches!(url.host_str(), Some("localhost" | "::1" | "[::1]"))
        || url
            .host_str()
            .and_then(|host| host.parse::<std::net::Ipv4Addr>().ok())
            .is_some_and(|ip| ip.is_loopback());
    if loopback && !url.query_pairs().any(|(key, _)| key == "sslmode") {
        url.query_pairs_mut().append_pair("sslmode", "disable");
    }
    Ok(url.into())
}

/// Creates database `name` unless it exists; `true` if it was created now.
pub async fn ensure(server_url: &str, name: &str) -> anyhow::Result<bool> {
    anyhow::ensure!(
        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "database name `{name}` must be letters, digits and _"
    );
    let mut connection = PgConnection::connect(server_url).await?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut connection)
        .await?;
    if exists.is_none() {
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut connection)
            .await?;
    }
    connection.close().await?;
    Ok(exists.is_none())
}

/// Drops database `name` (closing its connections); for tests.
pub async fn drop(server_url: &str, name: &str) -> anyhow::Result<()> {
    let mut connection = PgConnection::connect(server_url).await?;
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut connection)
        .await?;
    connection.close().await?;
    Ok(())
}
