//! The forwarding handler.
//!
//! In order: route (404), per-client rate limit (429), framing and size checks (400, 413),
//! pool choice (canary share, else the active stable pool; an open breaker falls back from
//! the canary, or answers 503 with `Retry-After` at once), then attempts.
//!
//! Request bodies are streamed to the upstream, except for requests that may be retried
//! (idempotent methods, and POSTs with an `Idempotency-Key`): those are buffered, bounded by
//! `MAX_BODY_BYTES`, so a retry can send them again. Response bodies are always streamed.
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
    sync::Arc,
    time::{Duration, Instant},
};

use actix_web::{
    HttpMessage, HttpRequest, HttpResponse,
    body::SizedStream,
    http::{Method, StatusCode},
    web::{self, Bytes},
};
use dockyard_resilience::{Permit, full_jitter};
use dockyard_runtime::{observe::RequestId, problem::Problem};
use futures_util::StreamExt;
use prometheus_client::metrics::{counter::Counter, family::Family};
use tokio::sync::mpsc;

use crate::{
    headers,
    metrics::{Outcome, PoolLabels, RouteLabels},
    pool::{Endpoint, Pool},
    service::Service,
    state::Gateway,
};

/// A request body: kept for retries, or streamed once.
enum Body {
    Buffered(Bytes),
    Streamed(Option<reqwest::Body>),
}

/// Set by a streamed body when the *client* is at fault: it sent more than the limit, or its
/// body could not be read. A failed attempt is then the client's, not the upstream's.
#[derive(Debug, Default)]
struct ClientFault {
    over_limit: std::sync::atomic::AtomicBool,
    unreadable: std::sync::atomic::AtomicBool,
}

impl ClientFault {
    fn problem(&self, limit: usize) -> Option<Problem> {
        use std::sync::atomic::Ordering::Acquire;
        if self.over_limit.load(Acquire) {
            Some(too_large(limit))
        } else if self.unreadable.load(Acquire) {
            Some(Problem::bad_request("the request body could not be read"))
        } else {
            None
        }
    }
}

/// `502`, `503` and `504` say an instance (or what is behind it) is unhealthy; other statuses
/// say nothing about its health (see the module documentation).
fn unhealthy(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

fn may_retry(request: &HttpRequest) -> bool {
    matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) || (*request.method() == Method::POST && request.headers().contains_key("idempotency-key"))
}

/// Both `Content-Length` and `Transfer-Encoding`, or several differing lengths, make framing
/// ambiguous: a classic request-smuggling vector. Refuse rather than guess.
fn ambiguous_framing(request: &HttpRequest) -> bool {
    let headers = request.headers();
    let lengths: Vec<_> = headers.get_all("content-length").collect();
    let chunked = headers.contains_key("transfer-encoding");
    (chunked && !lengths.is_empty()) || lengths.windows(2).any(|pair| pair[0] != pair[1])
}

fn declared_length(request: &HttpRequest) -> Option<usize> {
    request
        .headers()
        .get("content-length")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large(limit: usize) -> Problem {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
        .detail(format!("the request body is larger than {limit} bytes"))
}

async fn buffer(mut payload: web::Payload, limit: usize) -> Result<Bytes, Problem> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| Problem::bad_request(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// actix's payload lives on its worker (`!Send`); the client needs a `Send` stream. A small
/// bounded channel bridges them, keeping back-pressure, and cuts the body at `limit`; `fault`
/// records why a body was cut.
fn stream(mut payload: web::Payload, limit: usize, fault: Arc<ClientFault>) -> reqwest::Body {
    use std::sync::atomic::Ordering::Release;
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    actix_web::rt::spawn(async move {
        let mut sent = 0;
        while let Some(chunk) = payload.next().await {
            let chunk = match chunk {
                Ok(bytes) => bytes,
                Err(error) => {
                    fault.unreadable.store(true, Release);
                    let _ = sender
                        .send(Err(std::io::Error::other(error.to_string())))
                        .await;
                    return;
                }
            };
            sent += chunk.len();
            if sent > limit {
                fault.over_limit.store(true, Release);
                let _ = sender
                    .send(Err(std::io::Error::other("request body over the limit")))
                    .await;
                return;
            }
            if sender.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    reqwest::Body::wrap_stream(futures_util::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|chunk| (chunk, receiver)) },
    ))
}

/// Forwards any request that matches a route.
pub async fn forward(
    request: HttpRequest,
    payload: web::Payload,
    gateway: web::Data<Gateway>,
    client: web::Data<reqwest::Client>,
) -> Result<HttpResponse, Problem> {
    let Some((route, rest)) = gateway.routes.find(request.path()) else {
        return Err(Problem::not_found(format!(
            "no route for {}",
            request.path()
        )));
    };
    rate_limit(&gateway, &request)?;
    if ambiguous_framing(&request) {
        return Err(Problem::bad_request(
            "conflicting Content-Length / Transfer-Encoding headers",
        ));
    }
    if declared_length(&request).is_some_and(|length| length > gateway.max_body_bytes) {
        return Err(too_large(gateway.max_body_bytes));
    }

    let service = &route.service;
    let retryable = may_retry(&request);
    let fault = Arc::new(ClientFault::default());
    // Buffered before a breaker permit is taken: a slow or oversized client body never holds
    // a half-open breaker's probe, and a 413 here never reaches the breaker.
    let body = if retryable {
        Body::Buffered(buffer(payload, gateway.max_body_bytes).await?)
    } else {
        Body::Streamed(Some(stream(
            payload,
            gateway.max_body_bytes,
            Arc::clone(&fault),
        )))
    };
    let (pool, permit) = choose_pool(&gateway, service, &request)?;
    let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes())
        .map_err(|_| Problem::bad_request("unsupported method"))?;
    let trusted_peer = request
        .peer_addr()
        .is_some_and(|peer| gateway.limiter.is_trusted(peer.ip()));
    let call = Call {
        gateway: &gateway,
        client: &client,
        service,
        pool,
        method,
        headers: outgoing_headers(&request, trusted_peer),
        path: rest,
        query: request.query_string(),
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
            Ok(relay(&request, response))
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
fn rate_limit(gateway: &Gateway, request: &HttpRequest) -> Result<(), Problem> {
    let Some(ip) = gateway.limiter.client_ip(request) else {
        return Ok(());
    };
    gateway.limiter.check(ip).map_err(|wait| {
        gateway.metrics.rate_limited.inc();
        Problem::new(StatusCode::TOO_MANY_REQUESTS)
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
    request: &HttpRequest,
) -> Result<(&'a Arc<Pool>, Permit<'a>), Problem> {
    let now = Instant::now();
    if let Some(canary) = service.canary_for(request.headers()) {
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
            Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE)
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
    client: &'a reqwest::Client,
    service: &'a Service,
    pool: &'a Pool,
    method: reqwest::Method,
    headers: reqwest::header::HeaderMap,
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
    ) -> Result<reqwest::Response, Failure> {
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
                Body::Buffered(bytes) => reqwest::Body::from(bytes.clone()),
                Body::Streamed(once) => once.take().expect("a streamed body is sent once"),
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
                Err(error) => {
                    if let Some(problem) = self.fault.problem(self.gateway.max_body_bytes) {
                        // The client's body failed the attempt: nothing to hold against the
                        // upstream, nothing to retry.
                        return Err(Failure::Client(problem));
                    }
                    let outcome = if error.is_timeout() {
                        Outcome::Timeout
                    } else {
                        Outcome::Unreachable
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
    async fn send(
        &self,
        endpoint: &Endpoint,
        body: reqwest::Body,
        deadline: tokio::time::Instant,
    ) -> reqwest::Result<reqwest::Response> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let _in_flight = endpoint.start();
        self.client
            .request(self.method.clone(), endpoint.url(self.path, self.query))
            .headers(self.headers.clone())
            .timeout(self.gateway.try_timeout.min(left))
            .body(body)
            .send()
            .await
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
/// `X-Request-Id` set.
fn outgoing_headers(request: &HttpRequest, trusted_peer: bool) -> reqwest::header::HeaderMap {
    let mut outgoing = headers::request_headers(request.headers(), trusted_peer);
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone());
    let info = request.connection_info().clone();
    headers::add_forwarded(
        &mut outgoing,
        request.peer_addr().map(|peer| peer.ip().to_string()),
        info.scheme(),
        request.headers().get("host").and_then(|h| h.to_str().ok()),
        request_id.as_deref(),
    );
    outgoing
}

/// The answer when no attempt succeeded.
fn exhausted(service: &str, failure: &Failure) -> Problem {
    match failure {
        Failure::Timeout => Problem::new(StatusCode::GATEWAY_TIMEOUT)
            .detail(format!("{service} did not answer in time")),
        Failure::Unreachable | Failure::Status(_) => Problem::new(StatusCode::BAD_GATEWAY)
            .detail(format!("no instance of {service} could be reached"))
            .retry_after(1),
        Failure::Client(problem) => problem.clone(),
        Failure::NoEndpoint => Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .detail(format!("{service} has no instance"))
            .retry_after(1),
    }
}

/// Why a request got no answer from upstream.
enum Failure {
    Timeout,
    Unreachable,
    /// Every attempt answered 502/503/504; the last answer is relayed.
    Status(reqwest::Response),
    NoEndpoint,
    /// The client's body failed the attempt (over the limit, unreadable).
    Client(Problem),
}

/// The upstream's response, streamed back without its hop-by-hop headers.
fn relay(request: &HttpRequest, response: reqwest::Response) -> HttpResponse {
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut builder = HttpResponse::build(status);
    let connection = headers::response_connection_tokens(response.headers());
    for (name, value) in response.headers() {
        if headers::forward_response_header(name.as_str(), &connection) {
            builder.append_header((name.as_str(), value.as_bytes()));
        }
    }
    let length = response.content_length();
    let body = response.bytes_stream();
    match length {
        _ if *request.method() == Method::HEAD => builder.finish(),
        Some(length) => builder.body(SizedStream::new(length, body)),
        None => builder.streaming(body),
    }
}
