//! Assembles the gateway: the shared state (after a first discovery and health-check round),
//! one HTTP client per worker, the catch-all forwarding route behind the runtime's health and
//! metrics routes, the admin API, and the upkeep task.

use std::{future::Future, sync::Arc, time::Duration};

use actix_web::{dev::Server as ActixServer, web};
use dockyard_runtime::{health::Health, metrics::Metrics, server};
use tokio_util::sync::CancellationToken;

use crate::{SERVICE, config::Settings, metrics::GatewayMetrics, proxy, state::Gateway};

/// A bound, ready-to-run gateway.
pub struct Application {
    server: server::Server,
    admin: Option<(ActixServer, u16)>,
    gateway: Arc<Gateway>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port())
            .field("admin_port", &self.admin_port())
            .finish_non_exhaustive()
    }
}

impl Application {
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let config = &settings.gateway;
        let gateway_metrics = Arc::new(GatewayMetrics::new());
        let mut metrics = Metrics::new();
        gateway_metrics.register(&mut metrics);
        let gateway = Arc::new(Gateway::start(config, gateway_metrics).await?);
        let shared = web::Data::from(Arc::clone(&gateway));
        let connect_timeout = Duration::from_millis(config.upstream_connect_timeout_ms);
        let server = server::bind(&settings.http, Health::new(SERVICE), metrics, {
            let shared = shared.clone();
            move |app| {
                // One client per worker: its pooled connections live on that worker's
                // runtime and are only used there, so they stay valid while it drains.
                let client = reqwest::Client::builder()
                    .connect_timeout(connect_timeout)
                    .pool_idle_timeout(Duration::from_secs(30))
                    .tcp_nodelay(true)
                    .build()
                    .expect("building an HTTP client cannot fail without TLS options");
                app.app_data(shared.clone())
                    .app_data(web::Data::new(client))
                    .route("/{path:.*}", web::to(proxy::forward));
            }
        })?;
        let admin = crate::admin::bind(
            &config.admin_host,
            config.admin_port,
            config.admin_token.as_deref(),
            shared,
        )?;
        Ok(Self {
            server,
            admin,
            gateway,
        })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The admin API's port, when it is on.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin.as_ref().map(|(_, port)| *port)
    }

    /// Serves until `shutdown` resolves, then drains the proxy, and stops the admin API and
    /// the upkeep task.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let upkeep = tokio::spawn(Arc::clone(&self.gateway).run_upkeep(stop.clone()));
        let admin = self.admin.map(|(server, _)| {
            let handle = server.handle();
            (tokio::spawn(server), handle)
        });
        let served = self.server.run_until_stopped(shutdown).await;
        stop.cancel();
        if let Some((task, handle)) = admin {
            handle.stop(true).await;
            let _ = task.await;
        }
        let _ = upkeep.await;
        served?;
        Ok(())
    }
}
