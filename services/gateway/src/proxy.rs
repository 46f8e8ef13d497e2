//! The forwarding handler.
//!
//! Request bodies are streamed to the upstream, except for requests that may be retried
//! (idempotent methods, and POSTs with an `Idempotency-Key`): those are buffered, bounded by
//! `MAX_BODY_BYTES`, so a retry can send them again. Response bodies are always streamed.
//! A retry goes to an endpoint not tried yet. Errors are problem+json: no route 404, body too
//! large 413, ambiguous framing 400, upstream unreachable 502, upstream too slow 504.

use std::time::{Duration, Instant};

use actix_web::{
    HttpMessage, HttpRequest, HttpResponse,
    body::SizedStream,
    http::{Method, StatusCode},
    web::{self, Bytes},
};
use dockyard_runtime::{observe::RequestId, problem::Problem};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::{config::GatewayConfig, headers, routes::RouteTable, upstream::Upstream};

/// What every worker shares: the route table and the limits.
#[derive(Debug)]
pub struct Gateway {
    pub routes: RouteTable,
    pub attempts: usize,
    pub try_timeout: Duration,
    pub max_body_bytes: usize,
}

impl Gateway {
    pub fn new(config: &GatewayConfig) -> anyhow::Result<Self> {
        Ok(Self {
            routes: config.route_table()?,
            attempts: config.upstream_attempts,
            try_timeout: Duration::from_millis(config.upstream_try_timeout_ms),
            max_body_bytes: config.max_body_bytes,
        })
    }
}

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
    if ambiguous_framing(&request) {
        return Err(Problem::bad_request(
            "conflicting Content-Length / Transfer-Encoding headers",
        ));
    }
    if declared_length(&request).is_some_and(|length| length > gateway.max_body_bytes) {
        return Err(too_large(gateway.max_body_bytes));
    }
    let retryable = may_retry(&request);
    let mut body = if retryable {
        Body::Buffered(buffer(payload, gateway.max_body_bytes).await?)
    } else {
        Body::Streamed(Some(stream(payload, gateway.max_body_bytes)))
    };
    let outgoing = outgoing_headers(&request);
    let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes())
        .map_err(|_| Problem::bad_request("unsupported method"))?;
    let upstream = &route.upstream;
    let attempts = if retryable { gateway.attempts } else { 1 };
    let mut tried = Vec::with_capacity(attempts);
    let mut last_error = None;
    while tried.len() < attempts.min(upstream.endpoints().len()) {
        let Some(index) = upstream.pick(&tried, Instant::now()) else {
            break;
        };
        tried.push(index);
        let endpoint = &upstream.endpoints()[index];
        let attempt_body = match &mut body {
            Body::Buffered(bytes) => reqwest::Body::from(bytes.clone()),
            Body::Streamed(once) => once.take().expect("a streamed body is sent once"),
        };
        let url = endpoint.url(rest, request.query_string());
        let sent = {
            let _in_flight = endpoint.start();
            client
                .request(method.clone(), url)
                .headers(outgoing.clone())
                .timeout(gateway.try_timeout)
                .body(attempt_body)
                .send()
                .await
        };
        match sent {
            Ok(response)
                if response.status().is_server_error() && tried.len() < attempts && retryable =>
            {
                note_failure(upstream, index, &format!("answered {}", response.status()));
                last_error = Some(Failure::Status(response.status()));
            }
            Ok(response) => {
                if response.status().is_server_error() {
                    note_failure(upstream, index, &format!("answered {}", response.status()));
                } else {
                    endpoint.record_success();
                }
                return Ok(relay(&request, response));
            }
            Err(error) => {
                note_failure(upstream, index, &error.to_string());
                last_error = Some(if error.is_timeout() {
                    Failure::Timeout
                } else {
                    Failure::Unreachable
                });
            }
        }
    }
    Err(exhausted(upstream, last_error))
}

/// The client's headers for the upstream: hop-by-hop removed, `X-Forwarded-*` and
/// `X-Request-Id` set.
fn outgoing_headers(request: &HttpRequest) -> reqwest::header::HeaderMap {
    let mut outgoing = headers::request_headers(request.headers());
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
fn exhausted(upstream: &Upstream, last_error: Option<Failure>) -> Problem {
    match last_error {
        Some(Failure::Timeout) => Problem::new(StatusCode::GATEWAY_TIMEOUT)
            .detail(format!("{} did not answer in time", upstream.name())),
        Some(Failure::Status(status)) => Problem::new(StatusCode::BAD_GATEWAY).detail(format!(
            "every attempt on {} failed; last answer {status}",
            upstream.name()
        )),
        Some(Failure::Unreachable) | None => Problem::new(StatusCode::BAD_GATEWAY)
            .detail(format!(
                "no instance of {} could be reached",
                upstream.name()
            ))
            .retry_after(1),
    }
}

#[derive(Clone, Copy)]
enum Failure {
    Timeout,
    Unreachable,
    Status(reqwest::StatusCode),
}

fn note_failure(upstream: &Upstream, index: usize, reason: &str) {
    let endpoint = &upstream.endpoints()[index];
    if endpoint.record_failure(Instant::now(), upstream.policy()) {
        tracing::warn!(upstream = upstream.name(), endpoint = %endpoint.base(), reason, "endpoint ejected");
    } else {
        tracing::debug!(upstream = upstream.name(), endpoint = %endpoint.base(), reason, "attempt failed");
    }
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
