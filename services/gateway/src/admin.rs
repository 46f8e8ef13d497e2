//! The admin listener, on `ADMIN_HOST:ADMIN_PORT` (loopback by default; another address only
//! with `ADMIN_ALLOW_REMOTE=true`), never the public port. It serves the gateway's own
//! metrics, and the admin API when `ADMIN_TOKEN` is set, every call of which is authenticated
//! with `Authorization: Bearer <ADMIN_TOKEN>` (401 otherwise). Tokens are compared as SHA-256
//! digests in constant time, so neither the content nor the length of the token leaks through
//! timing.
//!
//! - `GET /metrics`: the gateway's Prometheus metrics (no token needed: for the scraper).
//! - `GET /upstreams`: every route, its pools, breaker states and endpoints.
//! - `PUT /upstreams/{route}/canary` `{"weight": 25}`: the canary's share, in percent.
//! - `PUT /upstreams/{route}/active` `{"pool": "green"}`: switches blue-green at once.
//! - `GET /openapi.json`: this API's OpenAPI document (no token needed).
//!
//! Without `ADMIN_TOKEN` the `/upstreams` resources answer `404`.

use std::{net::TcpListener, time::Instant};

use actix_web::{
    App, HttpRequest, HttpResponse, HttpServer, ResponseError,
    body::MessageBody,
    dev::{Server, ServiceRequest, ServiceResponse},
    http::header,
    middleware::{Next, from_fn},
    web,
};
use dockyard_resilience::State;
use dockyard_runtime::{
    metrics::Metrics,
    number::Whole,
    openapi::{self, ProblemSchema, method_not_allowed},
    problem::{self, FieldError, Problem},
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::{OpenApi, ToSchema};

use dockyard_gateway_admin::{
    ActivePool, BreakerState, EndpointView, PoolKind, PoolView, RouteView, Upstreams,
};

use crate::{config::AdminConfig, routes::Route, service::ChangeError, state::Gateway};

/// The token's digest; what requests are compared against (`None`: the admin API is off).
struct TokenDigest(Option<[u8; 32]>);

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

async fn authorize(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if matches!(request.path(), "/openapi.json" | "/metrics") {
        return Ok(next.call(request).await?.map_into_left_body());
    }
    let Some(expected) = request
        .app_data::<web::Data<TokenDigest>>()
        .expect("the admin app holds the token digest")
        .0
    else {
        let response = Problem::not_found("the admin API is off: the gateway has no ADMIN_TOKEN")
            .error_response();
        return Ok(request.into_response(response).map_into_right_body());
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented.is_some_and(|token| bool::from(digest(token.as_bytes()).ct_eq(&expected))) {
        return Ok(next.call(request).await?.map_into_left_body());
    }
    let response = Problem::unauthorized(
        "Bearer",
        "the admin API needs `Authorization: Bearer <ADMIN_TOKEN>`",
    )
    .error_response();
    Ok(request.into_response(response).map_into_right_body())
}

/// Binds the admin listener.
pub fn bind(
    config: &AdminConfig,
    gateway: web::Data<Gateway>,
    metrics: web::Data<Metrics>,
) -> std::io::Result<(Server, u16)> {
    if config.token.is_none() {
        tracing::info!("ADMIN_TOKEN is not set: the admin API is off (metrics are served)");
    }
    if config.remote {
        tracing::warn!(host = %config.host, "the admin listener is on a non-loopback address (ADMIN_ALLOW_REMOTE): keep its port off any public network");
    }
    let listener = TcpListener::bind((config.host.as_str(), config.port))?;
    let port = listener.local_addr()?.port();
    let token = web::Data::new(TokenDigest(
        config
            .token
            .as_deref()
            .map(|token| digest(token.as_bytes())),
    ));
    let server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(authorize))
            .app_data(token.clone())
            .app_data(gateway.clone())
            .app_data(metrics.clone())
            .route("/metrics", web::get().to(render_metrics))
            .app_data(problem::json_config(4096))
            .app_data(problem::path_config())
            .service(
                web::resource("/upstreams")
                    .route(web::get().to(list))
                    .default_service(web::to(method_not_allowed("GET"))),
            )
            .service(
                web::resource("/upstreams/{route}/canary")
                    .route(web::put().to(set_canary))
                    .default_service(web::to(method_not_allowed("PUT"))),
            )
            .service(
                web::resource("/upstreams/{route}/active")
                    .route(web::put().to(switch))
                    .default_service(web::to(method_not_allowed("PUT"))),
            )
            .configure(|config| openapi::serve(config, &ApiDoc::openapi()))
            .default_service(web::to(|request: HttpRequest| async move {
                Problem::not_found(format!("no admin resource at {}", request.path()))
                    .error_response()
            }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    tracing::info!(address = %format!("{}:{port}", config.host), "admin listener (admin API, metrics) listening");
    Ok((server, port))
}

async fn render_metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(dockyard_runtime::metrics::CONTENT_TYPE)
        .body(metrics.render())
}

fn view(route: &Route) -> RouteView {
    let service = &route.service;
    let now = Instant::now();
    let pools = service
        .pools()
        .map(|pool| PoolView {
            pool: pool.kind(),
            active: std::sync::Arc::ptr_eq(pool, service.active()),
            targets: pool
                .targets()
                .iter()
                .map(|u| u.as_str().to_owned())
                .collect(),
            breaker: match pool.breaker.state(now) {
                State::Closed => BreakerState::Closed,
                State::HalfOpen => BreakerState::HalfOpen,
                State::Open => BreakerState::Open,
            },
            endpoints: pool
                .endpoints()
                .iter()
                .map(|e| EndpointView {
                    url: e.base().to_owned(),
                    state: e.state(now),
                    in_flight: e.in_flight(),
                })
                .collect(),
        })
        .collect();
    RouteView {
        route: service.name().to_owned(),
        prefix: route.prefix.clone(),
        active: service.active().kind(),
        canary_weight: service.canary().map(|_| service.canary_weight()),
        pools,
    }
}

/// Every route, its pools (blue / green / canary), breaker states and instances.
#[utoipa::path(
    get, path = "/upstreams", tag = "upstreams",
    responses(
        (status = 200, description = "Every route", body = Upstreams),
        (status = 401, description = "No or a wrong bearer token", body = ProblemSchema, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String))),
    ),
    security(("admin_token" = [])),
)]
async fn list(gateway: web::Data<Gateway>) -> HttpResponse {
    let routes: Vec<RouteView> = gateway.routes.iter().map(view).collect();
    HttpResponse::Ok().json(Upstreams { routes })
}

fn route<'a>(gateway: &'a Gateway, name: &str) -> Result<&'a Route, Problem> {
    gateway
        .routes
        .named(name)
        .ok_or_else(|| Problem::not_found(format!("no route named `{name}`")))
}

fn refused(error: &ChangeError) -> Problem {
    match error {
        ChangeError::NoSuchPool(..) => Problem::conflict(error.to_string()),
        ChangeError::WeightOutOfRange => {
            Problem::validation(&[FieldError::new("weight", error.to_string())])
        }
        ChangeError::NotStable => {
            Problem::validation(&[FieldError::new("pool", error.to_string())])
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CanaryWeight {
    /// The canary's share of clients, in percent.
    #[schema(value_type = u8, minimum = 0, maximum = 100)]
    weight: Whole<u8>,
}

/// Sends `weight` percent of clients to the route's canary pool.
#[utoipa::path(
    put, path = "/upstreams/{route}/canary", tag = "upstreams",
    params(("route" = String, Path, example = "catalog", description = "The route's name")),
    request_body(content = CanaryWeight, content_type = "application/json"),
    responses(
        (status = 200, description = "The route, with its new weight", body = RouteView),
        (status = 400, description = "Malformed JSON", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong bearer token", body = ProblemSchema, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String))),
        (status = 404, description = "No such route", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 409, description = "The route has no canary pool", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 4 KiB", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json`", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 422, description = "A weight over 100", body = ProblemSchema, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])),
)]
async fn set_canary(
    gateway: web::Data<Gateway>,
    name: web::Path<String>,
    body: web::Json<CanaryWeight>,
) -> Result<HttpResponse, Problem> {
    let route = route(&gateway, &name)?;
    let before = route.service.canary_weight();
    let weight = body.weight.get();
    route
        .service
        .set_canary_weight(weight)
        .map_err(|e| refused(&e))?;
    tracing::info!(route = %name, from = before, to = weight, "canary weight set");
    gateway.update_gauges();
    Ok(HttpResponse::Ok().json(view(route)))
}

/// Switches the route's traffic to its blue or its green pool, at once.
#[utoipa::path(
    put, path = "/upstreams/{route}/active", tag = "upstreams",
    params(("route" = String, Path, example = "catalog", description = "The route's name")),
    request_body(content = ActivePool, content_type = "application/json"),
    responses(
        (status = 200, description = "The route, with its new active pool", body = RouteView),
        (status = 400, description = "Malformed JSON", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong bearer token", body = ProblemSchema, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String))),
        (status = 404, description = "No such route", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 409, description = "The route has no green pool", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 4 KiB", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/json`", body = ProblemSchema, content_type = "application/problem+json"),
        (status = 422, description = "A pool other than blue or green", body = ProblemSchema, content_type = "application/problem+json"),
    ),
    security(("admin_token" = [])),
)]
async fn switch(
    gateway: web::Data<Gateway>,
    name: web::Path<String>,
    body: web::Json<ActivePool>,
) -> Result<HttpResponse, Problem> {
    let route = route(&gateway, &name)?;
    let to = PoolKind::from(body.pool);
    let before = route.service.active().kind().as_str();
    route.service.switch(to).map_err(|e| refused(&e))?;
    tracing::info!(route = %name, from = before, to = to.as_str(), "active pool switched");
    gateway.update_gauges();
    Ok(HttpResponse::Ok().json(view(route)))
}

/// The gateway admin API.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(
        title = "Dockyard gateway admin",
        description = "Routes, pools and releases of the gateway, on its admin listener (loopback by default). Every call needs `Authorization: Bearer <ADMIN_TOKEN>`. Every error is `application/problem+json` (RFC 9457).",
        version = "1.0.0",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(list, set_canary, switch),
    components(schemas(dockyard_runtime::problem::FieldError)),
    modifiers(&BearerToken),
    tags((name = "upstreams", description = "Routes, pools, canary and blue-green")),
)]
pub struct ApiDoc;

/// The `admin_token` security scheme: HTTP bearer.
#[derive(Debug)]
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "admin_token",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

#[cfg(test)]
mod openapi_tests {
    use utoipa::OpenApi;

    #[test]
    fn the_committed_openapi_document_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/gateway-admin.openapi.json");
        dockyard_runtime::openapi::assert_committed(&super::ApiDoc::openapi(), &path);
    }
}
