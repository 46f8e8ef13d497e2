use actix_web::{App, HttpRequest, HttpResponse, HttpServer, dev::ServerHandle, web};
use dockyard_runtime::{config, server::HttpConfig, telemetry};
use gateway::{config::Settings, startup::Application};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

/// A test upstream: echoes who it is and what it received; `/fail` answers 500 and
/// `/echo` returns the request body. With `broken`, every request answers 500.
pub struct Upstream {
    pub url: String,
    handle: ServerHandle,
}

async fn answer(
    request: HttpRequest,
    body: web::Bytes,
    name: web::Data<(String, bool)>,
) -> HttpResponse {
    let (name, broken) = name.get_ref();
    if *broken || request.path() == "/fail" {
        return HttpResponse::InternalServerError().body("broken");
    }
    if request.path() == "/echo" {
        return HttpResponse::Ok().body(body);
    }
    let headers: Map<String, Value> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or_default())))
        .collect();
    HttpResponse::Ok()
        .insert_header(("x-upstream", name.as_str()))
        .insert_header(("keep-alive", "timeout=99"))
        .json(json!({
            "name": name,
            "method": request.method().as_str(),
            "path": request.path(),
            "query": request.query_string(),
            "headers": headers,
            "body_len": body.len(),
        }))
}

pub fn upstream(name: &str, ip: &str, broken: bool) -> Upstream {
    let data = web::Data::new((name.to_owned(), broken));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
            .default_service(web::to(answer))
    })
    .workers(1)
    .disable_signals()
    .bind((ip, 0))
    .expect("binding a loopback address");
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    Upstream {
        url: format!("http://{ip}:{port}"),
        handle,
    }
}

impl Upstream {
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

/// A gateway with `ROUTES=routes` and `extra` variables; its base URL and stop switch.
pub fn gateway(routes: &str, extra: &[(&str, &str)]) -> (String, oneshot::Sender<()>) {
    telemetry::init_with_writer(telemetry::LogFormat::Json, std::io::sink);
    let mut vars = vec![("ROUTES", routes)];
    vars.extend_from_slice(extra);
    let settings = Settings {
        http: HttpConfig::ephemeral(),
        gateway: config::from_vars(vars).unwrap(),
    };
    let app = Application::build(&settings).unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    (address, stop)
}
