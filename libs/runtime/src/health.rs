//! `/health/live` and `/health/ready`.
//!
//! Liveness says the process runs (and which release it is). Readiness says it should get
//! traffic: no check is down and the process is not draining. A check may also report the
//! process *degraded*: it still serves (readiness stays 200) but something needs an
//! operator, and the report says what (`"status": "degraded"`, with the reason). Shutdown
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

/// What one check says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Up,
    /// Still serving, but an operator should look: the reason says at what.
    Degraded(String),
    /// Unusable: the process is not ready.
    Down(String),
}

impl From<Result<(), String>> for Verdict {
    fn from(result: Result<(), String>) -> Self {
        result.map_or_else(Self::Down, |()| Self::Up)
    }
}

/// One thing that must work for the process to be ready: a backing service, a worker.
pub trait ReadinessCheck: Send + Sync + std::fmt::Debug + 'static {
    /// Short name shown in the readiness report (`database`, `broker`).
    fn name(&self) -> &'static str;
    /// Resolves to [`Verdict::Down`] when it is unusable.
    fn check(&self) -> Pin<Box<dyn Future<Output = Verdict> + Send + '_>>;
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
            let verdict = tokio::time::timeout(CHECK_TIMEOUT, check.check())
                .await
                .unwrap_or_else(|_| Verdict::Down(format!("no answer within {CHECK_TIMEOUT:?}")));
            let status = match verdict {
                Verdict::Up => json!({"status": "up"}),
                Verdict::Degraded(reason) => json!({"status": "degraded", "reason": reason}),
                Verdict::Down(reason) => {
                    ready = false;
                    json!({"status": "down", "reason": reason})
                }
            };
            report.insert(check.name().to_owned(), status);
        }
        if ready { Ok(report) } else { Err(report) }
    }

    /// The body of `GET /health/live`, for servers that are not actix (the gateway's data
    /// plane).
    pub fn live_report(&self) -> Value {
        json!({
            "status": "up",
            "service": self.service,
            "version": env!("CARGO_PKG_VERSION"),
            "release": self.release,
        })
    }

    /// Whether the process is ready, and the body of `GET /health/ready`: `503` while
    /// draining or while a check is down.
    pub async fn ready_report(&self) -> (bool, Value) {
        if self.is_draining() {
            return (
                false,
                json!({"status": "draining", "service": self.service}),
            );
        }
        match self.readiness().await {
            Ok(checks) => (true, json!({"status": "ready", "checks": checks})),
            Err(checks) => (false, json!({"status": "not ready", "checks": checks})),
        }
    }
}

/// Mounts the two health routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/health/live", web::get().to(live))
        .route("/health/ready", web::get().to(ready));
}

async fn live(health: web::Data<Health>) -> HttpResponse {
    HttpResponse::Ok().json(health.live_report())
}

async fn ready(health: web::Data<Health>) -> HttpResponse {
    let (ready, report) = health.ready_report().await;
    if ready {
        HttpResponse::Ok().json(report)
    } else {
        HttpResponse::ServiceUnavailable().json(report)
    }
}
