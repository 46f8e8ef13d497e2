//! `/health/live` and `/health/ready`.
//!
//! Liveness says the process runs (and which release it is). Readiness says it should get
//! traffic: every backing-service check passes and the process is not draining. Shutdown
//! flips [`Health::start_draining`] first, so load balancers stop sending before the listener
//! closes.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use actix_web::{HttpResponse, web};
use serde_json::{Map, Value, json};

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One backing service that must answer for the process to be ready.
pub trait ReadinessCheck: Send + Sync + std::fmt::Debug + 'static {
    /// Short name shown in the readiness report (`database`, `broker`).
    fn name(&self) -> &'static str;
    /// Resolves to `Err(reason)` when the backing service is unusable.
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// The health state of one process.
#[derive(Debug)]
pub struct Health {
    service: &'static str,
    release: String,
    /// Set once shutdown begins; readiness answers 503 from then on.
    draining: AtomicBool,
    checks: Vec<Arc<dyn ReadinessCheck>>,
}

impl Health {
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            release: crate::release_id(),
            draining: AtomicBool::new(false),
            checks: Vec::new(),
        }
    }

    #[must_use]
    pub fn with_check(mut self, check: impl ReadinessCheck) -> Self {
        self.checks.push(Arc::new(check));
        self
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Runs every check; `Ok` carries the per-check report, `Err` the same with failures.
    async fn readiness(&self) -> Result<Map<String, Value>, Map<String, Value>> {
        let mut report = Map::new();
        let mut ready = true;
        for check in &self.checks {
            let outcome = tokio::time::timeout(CHECK_TIMEOUT, check.check())
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")));
            let status = match outcome {
                Ok(()) => json!({"status": "up"}),
                Err(reason) => {
                    ready = false;
                    json!({"status": "down", "reason": reason})
                }
            };
            report.insert(check.name().to_owned(), status);
        }
        if ready { Ok(report) } else { Err(report) }
    }
}

/// Mounts the two health routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/health/live", web::get().to(live))
        .route("/health/ready", web::get().to(ready));
}

async fn live(health: web::Data<Health>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "up",
        "service": health.service,
        "version": env!("CARGO_PKG_VERSION"),
        "release": health.release,
    }))
}

async fn ready(health: web::Data<Health>) -> HttpResponse {
    if health.is_draining() {
        return HttpResponse::ServiceUnavailable()
            .json(json!({"status": "draining", "service": health.service}));
    }
    match health.readiness().await {
        Ok(checks) => HttpResponse::Ok().json(json!({"status": "ready", "checks": checks})),
        Err(checks) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "not ready", "checks": checks})),
    }
}
