//! Per-request middleware: the request id, the request's span, one log event, and RED metrics.
//!
//! `X-Request-Id` is taken from the request when it is sane (printable ASCII, at most 128
//! bytes), otherwise generated; it is echoed on the response and attached to every log event
//! of the request through a tracing span. That span is the request's server span
//! ([`crate::trace`]): it continues the caller's trace (`traceparent`), or starts one. Health
//! probes and metrics scrapes get a span named [`PROBE_SPAN`] instead, which is never exported
//! (a platform probes every instance every few seconds).

use std::time::Instant;

use actix_web::{
    Error, HttpMessage,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderName, HeaderValue},
    middleware::Next,
    web,
};
use tracing::Instrument;

use crate::metrics::{HttpLabels, Metrics};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The name of a probe's or scrape's span: kept out of the exported traces.
pub const PROBE_SPAN: &str = "probe";

/// More paths a service treats like its probes and scrapes (logged at `debug` when they
/// succeed, never traced): paths polled every second or so, such as a dashboard's API. Give
/// it as app data; a path matches an entry equal to it or, for an entry ending in `/`,
/// starting with it.
#[derive(Debug, Clone, Copy)]
pub struct RoutinePaths(pub &'static [&'static str]);

impl RoutinePaths {
    fn contains(self, path: &str) -> bool {
        self.0.iter().any(|routine| {
            path == *routine || (routine.ends_with('/') && path.starts_with(routine))
        })
    }
}

/// The id of the request being served; handlers can extract it from request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Whether a client's `X-Request-Id` is kept: printable ASCII, 1 to 128 bytes. Shared with
/// servers that are not actix (the gateway's data plane).
/// A new request id: a random (version 4) UUID from the thread's fast generator. Request ids
/// need to be unique, not unguessable, and the operating system's generator
/// (`Uuid::new_v4`) cost a system call per request.
pub fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .to_string()
}

pub fn is_sane_request_id(value: &str) -> bool {
    !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic())
}

fn incoming_request_id(request: &ServiceRequest) -> Option<String> {
    let value = request.headers().get(REQUEST_ID)?.to_str().ok()?;
    is_sane_request_id(value).then(|| value.to_owned())
}

/// The middleware; mount with `actix_web::middleware::from_fn(observe::request)`.
pub async fn request(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let request_id = incoming_request_id(&request).unwrap_or_else(new_request_id);
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().to_string();
    let method_label = crate::metrics::method_label(&method);
    let routine = crate::telemetry::is_routine(request.path())
        || request
            .app_data::<web::Data<RoutinePaths>>()
            .is_some_and(|paths| paths.contains(request.path()));
    let metrics = request.app_data::<web::Data<Metrics>>().cloned();
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));
    let span = if routine {
        tracing::info_span!("probe", request_id = %request_id, method = %method, route = %route)
    } else {
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %method,
            route = %route,
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
        );
        crate::trace::continue_from(&span, || crate::trace::parent_from_actix(request.headers()));
        span
    };

    let outcome = next.call(request).instrument(span.clone()).await;

    let status = match &outcome {
        Ok(response) => response.status(),
        Err(error) => error.as_response_error().status_code(),
    };
    let latency = started.elapsed();
    let latency_ms = latency.as_secs_f64() * 1000.0;
    crate::trace::http_status(&span, status.as_u16());
    span.in_scope(|| {
        let failure = match &outcome {
            Ok(response) => response.response().error().map(ToString::to_string),
            Err(error) => Some(error.to_string()),
        };
        if routine {
            // A probe answered 503 (not ready, draining) is a state, not a failure.
            if status.is_success() {
                tracing::debug!(status = status.as_u16(), latency_ms, "request completed");
            } else {
                tracing::info!(status = status.as_u16(), latency_ms, "request completed");
            }
        } else if status.is_server_error() {
            tracing::error!(
                status = status.as_u16(),
                latency_ms,
                error = failure.as_deref(),
                "request failed"
            );
        } else {
            tracing::info!(status = status.as_u16(), latency_ms, "request completed");
        }
    });
    if let Some(metrics) = metrics {
        let labels = HttpLabels {
            method: method_label.to_owned(),
            route,
            status: status.as_u16(),
        };
        metrics.observe_request(&labels, latency.as_secs_f64());
    }
    let mut response = outcome?;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_request_ids_are_distinct_version_4_uuids_and_sane() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            let uuid = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(uuid.get_version_num(), 4, "{id}");
            assert!(is_sane_request_id(id));
        }
    }
}
