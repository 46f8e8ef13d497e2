//! The HTTP process: bind `HOST:PORT` (factor 7), serve, and shut down gracefully (factor 9).
//!
//! [`bind`] binds the listener first (so tests can ask for port 0 and learn the real port),
//! then assembles the actix `App` every service shares: request observation, problem+json
//! errors, health, metrics, and the service's own routes. [`Server::run_until_stopped`] serves
//! until the shutdown future resolves, then: readiness turns 503, an optional delay lets load
//! balancers notice, the listener closes, in-flight requests drain (bounded by
//! `SHUTDOWN_TIMEOUT_SECS`), and it returns.

use std::{future::Future, net::TcpListener, sync::Arc, time::Duration};

use actix_web::{
    App, HttpResponse, HttpServer,
    dev::Server as ActixServer,
    middleware::{ErrorHandlers, from_fn},
    web,
};
use serde::Deserialize;

use crate::{health::Health, metrics::Metrics, observe, problem};

/// Largest JSON body a handler accepts.
const JSON_LIMIT_BYTES: usize = 64 * 1024;

/// HTTP settings, from `HOST`, `PORT`, `HTTP_WORKERS`, `SHUTDOWN_TIMEOUT_SECS`,
/// `SHUTDOWN_DELAY_MS`.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpConfig {
    #[serde(default = "default_host")]
    pub host: String,
    /// `0` asks the OS for a free port (tests do).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Worker threads; default: one per CPU core.
    #[serde(default)]
    pub http_workers: Option<usize>,
    /// Upper bound on draining in-flight requests after a shutdown signal.
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// Time between readiness turning 503 and the listener closing, so that load balancers
    /// polling readiness stop routing here first. Kubernetes does this with a `preStop` sleep
    /// instead, so the default is 0.
    #[serde(default)]
    pub shutdown_delay_ms: u64,
}

fn default_host() -> String {
    "0.0.0.0".to_owned()
}

fn default_port() -> u16 {
    8080
}

fn default_shutdown_timeout_secs() -> u64 {
    30
}

impl HttpConfig {
    /// Settings for tests: loopback, a free port, no delay.
    pub fn ephemeral() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 0,
            http_workers: Some(2),
            shutdown_timeout_secs: 5,
            shutdown_delay_ms: 0,
        }
    }
}

/// A bound server, not yet running.
#[allow(missing_debug_implementations)] // actix's server handle has no Debug
pub struct Server {
    port: u16,
    actix: ActixServer,
    health: Arc<Health>,
    shutdown_delay: Duration,
}

/// Binds the listener and builds the server. `routes` mounts the service's own resources.
pub fn bind<F>(
    config: &HttpConfig,
    health: Health,
    metrics: Metrics,
    routes: F,
) -> std::io::Result<Server>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    let listener = TcpListener::bind((config.host.as_str(), config.port))?;
    let port = listener.local_addr()?.port();
    let health = Arc::new(health);
    let health_data = web::Data::from(Arc::clone(&health));
    let metrics = web::Data::new(metrics);
    let mut server = HttpServer::new(move || {
        App::new()
            .wrap(ErrorHandlers::new().default_handler(problem::fill_bare_error))
            .wrap(from_fn(observe::request))
            .app_data(problem::json_config(JSON_LIMIT_BYTES))
            .app_data(problem::path_config())
            .app_data(problem::query_config())
            .app_data(health_data.clone())
            .app_data(metrics.clone())
            .configure(crate::health::routes)
            .route("/metrics", web::get().to(crate::metrics::endpoint))
            .configure(routes.clone())
            // A bare 404; `fill_bare_error` turns it into a problem naming the path.
            .default_service(web::to(HttpResponse::NotFound))
    })
    .listen(listener)?
    .disable_signals()
    .shutdown_timeout(config.shutdown_timeout_secs);
    if let Some(workers) = config.http_workers {
        server = server.workers(workers);
    }
    tracing::info!(address = %format!("{}:{port}", config.host), "listening");
    Ok(Server {
        port,
        actix: server.run(),
        health,
        shutdown_delay: Duration::from_millis(config.shutdown_delay_ms),
    })
}

impl Server {
    /// The port actually bound (useful when `PORT=0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The health state, shared with `/health/*`.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Serves until `shutdown` resolves, then drains and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let handle = self.actix.handle();
        let mut serving = tokio::spawn(self.actix);
        tokio::select! {
            result = &mut serving => return result.map_err(std::io::Error::other)?,
            () = shutdown => {}
        }
        self.health.start_draining();
        tracing::info!(
            delay_ms = self.shutdown_delay.as_millis(),
            "readiness off, draining"
        );
        tokio::time::sleep(self.shutdown_delay).await;
        handle.stop(true).await;
        serving.await.map_err(std::io::Error::other)??;
        tracing::info!("in-flight requests drained, server stopped");
        Ok(())
    }
}
