//! The gateway's own metrics, next to the runtime's RED metrics of its HTTP server:
//! per route, pool and instance (endpoint) attempts and latencies, retries, breaker state,
//! ejections and instance states.
//!
//! Per-endpoint series are created once, when an instance joins, and kept as handles on the
//! endpoint, so the hot path increments an atomic instead of looking labels up.

use std::sync::atomic::AtomicU64;

use dockyard_runtime::metrics::Metrics;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub route: String,
    pub pool: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub route: String,
    pub pool: String,
    pub endpoint: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub route: String,
    pub pool: String,
    pub endpoint: String,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub route: String,
    pub pool: String,
    pub state: &'static str,
}

/// How one attempt on an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Redirect,
    ClientError,
    ServerError,
    Unreachable,
    Timeout,
}

impl Outcome {
    const ALL: [Self; 6] = [
        Self::Success,
        Self::Redirect,
        Self::ClientError,
        Self::ServerError,
        Self::Unreachable,
        Self::Timeout,
    ];

    pub fn of_status(status: u16) -> Self {
        match status {
            ..300 => Self::Success,
            300..400 => Self::Redirect,
            400..500 => Self::ClientError,
            _ => Self::ServerError,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Success => "2xx",
            Self::Redirect => "3xx",
            Self::ClientError => "4xx",
            Self::ServerError => "5xx",
            Self::Unreachable => "error",
            Self::Timeout => "timeout",
        }
    }
}

pub type Gauge64 = Gauge<i64, AtomicU64>;

/// Every gateway metric family; registered once in the process's registry.
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    attempts: Family<AttemptLabels, Counter>,
    attempt_duration: Family<EndpointLabels, Histogram>,
    ejections: Family<EndpointLabels, Counter>,
    pub retries: Family<RouteLabels, Counter>,
    pub retries_refused: Family<RouteLabels, Counter>,
    pub canary_fallbacks: Family<RouteLabels, Counter>,
    pub canary_weight: Family<RouteLabels, Gauge>,
    pub active_pool: Family<PoolLabels, Gauge>,
    pub breaker_state: Family<PoolLabels, Gauge>,
    pub breaker_rejections: Family<PoolLabels, Counter>,
    pub endpoints: Family<StateLabels, Gauge>,
    pub rate_limited: Counter,
}

fn attempt_histogram() -> Histogram {
    // 0.25 ms … ~8 s, like the server's own histogram.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl GatewayMetrics {
    pub fn new() -> Self {
        Self {
            attempts: Family::default(),
            attempt_duration: Family::new_with_constructor(attempt_histogram as fn() -> _),
            ejections: Family::default(),
            retries: Family::default(),
            retries_refused: Family::default(),
            canary_fallbacks: Family::default(),
            canary_weight: Family::default(),
            active_pool: Family::default(),
            breaker_state: Family::default(),
            breaker_rejections: Family::default(),
            endpoints: Family::default(),
            rate_limited: Counter::default(),
        }
    }

    /// Adds every family to the process's registry (`dockyard_gateway_*`).
    pub fn register(&self, registry: &mut Metrics) {
        let m = self.clone();
        registry.register(
            "gateway_upstream_attempts",
            "Attempts on an upstream instance, by outcome",
            m.attempts,
        );
        registry.register(
            "gateway_upstream_attempt_duration_seconds",
            "Upstream attempt latency, until the response head",
            m.attempt_duration,
        );
        registry.register(
            "gateway_ejections",
            "Instances ejected by passive health (outlier detection)",
            m.ejections,
        );
        registry.register("gateway_retries", "Retries on another instance", m.retries);
        registry.register(
            "gateway_retries_refused",
            "Retries not made because the retry budget was spent",
            m.retries_refused,
        );
        registry.register(
            "gateway_canary_fallbacks",
            "Canary requests sent to the stable pool because the canary's breaker was open",
            m.canary_fallbacks,
        );
        registry.register(
            "gateway_canary_weight_percent",
            "Share of clients sent to the canary pool",
            m.canary_weight,
        );
        registry.register(
            "gateway_active_pool",
            "1 for the stable pool (blue or green) taking traffic",
            m.active_pool,
        );
        registry.register(
            "gateway_breaker_state",
            "Circuit breaker per pool: 0 closed, 1 half-open, 2 open",
            m.breaker_state,
        );
        registry.register(
            "gateway_breaker_rejections",
            "Requests refused at once by an open breaker",
            m.breaker_rejections,
        );
        registry.register(
            "gateway_endpoints",
            "Instances per pool and state",
            m.endpoints,
        );
        registry.register(
            "gateway_rate_limited",
            "Requests refused by the per-client rate limit",
            m.rate_limited,
        );
    }

    /// The series of one instance, created when it joins.
    pub fn endpoint(&self, labels: EndpointLabels) -> EndpointMetrics {
        let outcomes = Outcome::ALL.map(|outcome| {
            self.attempts
                .get_or_create(&AttemptLabels {
                    route: labels.route.clone(),
                    pool: labels.pool.clone(),
                    endpoint: labels.endpoint.clone(),
                    outcome: outcome.label(),
                })
                .clone()
        });
        EndpointMetrics {
            outcomes,
            duration: self.attempt_duration.get_or_create(&labels).clone(),
            ejections: self.ejections.get_or_create(&labels).clone(),
            labels,
        }
    }

    /// Drops the series of an instance that left.
    pub fn forget(&self, endpoint: &EndpointMetrics) {
        let labels = &endpoint.labels;
        for outcome in Outcome::ALL {
            self.attempts.remove(&AttemptLabels {
                route: labels.route.clone(),
                pool: labels.pool.clone(),
                endpoint: labels.endpoint.clone(),
                outcome: outcome.label(),
            });
        }
        self.attempt_duration.remove(labels);
        self.ejections.remove(labels);
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Handles on one instance's series.
#[derive(Debug)]
pub struct EndpointMetrics {
    outcomes: [Counter; 6],
    duration: Histogram,
    pub ejections: Counter,
    labels: EndpointLabels,
}

impl EndpointMetrics {
    pub fn attempt(&self, outcome: Outcome, seconds: f64) {
        let index = Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or_default();
        self.outcomes[index].inc();
        self.duration.observe(seconds);
    }
}
