//! Assembles the gateway: the shared route table, one HTTP client per worker, the catch-all
//! forwarding route behind the runtime's health and metrics routes.

use std::{future::Future, sync::Arc, time::Duration};

use actix_web::web;
use dockyard_runtime::{health::Health, metrics::Metrics, server};

use crate::{SERVICE, config::Settings, proxy};

/// A bound, ready-to-run gateway.
pub struct Application {
    server: server::Server,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port())
            .finish_non_exhaustive()
    }
}

impl Application {
    pub fn build(settings: &Settings) -> anyhow::Result<Self> {
        let gateway = web::Data::from(Arc::new(proxy::Gateway::new(&settings.gateway)?));
        let connect_timeout = Duration::from_millis(settings.gateway.upstream_connect_timeout_ms);
        let server = server::bind(
            &settings.http,
            Health::new(SERVICE),
            Metrics::new(),
            move |config| {
                // One client per worker: its pooled connections live on that worker's runtime and
                // are only used there, so they stay valid while the worker drains.
                let client = reqwest::Client::builder()
                    .connect_timeout(connect_timeout)
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build()
                    .expect("building an HTTP client cannot fail without TLS options");
                config
                    .app_data(gateway.clone())
                    .app_data(web::Data::new(client))
                    .route("/{path:.*}", web::to(proxy::forward));
            },
        )?;
        Ok(Self { server })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.server.run_until_stopped(shutdown).await?;
        Ok(())
    }
}
