//! A platform of its own on the shared backing services: databases and an exchange (with its
//! queues) named for one run, removed afterwards, so a run never touches `cargo xtask up`'s
//! data or another run's.

use std::path::PathBuf;

use lapin::{Connection, ConnectionProperties};

use crate::{database, stack};

/// Names for one run, and the servers they live on.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub server_url: String,
    pub amqp_url: String,
    pub catalog_database: String,
    pub order_database: String,
    pub exchange: String,
}

impl Sandbox {
    /// Fresh names starting with `prefix` on `DATABASE_URL` and `AMQP_URL` (or the local
    /// defaults).
    pub fn new(prefix: &str) -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let env =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        Self {
            server_url: env(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            amqp_url: env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            catalog_database: format!("{prefix}_catalog_{suffix}"),
            order_database: format!("{prefix}_orders_{suffix}"),
            exchange: format!("{prefix}.{suffix}"),
        }
    }

    /// Stack options for this sandbox, with JSON logs kept quiet.
    pub fn options(&self, catalog_instances: usize, bin_dir: PathBuf) -> stack::Options {
        stack::Options {
            catalog_instances,
            order_instances: 1,
            canary: false,
            canary_weight: 0,
            gateway_port: 0,
            admin_port: 0,
            database_url: self.server_url.clone(),
            catalog_database: self.catalog_database.clone(),
            order_database: self.order_database.clone(),
            amqp_url: self.amqp_url.clone(),
            amqp_exchange: self.exchange.clone(),
            bin_dir,
            admin_token: "sandbox-admin-token-0123456789".to_owned(),
            log_format: "json".to_owned(),
            // `SANDBOX_LOGS=1` prints every instance's log lines, prefixed.
            show_logs: std::env::var_os("SANDBOX_LOGS").is_some(),
            service_env: Vec::new(),
            gateway_env: Vec::new(),
            log_file: None,
            auth: true,
            console_port: None,
        }
    }

    /// Drops the databases and deletes the exchange and its queues; reports what it could
    /// not remove.
    pub async fn cleanup(&self) {
        for name in [&self.catalog_database, &self.order_database] {
            if let Err(error) = database::drop(&self.server_url, name).await {
                eprintln!("could not drop database {name}: {error:#}");
            }
        }
        let deleted = async {
            let connection =
                Connection::connect(&self.amqp_url, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            dockyard_messaging::topology::delete(
                &channel,
                &dockyard_contracts::topology(),
                &self.exchange,
            )
            .await?;
            connection.close(200, "sandbox removed".into()).await
        };
        if let Err(error) = deleted.await {
            eprintln!("could not delete exchange {}: {error}", self.exchange);
        }
    }
}
