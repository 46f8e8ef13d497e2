//! A request's attempts on its pool: which endpoint next, retries within the attempts, the
//! retry budget and the deadline, waiting for an instance that is restarting, and what each
//! outcome tells the pool's breaker and the endpoint's passive health.
//!
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
//! `4xx` answers are healthy ones. A `503` marked as load shedding (`dockyard-shed`, with
//! `Retry-After`: the order service's admission control) is a healthy instance refusing by
//! choice: it is relayed as is, never retried on another instance (they share the limit) and
//! never held against the instance. Requests the gateway refuses itself (`400`, `404`, `413`,
//! `429`) and bodies the client cuts short or sends over the limit never reach the breaker.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use actix_web::http::StatusCode as ProblemStatus;
use dockyard_resilience::{Permit, full_jitter};
use dockyard_runtime::problem::{Problem, SHED_HEADER};
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::{
    body::{self, ClientFault},
    metrics::{Outcome, RouteLabels},
    pool::{DEPARTURE_CHECK, Endpoint, Latency, Pool},
    server,
    service::Service,
    state::Gateway,
};

/// A request body: kept for retries, or streamed once.
#[derive(Debug)]
pub enum Payload {
    Buffered(Bytes),
    Streamed(Option<body::Capped>),
}

/// What an upstream's answer says about the instance that gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Any answer but the two below.
    Healthy,
    /// `502`, `503` or `504`: the instance (or what is behind it) is unhealthy; retried.
    Unhealthy,
    /// A `503` the instance sheds by choice ([`SHED_HEADER`]): relayed, not retried, and held
    /// neither for nor against the instance.
    Shed,
}

impl Verdict {
    fn of<B>(response: &Response<B>) -> Self {
        match response.status().as_u16() {
            503 if response.headers().contains_key(SHED_HEADER) => Self::Shed,
            502..=504 => Self::Unhealthy,
            _ => Self::Healthy,
        }
    }
}

/// Tells the balancer how long an attempt on `endpoint` took. A failure (refused, dropped,
/// 502/503/504) or a shed answer is often fast; it counts as at least
/// [`Latency::FAILURE_PENALTY`], so that a broken or overloaded instance never looks like the
/// quickest (ejection still takes a broken one out after repeated failures).
fn weigh(
    endpoint: &Endpoint,
    result: &Result<Response<Incoming>, SendError>,
    started: Instant,
    took: Duration,
) {
    let failed = match result {
        Ok(response) => Verdict::of(response) != Verdict::Healthy,
        Err(error) => !matches!(error, SendError::InvalidPath),
    };
    endpoint.observe(
        if failed {
            took.max(Latency::FAILURE_PENALTY)
        } else {
            took
        },
        started + took,
    );
}

/// Idempotent methods, and POSTs with an `Idempotency-Key`, may be sent more than once.
pub fn may_retry(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) || (*method == Method::POST && headers.contains_key("idempotency-key"))
}

/// One request's attempts on one pool.
#[derive(Debug)]
pub struct Call<'a> {
    pub gateway: &'a Gateway,
    pub client: &'a server::Client,
    pub service: &'a Service,
    pub pool: &'a Pool,
    pub method: Method,
    pub headers: HeaderMap,
    pub path: &'a str,
    pub query: &'a str,
    pub attempts: usize,
    pub fault: &'a ClientFault,
}

impl Call<'_> {
    /// Tries endpoints until one answers without a 502/503/504, the attempts or the retry
    /// budget run out, or no untried endpoint is left; while none accepts a connection, waits
    /// for one (see the module documentation). The last unhealthy answer is relayed as is.
    async fn attempts(
        &self,
        mut body: Payload,
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
                    || matches!(body, Payload::Streamed(_))
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
            let attempt_body = match &mut body {
                Payload::Buffered(bytes) => Either::Left(Full::new(bytes.clone())),
                Payload::Streamed(once) => match once.take() {
                    Some(streamed) => Either::Right(streamed),
                    // Handed to an attempt whose connection was refused: gone with it, so no
                    // other instance can be tried (the worker used to panic here).
                    None => break,
                },
            };
            tried.push(Arc::clone(&endpoint));
            let started = Instant::now();
            let result = self.send(&endpoint, attempt_body, deadline).await;
            let took = started.elapsed();
            let seconds = took.as_secs_f64();
            weigh(&endpoint, &result, started, took);
            match result {
                Ok(response) => {
                    sent += 1;
                    match self.answered(&endpoint, response, seconds) {
                        Answered::Relay(relayed) => return Ok(relayed),
                        Answered::Unhealthy(last_one) if sent >= self.attempts => {
                            return Ok(last_one);
                        }
                        Answered::Unhealthy(unhealthy) => last = Failure::Status(unhealthy),
                    }
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
                        SendError::Client(_) | SendError::InvalidPath | SendError::Gone => {
                            Outcome::Unreachable
                        }
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

    /// Records an answer against the endpoint that gave it, and says what to do with it.
    fn answered(
        &self,
        endpoint: &Arc<Endpoint>,
        response: Response<Incoming>,
        seconds: f64,
    ) -> Answered {
        let outcome = Outcome::of_status(response.status().as_u16());
        endpoint.metrics.attempt(outcome, seconds);
        match Verdict::of(&response) {
            Verdict::Healthy => {
                endpoint.record_success();
                Answered::Relay(response)
            }
            Verdict::Shed => Answered::Relay(response),
            Verdict::Unhealthy => {
                self.pool
                    .record_failure(endpoint, outcome, response.status().as_str());
                Answered::Unhealthy(response)
            }
        }
    }

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
        let limit = self.gateway.try_timeout.min(left);
        let answer = self.client.request(request);
        if self.attempts < 2 {
            return tokio::time::timeout(limit, answer)
                .await
                .map_err(|_| SendError::Timeout)?
                .map_err(SendError::Client);
        }
        // A request that may be tried elsewhere does not wait out the try time-out on an
        // instance that has left discovery (a partition drops its packets without a reset): it
        // waits in slices of the time-out, and between two looks whether the instance left.
        tokio::pin!(answer);
        let started = tokio::time::Instant::now();
        loop {
            let remaining = limit.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(SendError::Timeout);
            }
            match tokio::time::timeout(remaining.min(DEPARTURE_CHECK), &mut answer).await {
                Ok(answered) => return answered.map_err(SendError::Client),
                Err(_) if endpoint.departed(Instant::now()) => return Err(SendError::Gone),
                Err(_) => {}
            }
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

/// Back-off between rounds of waiting for an instance to accept connections.
const WAIT_BACKOFF_MIN: Duration = Duration::from_millis(25);
const WAIT_BACKOFF_MAX: Duration = Duration::from_millis(250);

impl Call<'_> {
    /// Runs the attempts within the overall deadline and reports the outcome to the pool's
    /// breaker through `permit`; the upstream's answer, or the problem to answer with.
    pub async fn run(
        &self,
        body: Payload,
        permit: Permit<'_>,
    ) -> Result<Response<Incoming>, Problem> {
        let deadline = tokio::time::Instant::now() + self.gateway.timeout;
        let result = match tokio::time::timeout_at(deadline, self.attempts(body, deadline)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout),
        };
        match result {
            Ok(response) => {
                match Verdict::of(&response) {
                    Verdict::Unhealthy => permit.failure(Instant::now()),
                    Verdict::Healthy if !response.status().is_server_error() => {
                        permit.success(Instant::now());
                    }
                    // A 500 (or 501, 505…) or a shed 503: the permit is dropped unreported,
                    // counting nothing.
                    Verdict::Healthy | Verdict::Shed => {}
                }
                Ok(response)
            }
            Err(Failure::Client(problem)) => Err(problem),
            Err(failure) => {
                permit.failure(Instant::now());
                Err(exhausted(self.service.name(), &failure))
            }
        }
    }
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

/// What to do with an upstream's answer.
enum Answered {
    /// Relay it to the client.
    Relay(Response<Incoming>),
    /// The instance is unhealthy: try another, or relay it if none is left.
    Unhealthy(Response<Incoming>),
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
    /// The endpoint left discovery while the attempt waited (its address is gone: the
    /// instance was removed or cut off), so the attempt stopped waiting for an answer.
    #[error("the instance left discovery during the attempt")]
    Gone,
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
