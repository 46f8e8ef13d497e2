use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, dev::ServerHandle, web};
use dockyard_runtime::{config, server::HttpConfig, telemetry};
use gateway::{
    config::{GatewayEnv, Settings},
    startup::Application,
};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

/// A test upstream: echoes who it is and what it received. `/fail` answers 500 (a bug some
/// input triggers), `/shed` a load-shedding 503 (`dockyard-shed`, `Retry-After`), `/echo` returns the request body, `/slow?ms=N` answers after N ms; while
/// `broken` is set, every request (health checks included) answers 503, as an unhealthy
/// instance does; while `slow_ms` is not 0, every request other than health checks answers
/// that much later (a slow instance that still passes its checks). `hits` counts requests
/// other than health checks.
pub struct Upstream {
    pub url: String,
    pub broken: Arc<AtomicBool>,
    pub slow_ms: Arc<AtomicU64>,
    pub hits: Arc<AtomicUsize>,
    handle: ServerHandle,
}

#[derive(Clone)]
struct Behaviour {
    name: String,
    broken: Arc<AtomicBool>,
    slow_ms: Arc<AtomicU64>,
    hits: Arc<AtomicUsize>,
}

async fn answer(request: HttpRequest, body: web::Bytes, me: web::Data<Behaviour>) -> HttpResponse {
    if !request.path().starts_with("/health") {
        me.hits.fetch_add(1, Ordering::Relaxed);
        let slow = me.slow_ms.load(Ordering::Relaxed);
        if slow > 0 {
            tokio::time::sleep(Duration::from_millis(slow)).await;
        }
    }
    if me.broken.load(Ordering::Relaxed) {
        return HttpResponse::ServiceUnavailable().body("broken");
    }
    if request.path() == "/fail" {
        return HttpResponse::InternalServerError().body("a bug");
    }
    if request.path() == "/shed" {
        return HttpResponse::ServiceUnavailable()
            .insert_header(("retry-after", "1"))
            .insert_header((dockyard_runtime::problem::SHED_HEADER, "overloaded"))
            .body("too many orders in progress");
    }
    if request.path() == "/echo" {
        return HttpResponse::Ok().body(body);
    }
    if request.path() == "/slow" {
        let ms = request
            .query_string()
            .strip_prefix("ms=")
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(100);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let headers: Map<String, Value> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or_default())))
        .collect();
    HttpResponse::Ok()
        .insert_header(("x-upstream", me.name.as_str()))
        .insert_header(("keep-alive", "timeout=99"))
        .json(json!({
            "name": me.name,
            "method": request.method().as_str(),
            "path": request.path(),
            "query": request.query_string(),
            "headers": headers,
            "body_len": body.len(),
        }))
}

/// An upstream on `ip` and a free port.
pub fn upstream(name: &str, ip: &str, broken: bool) -> Upstream {
    upstream_on(name, ip, 0, broken)
}

/// An upstream on `ip:port` (`0`: any free port).
pub fn upstream_on(name: &str, ip: &str, port: u16, broken: bool) -> Upstream {
    let behaviour = Behaviour {
        name: name.to_owned(),
        broken: Arc::new(AtomicBool::new(broken)),
        slow_ms: Arc::new(AtomicU64::new(0)),
        hits: Arc::new(AtomicUsize::new(0)),
    };
    let data = web::Data::new(behaviour.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
            .default_service(web::to(answer))
    })
    .workers(1)
    .disable_signals()
    .bind((ip, port))
    .expect("binding a loopback address");
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    Upstream {
        url: format!("http://{ip}:{port}"),
        broken: behaviour.broken,
        slow_ms: behaviour.slow_ms,
        hits: behaviour.hits,
        handle,
    }
}

impl Upstream {
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn set_slow(&self, ms: u64) {
        self.slow_ms.store(ms, Ordering::Relaxed);
    }

    pub fn set_broken(&self, broken: bool) {
        self.broken.store(broken, Ordering::Relaxed);
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// A free loopback port nothing listens on.
pub fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.9:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.9:{port}")
}

/// A running gateway: its base URL, its admin listener's base URL (admin API, metrics) and
/// its stop switch (dropping it stops the gateway).
pub struct TestGateway {
    pub url: String,
    pub admin: String,
    _stop: oneshot::Sender<()>,
}

/// The admin token tests use.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A gateway with `ROUTES=routes` and `extra` variables. Unless `extra` says otherwise,
/// discovery and health checks run every 100 ms and the admin API is on (port 0).
pub async fn gateway_with(routes: &str, extra: &[(&str, &str)]) -> TestGateway {
    telemetry::init_with_writer(telemetry::LogFormat::Json, std::io::sink);
    let defaults = [
        ("DISCOVERY_INTERVAL_MS", "100"),
        ("HEALTH_CHECK_INTERVAL_MS", "100"),
        ("ADMIN_PORT", "0"),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    let mut vars = vec![("ROUTES", routes)];
    vars.extend_from_slice(extra);
    for (name, value) in defaults {
        if !extra.iter().any(|(n, _)| *n == name) {
            vars.push((name, value));
        }
    }
    let settings = Settings {
        http: HttpConfig::ephemeral(),
        gateway: config::from_vars::<GatewayEnv, _, _>(vars)
            .unwrap()
            .parse()
            .unwrap(),
    };
    let app = Application::build(&settings).await.unwrap();
    let url = format!("http://127.0.0.1:{}", app.port());
    let admin = format!("http://127.0.0.1:{}", app.admin_port());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestGateway {
        url,
        admin,
        _stop: stop,
    }
}

/// [`gateway_with`], returning the base URL and the stop switch.
pub async fn gateway(routes: &str, extra: &[(&str, &str)]) -> (String, TestGateway) {
    let gateway = gateway_with(routes, extra).await;
    (gateway.url.clone(), gateway)
}

impl TestGateway {
    /// `GET /upstreams` on the admin API.
    pub async fn upstreams(&self) -> Value {
        reqwest::Client::new()
            .get(format!("{}/upstreams", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A `PUT` on the admin API; returns the status and body.
    pub async fn admin_put(&self, path: &str, body: Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .put(format!("{}{path}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }
}

impl TestGateway {
    /// The gateway's own metrics (from the admin listener).
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Polls `condition` every 20 ms for at most `seconds`; panics with `what` if it never holds.
pub async fn eventually<F, Fut>(seconds: u64, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within {seconds} s: {what}");
}
