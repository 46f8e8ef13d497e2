//! Which pool a request goes to: the canary if the request is in its share and the canary's
//! breaker lets it through, else the active stable pool (blue or green); `503` with
//! `Retry-After` at once when that one's breaker is open.

use std::{sync::Arc, time::Instant};

use actix_web::http::StatusCode as ProblemStatus;
use dockyard_resilience::Permit;
use dockyard_runtime::problem::Problem;
use http::HeaderMap;

use crate::{
    admission::retry_after_secs,
    metrics::{PoolLabels, RouteLabels},
    pool::Pool,
    service::Service,
    state::Gateway,
};

/// The pool for this request with a breaker permit: the canary if the request is in its
/// share and its breaker lets it through, else the active stable pool; 503 at once if that
/// one's breaker is open.
pub fn choose_pool<'a>(
    gateway: &Gateway,
    service: &'a Service,
    headers: &HeaderMap,
) -> Result<(&'a Arc<Pool>, Permit<'a>), Problem> {
    let now = Instant::now();
    if let Some(canary) = service.canary_for(headers) {
        if let Ok(permit) = canary.breaker.try_acquire(now) {
            return Ok((canary, permit));
        }
        gateway
            .metrics
            .canary_fallbacks
            .get_or_create(&RouteLabels {
                route: service.name().to_owned(),
            })
            .inc();
    }
    let pool = service.active();
    match pool.breaker.try_acquire(now) {
        Ok(permit) => Ok((pool, permit)),
        Err(rejected) => {
            gateway
                .metrics
                .breaker_rejections
                .get_or_create(&PoolLabels {
                    route: service.name().to_owned(),
                    pool: pool.kind().as_str().to_owned(),
                })
                .inc();
            Err(Problem::new(ProblemStatus::SERVICE_UNAVAILABLE)
                .detail(format!(
                    "{} is failing; its circuit breaker is open",
                    service.name()
                ))
                .retry_after(retry_after_secs(rejected.retry_after)))
        }
    }
}
