//! The page and its API.
//!
//! - `GET /`, `/assets/console.js`, `/assets/console.css`: the page, embedded in the binary.
//! - `GET /api/overview`: topology, release state and the saga ([`crate::observer`]).
//! - `PUT /api/routes/{route}/canary` `{"weight": 30}`, `PUT /api/routes/{route}/active`
//!   `{"pool": "green"}`: passed to the gateway's admin API with the console's token (the page
//!   never sees it); the answer is the route as the overview shows it. A browser sends a
//!   cross-origin `PUT` with a JSON body only after a CORS preflight this server never
//!   answers, so another site cannot make a visitor's browser change a release.
//! - `GET /api/traces?limit=&order_id=`, `GET /api/traces/{trace_id}`: the recent traces.
//! - `POST /v1/traces`: the OTLP/HTTP receiver ([`crate::traces`]).

use std::sync::Arc;

use actix_web::{
    HttpRequest, HttpResponse,
    http::{StatusCode, header},
    web,
};
use dockyard_runtime::{
    observe::RoutinePaths,
    problem::{FieldError, Problem},
};
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;

use dockyard_gateway_admin::ActivePool;

use crate::{
    observer::{Change, ChangeError, Observer},
    traces::{Encoding, TraceStore, decode},
};

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/console.js");
const STYLE: &str = include_str!("../assets/console.css");

/// The largest export request taken (the OTLP exporter sends batches of up to 512 spans).
const EXPORT_LIMIT_BYTES: usize = 16 * 1024 * 1024;
/// Traces listed at most.
const LIST_LIMIT: usize = 200;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct Console {
    pub observer: Observer,
    pub traces: Arc<TraceStore>,
    /// `dockyard_console_spans_received_total`.
    pub spans_received: Counter,
}

/// Mounts the page and the API.
pub fn configure(config: &mut web::ServiceConfig, console: Console) {
    config
        .app_data(web::Data::new(console))
        // Polled every second by each open page, and by every exporting service.
        .app_data(web::Data::new(RoutinePaths(&[
            "/api/overview",
            "/api/traces",
            "/api/traces/",
            "/v1/traces",
        ])))
        .route(
            "/",
            web::get().to(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/assets/console.js",
            web::get().to(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/console.css",
            web::get().to(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/api/overview", web::get().to(overview))
        .route("/api/routes/{route}/canary", web::put().to(set_canary))
        .route("/api/routes/{route}/active", web::put().to(set_active))
        .route("/api/traces", web::get().to(list_traces))
        .route("/api/traces/{trace_id}", web::get().to(show_trace))
        .service(
            web::resource("/v1/traces")
                .app_data(web::PayloadConfig::new(EXPORT_LIMIT_BYTES))
                .route(web::post().to(receive)),
        );
}

fn asset(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // The page loads nothing from anywhere else.
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'",
        ))
        .body(body)
}

async fn overview(console: web::Data<Console>) -> HttpResponse {
    HttpResponse::Ok().json(console.observer.overview())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryBody {
    weight: u8,
}

async fn set_canary(
    console: web::Data<Console>,
    route: web::Path<String>,
    body: web::Json<CanaryBody>,
) -> Result<HttpResponse, Problem> {
    if body.weight > 100 {
        return Err(Problem::validation(&[FieldError::new(
            "weight",
            "a percentage, 0 to 100",
        )]));
    }
    change(&console, &route, Change::CanaryWeight(body.weight)).await
}

async fn set_active(
    console: web::Data<Console>,
    route: web::Path<String>,
    body: web::Json<ActivePool>,
) -> Result<HttpResponse, Problem> {
    change(&console, &route, Change::Active(body.pool)).await
}

/// Runs a change on the main runtime (its HTTP client outlives actix's workers).
async fn change(console: &Console, route: &str, change: Change) -> Result<HttpResponse, Problem> {
    let observer = console.observer.clone();
    let route_name = route.to_owned();
    let outcome = console
        .observer
        .on_main(async move { observer.change(&route_name, change).await })
        .await
        .unwrap_or_else(|| {
            Err(ChangeError::Unreachable(
                "the console is stopping".to_owned(),
            ))
        });
    match outcome {
        Ok(Some(route)) => Ok(HttpResponse::Ok().json(route)),
        Ok(None) => Err(Problem::not_found(format!("no route {route}"))),
        Err(ChangeError::NoToken) => Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .detail("the console has no ADMIN_TOKEN, so it cannot change the gateway")),
        Err(ChangeError::Unreachable(error)) => Err(Problem::new(StatusCode::BAD_GATEWAY)
            .detail(format!("the gateway's admin API is unreachable: {error}"))),
        // The gateway's own problem (a bad weight, a route without a canary), as it said it.
        Err(ChangeError::Refused(status, problem)) => Ok(HttpResponse::build(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        )
        .content_type("application/problem+json")
        .json(problem)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
    order_id: Option<String>,
}

async fn list_traces(
    console: web::Data<Console>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=LIST_LIMIT).contains(&limit) {
        return Err(Problem::bad_request(format!("limit: 1 to {LIST_LIMIT}")));
    }
    let order_id = query.order_id.as_deref().filter(|id| !id.is_empty());
    let traces = console.traces.list(limit, order_id);
    Ok(HttpResponse::Ok().json(serde_json::json!({ "traces": traces })))
}

async fn show_trace(
    console: web::Data<Console>,
    trace_id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    console
        .traces
        .get(&trace_id)
        .map(|trace| HttpResponse::Ok().json(trace))
        .ok_or_else(|| Problem::not_found(format!("no trace {trace_id} (yet)")))
}

/// `POST /v1/traces`: OTLP/HTTP, protobuf or JSON; answers an empty export response.
async fn receive(
    console: web::Data<Console>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(encoding) = Encoding::of(content_type) else {
        return Err(Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .detail("send application/x-protobuf or application/json (OTLP/HTTP)"));
    };
    let export = decode(&body, encoding).map_err(|e| Problem::bad_request(e.to_string()))?;
    let kept = console.traces.add(export);
    console.spans_received.inc_by(kept as u64);
    Ok(match encoding {
        Encoding::Protobuf => HttpResponse::Ok()
            .content_type("application/x-protobuf")
            .finish(),
        Encoding::Json => HttpResponse::Ok()
            .content_type("application/json")
            .body("{}"),
    })
}
