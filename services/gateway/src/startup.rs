//! Assembles the gateway: the token verifier (keys loaded), the shared state (after a first
//! discovery and health-check round), the data plane's listeners (one per worker, see
//! [`crate::server`]), the admin listener (admin API and metrics), and the upkeep task.

use std::{future::Future, sync::Arc, time::Duration};

use actix_web::{dev::Server as ActixServer, web};
use dockyard_runtime::{health::Health, metrics::Metrics, server::HttpConfig};
use tokio_util::sync::CancellationToken;

use crate::{
    SERVICE,
    auth::Authenticator,
    config::Settings,
    connections::Connections,
    metrics::GatewayMetrics,
    server::{DataPlane, Listeners, Shared},
    state::Gateway,
    upkeep::Upkeep,
};

/// A bound, ready-to-run gateway.
pub struct Application {
    listeners: Listeners,
    shared: Arc<Shared>,
    upkeep: Upkeep,
    http: HttpConfig,
    admin: (ActixServer, u16),
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
        let connections = Connections::new(config.connections, &mut metrics);
        let limits = connections.limits();
        tracing::info!(
            max_connections = limits.max_connections,
            header_timeout_ms = limits.header.as_millis(),
            keepalive_idle_timeout_ms = limits.idle.as_millis(),
            body_timeout_ms = limits.body.as_millis(),
            "client connection limits"
        );
        let auth = if let Some(auth) = config.auth.clone() {
            Some(Authenticator::load(auth).await?)
        } else {
            tracing::warn!(
                "no AUTH_JWKS_FILE, AUTH_JWKS_URL or AUTH_HS256_SECRET: tokens are not verified and every route is public"
            );
            None
        };
        let gateway = Arc::new(Gateway::new(config, auth, gateway_metrics)?);
        let upkeep = Upkeep::start(config, Arc::clone(&gateway)).await?;
        let http = settings.http.clone();
        let workers = http
            .http_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let listeners = Listeners::bind(&http.host, http.port, workers)?;
        tracing::info!(address = %format!("{}:{}", http.host, listeners.port()), workers, "listening");
        let metrics = Arc::new(metrics);
        let admin = crate::admin::bind(
            &config.admin,
            web::Data::from(Arc::clone(&gateway)),
            web::Data::from(Arc::clone(&metrics)),
        )?;
        let shared = Arc::new(Shared {
            gateway,
            health: Arc::new(Health::new(SERVICE)),
            metrics,
            connect_timeout: config.connect_timeout,
            connections,
        });
        Ok(Self {
            listeners,
            shared,
            upkeep,
            http,
            admin,
        })
    }

    pub fn port(&self) -> u16 {
        self.listeners.port()
    }

    /// The admin listener's port (the admin API and `/metrics`).
    pub fn admin_port(&self) -> u16 {
        self.admin.1
    }

    /// Serves until `shutdown` resolves, then: readiness turns 503, `SHUTDOWN_DELAY_MS`
    /// passes, the listeners close and requests in flight finish (bounded by
    /// `SHUTDOWN_TIMEOUT_SECS`); then the admin API and the upkeep task stop.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        // Stops the upkeep task also when this future is dropped rather than finished.
        let _stop_upkeep = stop.clone().drop_guard();
        let upkeep = tokio::spawn(self.upkeep.run(stop.clone()));
        let (admin, _) = self.admin;
        let admin_handle = admin.handle();
        let admin = tokio::spawn(admin);
        let plane = DataPlane::start(
            self.listeners,
            &self.shared,
            Duration::from_secs(self.http.shutdown_timeout_secs),
        );
        shutdown.await;
        self.shared.health.start_draining();
        let delay = Duration::from_millis(self.http.shutdown_delay_ms);
        tracing::info!(delay_ms = delay.as_millis(), "readiness off, draining");
        tokio::time::sleep(delay).await;
        plane.stop().await;
        tracing::info!("in-flight requests drained, server stopped");
        stop.cancel();
        admin_handle.stop(true).await;
        let _ = admin.await;
        let _ = upkeep.await;
        Ok(())
    }
}
