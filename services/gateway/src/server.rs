//! The data plane's HTTP server: hyper 1, with a current-thread runtime per worker.
//!
//! Each worker thread accepts on a listener of its own (`SO_REUSEPORT` on one address, so the
//! kernel spreads connections over them), serves its connections, and sends their requests
//! upstream through an HTTP client of its own whose pooled connections live on the same
//! thread. A request is read, forwarded and answered without waking another thread, and the
//! request and response types are the ones the client takes and gives (`http` 1): headers and
//! bodies pass through without conversion or a channel in between.
//!
//! Each connection is read through [`Guarded`], which refuses requests with ambiguous framing
//! (request smuggling) before hyper parses them.
//!
//! Every connection is admitted against the connection budget and watched for the edge's time
//! limits ([`crate::connections`]): a request's response body carries the guard that tells the
//! connection its request has ended.
//!
//! On shutdown the listeners close, idle keep-alive connections are closed, and requests in
//! flight finish, bounded by `SHUTDOWN_TIMEOUT_SECS`.

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    net::{SocketAddr, ToSocketAddrs},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use dockyard_runtime::trace;
use dockyard_runtime::{
    health::Health,
    metrics::{HttpLabels, Metrics, method_label},
    observe,
    problem::Problem,
};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::{
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{
    client::legacy::connect::HttpConnector,
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    body,
    connections::{Connections, InFlight},
    framing::{Guarded, MAX_HEAD_BYTES},
    proxy,
    state::Gateway,
};

/// A response body: one the gateway wrote, or the upstream's, streamed.
pub type Body = Either<Full<Bytes>, Incoming>;

/// A worker's HTTP client for the upstreams (hyper's, pooled connections per worker).
pub type Client = hyper_util::client::legacy::Client<HttpConnector, body::Outgoing>;

const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
/// The metrics' `route` label of forwarded requests (the catch-all route's pattern).
const FORWARD_ROUTE: &str = "/{path:.*}";
/// Pending connections per listener.
const BACKLOG: u32 = 1024;
/// How long an idle pooled connection to an upstream is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A pause of the listener after a failed `accept` (out of descriptors): bounded retries.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// What every worker shares.
#[derive(Debug)]
pub struct Shared {
    pub gateway: Arc<Gateway>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// Connect time-out of the workers' HTTP clients.
    pub connect_timeout: Duration,
    /// Every client connection: the budget and the time limits.
    pub connections: Arc<Connections>,
}

/// One worker's view: the shared state, its own client, and its handles on the RED metrics.
#[derive(Debug)]
pub struct Worker {
    pub shared: Arc<Shared>,
    pub client: Client,
    /// Request count and latency per (method, route, status), resolved once per worker: a
    /// request does not build label strings or look them up in the registry.
    red: Mutex<HashMap<RedKey, (Counter, Histogram)>>,
}

type RedKey = (&'static str, &'static str, u16);

impl Worker {
    fn observe(&self, key: RedKey, seconds: f64) {
        let mut red = self.red.lock().expect("the lock is never poisoned");
        let (requests, duration) = red.entry(key).or_insert_with(|| {
            let (method, route, status) = key;
            let labels = HttpLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            };
            let metrics = &self.shared.metrics;
            (
                metrics.http_requests.get_or_create(&labels).clone(),
                metrics.http_request_duration.get_or_create(&labels).clone(),
            )
        });
        requests.inc();
        duration.observe(seconds);
    }
}

/// The client at the other end of a connection.
#[derive(Debug)]
pub struct Peer {
    pub address: SocketAddr,
    /// Its IP address as `X-Forwarded-For` carries it, formatted once per connection.
    pub ip_header: HeaderValue,
}

/// Bound listeners, one per worker, not yet served.
#[derive(Debug)]
pub struct Listeners {
    listeners: Vec<std::net::TcpListener>,
    port: u16,
}

impl Listeners {
    /// Binds `workers` listeners on `host:port` (`0`: a free port, the same for all).
    /// Must run inside a tokio runtime.
    pub fn bind(host: &str, port: u16, workers: usize) -> io::Result<Self> {
        let address = (host, port).to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{host}` names no address"),
            )
        })?;
        let first = reuse_port_listener(address)?;
        let port = first.local_addr()?.port();
        let mut listeners = vec![first];
        for _ in 1..workers.max(1) {
            listeners.push(reuse_port_listener(SocketAddr::new(address.ip(), port))?);
        }
        Ok(Self { listeners, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

fn reuse_port_listener(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)?.into_std()
}

/// The running workers.
#[derive(Debug)]
pub struct DataPlane {
    threads: Vec<thread::JoinHandle<()>>,
    stop: CancellationToken,
}

impl DataPlane {
    /// Starts a worker thread per listener.
    pub fn start(listeners: Listeners, shared: &Arc<Shared>, drain_for: Duration) -> Self {
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&shared.connections).run_sweeper(stop.clone()));
        let threads = listeners
            .listeners
            .into_iter()
            .enumerate()
            .map(|(index, listener)| {
                let (shared, stop) = (Arc::clone(shared), stop.clone());
                thread::Builder::new()
                    .name(format!("gateway-worker-{index}"))
                    .spawn(move || run_worker(listener, shared, &stop, drain_for))
                    .expect("spawning a worker thread")
            })
            .collect();
        Self { threads, stop }
    }

    /// Closes the listeners, lets requests in flight finish, and waits for the workers.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

impl Drop for DataPlane {
    /// A data plane dropped without [`DataPlane::stop`] (its owner's task was cancelled)
    /// still stops its workers.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn run_worker(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    stop: &CancellationToken,
    drain_for: Duration,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "a gateway worker could not start its runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(shared.connect_timeout));
        connector.set_nodelay(true);
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            // Head and body copied into one buffer and sent with one `send`: the bodies here
            // are small, and `writev`'s longer kernel path measured ~6 % slower (BENCHMARKS.md).
            .http1_writev(false)
            .build(connector);
        let worker = Arc::new(Worker {
            shared,
            client,
            red: Mutex::new(HashMap::new()),
        });
        if let Err(error) = accept(listener, &worker, stop, drain_for).await {
            tracing::error!(%error, "a gateway worker stopped accepting");
        }
    });
}

async fn accept(
    listener: std::net::TcpListener,
    worker: &Arc<Worker>,
    stop: &CancellationToken,
    drain_for: Duration,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let connections = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    // The time limits are the connections' own (`HEADER_TIMEOUT` with a 408, idle and body
    // time-outs), not hyper's header timer, which closes without an answer and also counts
    // the idle time between requests.
    http.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES)
        // As for the client: one `send` per response rather than a `writev`.
        .writev(false);
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: counted, warned about now and
                    // then, the idlest connection closed, and a pause rather than a spin.
                    worker.shared.connections.accept_failed(&error);
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        // At the budget with nothing to close: refused at once (the socket closes here).
        let Some(registered) = worker.shared.connections.admit() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let worker = Arc::clone(worker);
        let peer = Arc::new(Peer {
            address: peer,
            ip_header: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP address is a valid header value"),
        });
        let conn = Arc::clone(&registered.conn);
        let service = service_fn(move |request| {
            let (worker, peer) = (Arc::clone(&worker), Arc::clone(&peer));
            let in_flight = conn.request();
            async move {
                let response = serve(&worker, request, &peer).await;
                Ok::<_, Infallible>(response.map(|body| Tracked { body, in_flight }))
            }
        });
        let stream = TokioIo::new(Guarded::new(stream, Arc::clone(&registered.conn)));
        let connection = connections.watch(http.serve_connection(stream, service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(registered);
        });
    }
    drop(listener);
    tokio::select! {
        () = connections.shutdown() => {}
        () = tokio::time::sleep(drain_for) => {
            tracing::warn!(after_secs = drain_for.as_secs(), "requests still in flight at the end of the drain");
        }
    }
    Ok(())
}

/// A response body that ends its request's [`InFlight`] when hyper is done with it (sent, or
/// dropped with the connection): the connection is idle from then on.
#[derive(Debug)]
pub struct Tracked {
    body: Body,
    #[allow(dead_code)] // held for its Drop
    in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = <Body as hyper::body::Body>::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// One request: the process's own health routes, else forwarded (its metrics are on the admin
/// listener, [`crate::admin`]). Each request
/// gets a request id (the client's when sane), one log event and its RED metrics.
async fn serve(worker: &Worker, request: Request<Incoming>, peer: &Peer) -> Response<Body> {
    let started = Instant::now();
    let request_id =
        incoming_request_id(request.headers()).map_or_else(observe::new_request_id, str::to_owned);
    let method = request.method().clone();
    let shared = &worker.shared;
    let mut span = tracing::Span::none();
    let mut traced = None;
    let (route, mut response, failure) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/health/live") => (
            "/health/live",
            json(StatusCode::OK, &shared.health.live_report()),
            None,
        ),
        (&Method::GET, "/health/ready") => {
            let (ready, report) = shared.health.ready_report().await;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            ("/health/ready", json(status, &report), None)
        }
        _ => {
            // The request's server span: it continues the client's trace or starts one, and the
            // upstream request carries it on (`proxy::forward` renames it after the route).
            span = tracing::info_span!(
                "request",
                request_id = %request_id,
                method = %method,
                route = FORWARD_ROUTE,
                otel.name = %method,
                otel.kind = "server",
            );
            trace::continue_from(&span, || trace::parent_from_http(request.headers()));
            let context = traced.insert(trace::Traced::of(&span));
            match proxy::forward(worker, request, peer, &request_id, context)
                .instrument(span.clone())
                .await
            {
                Ok(response) => (FORWARD_ROUTE, response, None),
                Err(problem) => {
                    let response = problem_response(&problem);
                    (FORWARD_ROUTE, response, Some(problem))
                }
            }
        }
    };
    let latency = started.elapsed();
    let status = response.status();
    let latency_ms = latency.as_secs_f64() * 1000.0;
    if route == FORWARD_ROUTE {
        trace::http_status(&span, status.as_u16());
        // Outside the span, with its ids as fields: inside it, the line would repeat the
        // span's fields and cost the JSON formatter twice as much (callgrind).
        let ids = traced.as_ref().and_then(trace::Traced::ids);
        let trace_id = ids.map(|(trace_id, _)| tracing::field::display(trace_id));
        let span_id = ids.map(|(_, span_id)| tracing::field::display(span_id));
        if status.is_server_error() {
            tracing::error!(trace_id, span_id, request_id = %request_id, method = %method, route, status = status.as_u16(), latency_ms, error = failure.as_ref().map(ToString::to_string), "request failed");
        } else {
            tracing::info!(trace_id, span_id, request_id = %request_id, method = %method, route, status = status.as_u16(), latency_ms, "request completed");
        }
    } else if status.is_success() {
        // The gateway's own health probes: routine when they succeed, and a 503 (draining) is
        // a state, not a failure.
        tracing::debug!(request_id = %request_id, method = %method, route, status = status.as_u16(), latency_ms, "request completed");
    } else {
        tracing::info!(request_id = %request_id, method = %method, route, status = status.as_u16(), latency_ms, "request completed");
    }
    worker.observe(
        (method_label(method.as_str()), route, status.as_u16()),
        latency.as_secs_f64(),
    );
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// The client's `X-Request-Id` when it is sane (printable ASCII, at most 128 bytes).
fn incoming_request_id(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(REQUEST_ID)?.to_str().ok()?;
    observe::is_sane_request_id(value).then_some(value)
}

fn full(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("a JSON value serialises");
    full(status, "application/json", body)
}

/// A problem as an `application/problem+json` response, with the headers it carries
/// ([`Problem::headers`]).
pub fn problem_response(problem: &Problem) -> Response<Body> {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).expect("a problem always serialises");
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    for (name, value) in problem.headers() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(http::HeaderName::from_static(name), value);
        }
    }
    response
}
