//! Assembles the catalog process: a lazy pool, health with a database check, and the routes.

use std::future::Future;

use dockyard_runtime::{
    database::{Database, DatabaseCheck},
    health::Health,
    metrics::Metrics,
    server,
};

use crate::{SERVICE, config::Settings, routes, store::ProductStore};

/// A bound, ready-to-run catalog.
pub struct Application {
    server: server::Server,
    database: Database,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port())
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds the listener. Does not touch the database: the pool connects on first use.
    pub fn build(settings: &Settings) -> anyhow::Result<Self> {
        let database = Database::new(settings.database.connect_lazy()?);
        let health = Health::new(SERVICE).with_check(DatabaseCheck::new(database.clone()));
        let store = ProductStore::new(database.clone());
        let server = server::bind(&settings.http, health, Metrics::new(), move |config| {
            routes::configure(config, store.clone());
        })?;
        Ok(Self { server, database })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves until `shutdown` resolves, drains, then closes the pool.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.server.run_until_stopped(shutdown).await?;
        self.database.close().await;
        tracing::info!("database pool closed; bye");
        Ok(())
    }
}
