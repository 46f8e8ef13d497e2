//! What the gateway refuses before choosing a pool: a client over its rate (`429` with
//! `Retry-After`) and a body declared larger than `MAX_BODY_BYTES` (`413`, after draining it).

use std::{net::IpAddr, time::Duration};

use actix_web::http::StatusCode as ProblemStatus;
use dockyard_runtime::problem::Problem;
use http::HeaderMap;
use hyper::body::Incoming;

use crate::{body, state::Gateway};

/// Admits a request from `peer` with `headers`, or answers it; a refused body is drained.
pub async fn admit(
    gateway: &Gateway,
    peer: IpAddr,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Incoming, Problem> {
    rate_limit(gateway, peer, headers)?;
    if declared_length(headers).is_some_and(|length| length > gateway.max_body_bytes) {
        body::drain(body).await;
        return Err(body::too_large(gateway.max_body_bytes));
    }
    Ok(body)
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers.get("content-length")?.to_str().ok()?.parse().ok()
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// 429 when the client is over its rate.
fn rate_limit(gateway: &Gateway, peer: IpAddr, headers: &HeaderMap) -> Result<(), Problem> {
    let ip = gateway.limiter.client_ip(peer, headers);
    gateway.limiter.check(ip).map_err(|wait| {
        gateway.metrics.rate_limited.inc();
        Problem::new(ProblemStatus::TOO_MANY_REQUESTS)
            .detail("too many requests from this client; slow down")
            .retry_after(retry_after_secs(wait))
    })
}
