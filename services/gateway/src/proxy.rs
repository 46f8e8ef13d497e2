//! The forwarding handler.
//!
//! In order (ambiguous framing was refused with 400 before parsing, see [`crate::framing`]):
//! route (404), per-client rate limit (429), declared size (413),
//! pool choice (canary share, else the active stable pool; an open breaker falls back from
//! the canary, or answers 503 with `Retry-After` at once), then attempts.
//!
//! Request bodies are streamed to the upstream, except for requests that may be retried
//! (idempotent methods, and POSTs with an `Idempotency-Key`): those are buffered, bounded by
//! `MAX_BODY_BYTES`, so a retry can send them again ([`crate::body`]). Response bodies are
//! always streamed.
//! A retry goes to an endpoint not tried yet, after a short jittered back-off, if the route's
//! retry budget allows it and the overall deadline has time left. When no instance accepts a
//! connection (the only one is restarting), a retryable request waits for one, trying again
//! with back-off for up to `UPSTREAM_WAIT_FOR_INSTANCE_MS`: a refused connection never reached
//! the service, so those tries cost no attempt and no budget; a kept-alive connection the
//! stopping instance dropped without an answer counts as an attempt, and the request still
//! waits for the instance with the attempts it has left. Errors are problem+json:
//! upstream unreachable 502, upstream too slow 504.
//!
//! **What counts against an upstream** (its pool's breaker, its endpoint's passive health,
//! and retries): only what says an *instance* is unhealthy — a refused or dropped connection,
//! a time-out, and `502`, `503`, `504`. A `500` says this request hit a bug, and any client can
//! cause one at will, so it is relayed and counted in the metrics but never opens a breaker,
//! ejects an instance or triggers a retry; a broken instance is caught by its health check.
//! `4xx` answers are healthy ones. Requests the gateway refuses itself (`400`, `404`, `413`,
//! `429`) and bodies the client cuts short or sends over the limit never reach the breaker.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use actix_web::http::StatusCode as ProblemStatus;
use dockyard_resilience::{Permit, full_jitter};
use dockyard_runtime::problem::Problem;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, request::Parts};
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::{
    body::{self, ClientFault},
    headers,
    metrics::{Outcome, PoolLabels, RouteLabels},
    pool::{Endpoint, Pool},
    server::{self, Peer, Worker},
    service::Service,
    state::Gateway,
};

/// A request body: kept for retries, or streamed once.
enum Body {
    Buffered(Bytes),
    Streamed(Option<body::Capped>),
}

/// `502`, `503` and `504` say an instance (or what is behind it) is unhealthy; other statuses
/// say nothing about its health (see the module documentation).
fn unhealthy(status: StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

fn may_retry(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) || (*method == Method::POST && headers.contains_key("idempotency-key"))
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers.get("content-length")?.to_str().ok()?.parse().ok()
}

/// Forwards any request that matches a route.
pub async fn forward(
    worker: &Worker,
    request: Request<Incoming>,
    peer: &Peer,
    request_id: &str,
) -> Result<Response<server::Body>, Problem> {
    let gateway: &Gateway = &worker.shared.gateway;
    let (parts, body) = request.into_parts();
    let Some((route, rest)) = gateway.routes.find(parts.uri.path()) else {
        return Err(Problem::not_found(format!(
            "no route for {}",
            parts.uri.path()
        )));
    };
    rate_limit(gateway, peer.address.ip(), &parts.headers)?;
    if declared_length(&parts.headers).is_some_and(|length| length > gateway.max_body_bytes) {
        body::drain(body).await;
        return Err(body::too_large(gateway.max_body_bytes));
    }

    let service = &route.service;
    let retryable = may_retry(&parts.method, &parts.headers);
    let fault = Arc::new(ClientFault::default());
    // Buffered before a breaker permit is taken: a slow or oversized client body never holds
    // a half-open breaker's probe, and a 413 here never reaches the breaker.
    let body = if retryable {
        Body::Buffered(body::buffer(body, gateway.max_body_bytes).await?)
    } else {
        Body::Streamed(Some(body::stream(
            body,
            gateway.max_body_bytes,
            Arc::clone(&fault),
        )))
    };
    let (pool, permit) = choose_pool(gateway, service, &parts.headers)?;
    let trusted_peer = gateway.limiter.is_trusted(peer.address.ip());
    let call = Call {
        gateway,
        client: &worker.client,
        service,
        pool,
        method: parts.method.clone(),
        headers: outgoing_headers(&parts, peer, trusted_peer, request_id),
        path: rest,
        query: parts.uri.query().unwrap_or(""),
        attempts: if retryable { gateway.attempts } else { 1 },
        fault: &fault,
    };
    let deadline = tokio::time::Instant::now() + gateway.timeout;
    let result = match tokio::time::timeout_at(deadline, call.attempts(body, deadline)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Timeout),
    };
    match result {
        Ok(response) => {
            let status = response.status();
            if unhealthy(status) {
                permit.failure(Instant::now());
            } else if !status.is_server_error() {
                permit.success(Instant::now());
            }
            // Else a 500 (or 501, 505…): the permit is dropped unreported, counting nothing.
            Ok(relay(response))
        }
        Err(Failure::Client(problem)) => Err(problem),
        Err(failure) => {
            permit.failure(Instant::now());
            Err(exhausted(service.name(), &failure))
        }
    }
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
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

/// The pool for this request with a breaker permit: the canary if the request is in its
/// share and its breaker lets it through, else the active stable pool; 503 at once if that
/// one's breaker is open.
fn choose_pool<'a>(
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

/// One request's attempts on one pool.
struct Call<'a> {
    gateway: &'a Gateway,
    client: &'a server::Client,
    service: &'a Service,
    pool: &'a Pool,
    method: Method,
    headers: HeaderMap,
    path: &'a str,
    query: &'a str,
    attempts: usize,
    fault: &'a ClientFault,
}

impl Call<'_> {
    /// Tries endpoints until one answers without a 502/503/504, the attempts or the retry
    /// budget run out, or no untried endpoint is left; while none accepts a connection, waits
    /// for one (see the module documentation). The last unhealthy answer is relayed as is.
    async fn attempts(
        &self,
        mut body: Body,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Incoming>, Failure> {
        let mut endpoints = self.pool.endpoints();
        let mut tried = Vec::with_capacity(self.attempts);
        // Attempts that reached an instance: they count against `attempts` and the budget.
        let mut sent = 0;
        let mut last = Failure::NoEndpoint;
        let waiting_ends = tokio::time::Instant::now() + self.gateway.wait_for_instance;
        let mut waits = 0;
        let budget = &self.service.budget;
        budget.deposit();
        while sent < self.attempts {
            let Some(endpoint) = Pool::pick(&endpoints, &tried, Instant::now()) else {
                // Every endpoint was tried. If none answered (refused, or dropped a connection
                // without a response: a kept-alive one to an instance that has just stopped),
                // wait for one to come back (a restart) and try them all again; retries still
                // count against the attempts and the budget.
                let unreachable = matches!(last, Failure::Unreachable);
                let backoff = full_jitter(waits, WAIT_BACKOFF_MIN, WAIT_BACKOFF_MAX);
                let now = tokio::time::Instant::now();
                if !unreachable
                    || matches!(body, Body::Streamed(_))
                    || now + backoff >= waiting_ends.min(deadline)
                {
                    break;
                }
                waits += 1;
                tokio::time::sleep(backoff).await;
                tried.clear();
                endpoints = self.pool.endpoints();
                continue;
            };
            if sent > 0 {
                if !budget.try_withdraw(Instant::now()) {
                    self.count(&self.gateway.metrics.retries_refused);
                    break;
                }
                self.count(&self.gateway.metrics.retries);
                let attempt = u32::try_from(sent).unwrap_or(u32::MAX);
                tokio::time::sleep(full_jitter(
                    attempt - 1,
                    self.gateway.retry_backoff,
                    self.gateway.retry_backoff * 16,
                ))
                .await;
            }
            tried.push(Arc::clone(&endpoint));
            let attempt_body = match &mut body {
                Body::Buffered(bytes) => Either::Left(Full::new(bytes.clone())),
                Body::Streamed(once) => {
                    Either::Right(once.take().expect("a streamed body is sent once"))
                }
            };
            let started = Instant::now();
            let result = self.send(&endpoint, attempt_body, deadline).await;
            let seconds = started.elapsed().as_secs_f64();
            match result {
                Ok(response) => {
                    sent += 1;
                    let outcome = Outcome::of_status(response.status().as_u16());
                    endpoint.metrics.attempt(outcome, seconds);
                    if !unhealthy(response.status()) {
                        endpoint.record_success();
                        return Ok(response);
                    }
                    self.pool
                        .record_failure(&endpoint, outcome, response.status().as_str());
                    if sent >= self.attempts {
                        return Ok(response);
                    }
                    last = Failure::Status(response);
                }
                Err(SendError::InvalidPath) => {
                    return Err(Failure::Client(Problem::bad_request(
                        "the request path cannot be forwarded",
                    )));
                }
                Err(error) => {
                    if let Some(problem) = self.fault.problem(self.gateway.max_body_bytes).await {
                        // The client's body failed the attempt: nothing to hold against the
                        // upstream, nothing to retry.
                        return Err(Failure::Client(problem));
                    }
                    let outcome = match error {
                        SendError::Timeout => Outcome::Timeout,
                        SendError::Client(_) | SendError::InvalidPath => Outcome::Unreachable,
                    };
                    endpoint.metrics.attempt(outcome, seconds);
                    self.pool
                        .record_failure(&endpoint, outcome, &error.to_string());
                    if !error.is_connect() {
                        sent += 1; // it may have reached the instance
                    }
                    last = if outcome == Outcome::Timeout {
                        Failure::Timeout
                    } else {
                        Failure::Unreachable
                    };
                }
            }
        }
        match last {
            Failure::Status(response) => Ok(response),
            other => Err(other),
        }
    }

    /// One attempt on `endpoint`, bounded by the try time-out and the overall deadline.
    /// One attempt on `endpoint`, bounded by the try time-out and the overall deadline (until
    /// the response's head; its body is relayed as it comes).
    async fn send(
        &self,
        endpoint: &Endpoint,
        body: body::Outgoing,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Incoming>, SendError> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let _in_flight = endpoint.start();
        let uri = endpoint
            .uri(self.path, self.query)
            .map_err(|_| SendError::InvalidPath)?;
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = self.headers.clone();
        tokio::time::timeout(
            self.gateway.try_timeout.min(left),
            self.client.request(request),
        )
        .await
        .map_err(|_| SendError::Timeout)?
        .map_err(SendError::Client)
    }

    fn count(&self, family: &Family<RouteLabels, Counter>) {
        family
            .get_or_create(&RouteLabels {
                route: self.service.name().to_owned(),
            })
            .inc();
    }
}

/// Back-off between rounds of waiting for an instance to accept connections.
const WAIT_BACKOFF_MIN: Duration = Duration::from_millis(25);
const WAIT_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// The client's headers for the upstream: hop-by-hop removed, `X-Forwarded-*` and
/// `X-Request-Id` set. The scheme is `http` (this listener speaks plain HTTP) unless a trusted
/// proxy in front says otherwise.
fn outgoing_headers(parts: &Parts, peer: &Peer, trusted_peer: bool, request_id: &str) -> HeaderMap {
    let mut outgoing = headers::request_headers(&parts.headers, trusted_peer);
    let proto = trusted_peer
        .then(|| parts.headers.get("x-forwarded-proto").cloned())
        .flatten()
        .unwrap_or(HeaderValue::from_static("http"));
    headers::add_forwarded(
        &mut outgoing,
        Some(&peer.ip_header),
        proto,
        parts.headers.get("host"),
        Some(request_id),
    );
    outgoing
}

/// The answer when no attempt succeeded.
fn exhausted(service: &str, failure: &Failure) -> Problem {
    match failure {
        Failure::Timeout => Problem::new(ProblemStatus::GATEWAY_TIMEOUT)
            .detail(format!("{service} did not answer in time")),
        Failure::Unreachable | Failure::Status(_) => Problem::new(ProblemStatus::BAD_GATEWAY)
            .detail(format!("no instance of {service} could be reached"))
            .retry_after(1),
        Failure::Client(problem) => problem.clone(),
        Failure::NoEndpoint => Problem::new(ProblemStatus::SERVICE_UNAVAILABLE)
            .detail(format!("{service} has no instance"))
            .retry_after(1),
    }
}

/// Why one attempt got no answer.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("no answer within the try time-out")]
    Timeout,
    /// The client's path and query do not make a URI on the endpoint (never sent).
    #[error("the request path cannot be forwarded")]
    InvalidPath,
    #[error("{0}")]
    Client(#[from] hyper_util::client::legacy::Error),
}

impl SendError {
    /// The connection was never established: the request cannot have reached the instance.
    fn is_connect(&self) -> bool {
        matches!(self, Self::Client(error) if error.is_connect())
    }
}

/// Why a request got no answer from upstream.
enum Failure {
    Timeout,
    Unreachable,
    /// Every attempt answered 502/503/504; the last answer is relayed.
    Status(Response<Incoming>),
    NoEndpoint,
    /// The client's body failed the attempt (over the limit, unreadable).
    Client(Problem),
}

/// The upstream's response, streamed back without its hop-by-hop headers. Its
/// `Content-Length`, when it had one, frames the relayed body the same way.
fn relay(response: Response<Incoming>) -> Response<server::Body> {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Either::Right(body))
}
