//! The admin API: a separate listener on `ADMIN_HOST:ADMIN_PORT` (loopback by default), on
//! only when `ADMIN_TOKEN` is set, every call authenticated with `Authorization: Bearer
//! <ADMIN_TOKEN>` (401 otherwise). Tokens are compared as SHA-256 digests in constant time,
//! so neither the content nor the length of the token leaks through timing.
//!
//! - `GET /upstreams`: every route, its pools, breaker states and endpoints.
//! - `PUT /upstreams/{route}/canary` `{"weight": 25}`: the canary's share, in percent.
//! - `PUT /upstreams/{route}/active` `{"pool": "green"}`: switches blue-green at once.

use std::{net::TcpListener, time::Instant};

use actix_web::{
    App, HttpRequest, HttpResponse, HttpServer, ResponseError,
    body::MessageBody,
    dev::{Server, ServiceRequest, ServiceResponse},
    http::header::{self, HeaderValue},
    middleware::{Next, from_fn},
    web,
};
use dockyard_resilience::State;
use dockyard_runtime::problem::{self, FieldError, Problem};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    routes::{PoolKind, Route},
    service::ChangeError,
    state::Gateway,
};

/// The token's digest; what requests are compared against.
struct TokenDigest([u8; 32]);

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

async fn authorize(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let expected = request
        .app_data::<web::Data<TokenDigest>>()
        .expect("the admin app holds the token digest")
        .0;
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented.is_some_and(|token| bool::from(digest(token.as_bytes()).ct_eq(&expected))) {
        return Ok(next.call(request).await?.map_into_left_body());
    }
    let mut response = Problem::new(actix_web::http::StatusCode::UNAUTHORIZED)
        .detail("the admin API needs `Authorization: Bearer <ADMIN_TOKEN>`")
        .error_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Ok(request.into_response(response).map_into_right_body())
}

/// Binds the admin listener; `None` when no token is set.
pub fn bind(
    host: &str,
    port: u16,
    token: Option<&str>,
    gateway: web::Data<Gateway>,
) -> std::io::Result<Option<(Server, u16)>> {
    let Some(token) = token else {
        tracing::info!("ADMIN_TOKEN is not set: the admin API is off");
        return Ok(None);
    };
    let listener = TcpListener::bind((host, port))?;
    let port = listener.local_addr()?.port();
    let token = web::Data::new(TokenDigest(digest(token.as_bytes())));
    let server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(authorize))
            .app_data(token.clone())
            .app_data(gateway.clone())
            .app_data(problem::json_config(4096))
            .app_data(problem::path_config())
            .route("/upstreams", web::get().to(list))
            .route("/upstreams/{route}/canary", web::put().to(set_canary))
            .route("/upstreams/{route}/active", web::put().to(switch))
            .default_service(web::to(|request: HttpRequest| async move {
                Problem::not_found(format!("no admin resource at {}", request.path()))
                    .error_response()
            }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    tracing::info!(address = %format!("{host}:{port}"), "admin API listening");
    Ok(Some((server, port)))
}

fn view(route: &Route) -> Value {
    let service = &route.service;
    let now = Instant::now();
    let pools: Vec<Value> = service
        .pools()
        .map(|pool| {
            let breaker = match pool.breaker.state(now) {
                State::Closed => "closed",
                State::HalfOpen => "half-open",
                State::Open => "open",
            };
            let endpoints: Vec<Value> = pool
                .endpoints()
                .iter()
                .map(
                    |e| json!({"url": e.base(), "state": e.state(now), "in_flight": e.in_flight()}),
                )
                .collect();
            json!({
                "pool": pool.kind().as_str(),
                "active": std::sync::Arc::ptr_eq(pool, service.active()),
                "targets": pool.targets().iter().map(url::Url::as_str).collect::<Vec<_>>(),
                "breaker": breaker,
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({
        "route": service.name(),
        "prefix": route.prefix,
        "active": service.active().kind().as_str(),
        "canary_weight": service.canary().map(|_| service.canary_weight()),
        "pools": pools,
    })
}

async fn list(gateway: web::Data<Gateway>) -> HttpResponse {
    let routes: Vec<Value> = gateway.routes.iter().map(view).collect();
    HttpResponse::Ok().json(json!({ "routes": routes }))
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

#[derive(Deserialize)]
struct CanaryWeight {
    weight: u8,
}

async fn set_canary(
    gateway: web::Data<Gateway>,
    name: web::Path<String>,
    body: web::Json<CanaryWeight>,
) -> Result<HttpResponse, Problem> {
    let route = route(&gateway, &name)?;
    let before = route.service.canary_weight();
    route
        .service
        .set_canary_weight(body.weight)
        .map_err(|e| refused(&e))?;
    tracing::info!(route = %name, from = before, to = body.weight, "canary weight set");
    gateway.update_gauges();
    Ok(HttpResponse::Ok().json(view(route)))
}

#[derive(Deserialize)]
struct ActivePool {
    pool: String,
}

async fn switch(
    gateway: web::Data<Gateway>,
    name: web::Path<String>,
    body: web::Json<ActivePool>,
) -> Result<HttpResponse, Problem> {
    let route = route(&gateway, &name)?;
    let to = match body.pool.as_str() {
        "blue" => PoolKind::Blue,
        "green" => PoolKind::Green,
        _ => {
            return Err(Problem::validation(&[FieldError::new(
                "pool",
                "must be `blue` or `green`",
            )]));
        }
    };
    let before = route.service.active().kind().as_str();
    route.service.switch(to).map_err(|e| refused(&e))?;
    tracing::info!(route = %name, from = before, to = to.as_str(), "active pool switched");
    gateway.update_gauges();
    Ok(HttpResponse::Ok().json(view(route)))
}
