//! `/metrics` in the Prometheus (OpenMetrics) text format, with RED metrics per route:
//! request count and a latency histogram labelled by method, route pattern and status.
//!
//! Each process owns its [`Metrics`] registry (no global state), so tests can run many apps in
//! one process. Services register their own metrics with [`Metrics::register`] before serving.

use actix_web::{HttpResponse, web};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Metric, Registry},
};

/// Labels of one HTTP request. `route` is the matched pattern (`/products/{id}`), never the raw
/// path, so the number of series stays bounded.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// The `method` label of a request: a method HTTP defines, else `other`, so a client inventing
/// method names cannot make the number of series grow.
pub fn method_label(method: &str) -> &'static str {
    const DEFINED: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    DEFINED
        .iter()
        .find(|defined| **defined == method)
        .copied()
        .unwrap_or("other")
}

/// The content type of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The process's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_request_duration: Family<HttpLabels, Histogram>,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms … ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dockyard");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_request_duration =
            Family::<HttpLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "http_requests",
            "HTTP requests served",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, from request head to response head",
            http_request_duration.clone(),
        );
        Self {
            registry,
            http_requests,
            http_request_duration,
        }
    }

    /// Adds a service-specific metric. Call before the server starts.
    pub fn register(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.registry.register(name, help, metric);
    }

    /// Records one finished request.
    pub fn observe_request(&self, labels: &HttpLabels, seconds: f64) {
        self.http_requests.get_or_create(labels).inc();
        self.http_request_duration
            .get_or_create(labels)
            .observe(seconds);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `GET /metrics`.
pub async fn endpoint(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(metrics.render())
}

#[cfg(test)]
mod tests {
    use super::method_label;

    #[test]
    fn only_methods_http_defines_get_their_own_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("PATCH"), "PATCH");
        assert_eq!(method_label("BREW"), "other");
        assert_eq!(method_label("get"), "other", "methods are case-sensitive");
    }
}
