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
//! retry budget allows it and the overall deadline has time left. Errors are problem+json:
//! upstream unreachable 502, upstream too slow 504.

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
    pool::Pool,
    service::Service,
    state::Gateway,
};

/// A request body: kept for retries, or streamed once.
enum Body {
    Buffered(Bytes),
    Streamed(Option<reqwest::Body>),
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
/// bounded channel bridges them, keeping back-pressure, and cuts the body at `limit`.
fn stream(mut payload: web::Payload, limit: usize) -> reqwest::Body {
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    actix_web::rt::spawn(async move {
        let mut sent = 0;
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()));
            if let Ok(bytes) = &chunk {
                sent += bytes.len();
                if sent > limit {
                    let _ = sender
                        .send(Err(std::io::Error::other("request body over the limit")))
                        .await;
                    return;
                }
            }
            if sender.send(chunk).await.is_err() {
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
    let (pool, permit) = choose_pool(&gateway, service, &request)?;

    let retryable = may_retry(&request);
    let body = if retryable {
        Body::Buffered(buffer(payload, gateway.max_body_bytes).await?)
    } else {
        Body::Streamed(Some(stream(payload, gateway.max_body_bytes)))
    };
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
    };
    let deadline = tokio::time::Instant::now() + gateway.timeout;
    let result = match tokio::time::timeout_at(deadline, call.attempts(body, deadline)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Timeout),
    };
    match result {
        Ok(response) => {
            if response.status().is_server_error() {
                permit.failure(Instant::now());
            } else {
                permit.success(Instant::now());
            }
            Ok(relay(&request, response))
        }
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
}

impl Call<'_> {
    /// Tries endpoints until one answers without a 5xx, the attempts or the retry budget run
    /// out, or no untried endpoint is left. The last 5xx answer is relayed as is.
    async fn attempts(
        &self,
        mut body: Body,
        deadline: tokio::time::Instant,
    ) -> Result<reqwest::Response, Failure> {
        let endpoints = self.pool.endpoints();
        let mut tried = Vec::with_capacity(self.attempts);
        let mut last = Failure::NoEndpoint;
        let budget = &self.service.budget;
        budget.deposit();
        while tried.len() < self.attempts {
            let Some(endpoint) = Pool::pick(&endpoints, &tried, Instant::now()) else {
                break;
            };
            if !tried.is_empty() {
                if !budget.try_withdraw(Instant::now()) {
                    self.count(&self.gateway.metrics.retries_refused);
                    break;
                }
                self.count(&self.gateway.metrics.retries);
                let attempt = u32::try_from(tried.len()).unwrap_or(u32::MAX);
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
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let started = Instant::now();
            let sent = {
                let _in_flight = endpoint.start();
                self.client
                    .request(self.method.clone(), endpoint.url(self.path, self.query))
                    .headers(self.headers.clone())
                    .timeout(self.gateway.try_timeout.min(left))
                    .body(attempt_body)
                    .send()
                    .await
            };
            let seconds = started.elapsed().as_secs_f64();
            match sent {
                Ok(response) => {
                    let outcome = Outcome::of_status(response.status().as_u16());
                    endpoint.metrics.attempt(outcome, seconds);
                    if outcome != Outcome::ServerError {
                        endpoint.record_success();
                        return Ok(response);
                    }
                    self.pool
                        .record_failure(&endpoint, outcome, response.status().as_str());
                    if tried.len() >= self.attempts {
                        return Ok(response);
                    }
                    last = Failure::Status(response);
                }
                Err(error) => {
                    let outcome = if error.is_timeout() {
                        Outcome::Timeout
                    } else {
                        Outcome::Unreachable
                    };
                    endpoint.metrics.attempt(outcome, seconds);
                    self.pool
                        .record_failure(&endpoint, outcome, &error.to_string());
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

    fn count(&self, family: &Family<RouteLabels, Counter>) {
        family
            .get_or_create(&RouteLabels {
                route: self.service.name().to_owned(),
            })
            .inc();
    }
}

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
        Failure::NoEndpoint => Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .detail(format!("{service} has no instance"))
            .retry_after(1),
    }
}

/// Why a request got no answer from upstream.
enum Failure {
    Timeout,
    Unreachable,
    /// Every attempt answered 5xx; the last answer is relayed.
    Status(reqwest::Response),
    NoEndpoint,
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
