//! What the console sees of the platform, polled every `CONSOLE_SCRAPE_INTERVAL_MS`: the
//! gateway's routes, pools and instances (`GET /upstreams` on its admin listener), its
//! per-instance attempt counters and latency histograms (the admin listener's `/metrics`),
//! and every instance's own `/metrics` (the saga's counters, outbox backlog, dead letters).
//! Rates and percentiles are computed from the difference between two polls; each instance
//! and the saga keep [`HISTORY`] points of history.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use prometheus_parse::{HistogramCount, Sample, Scrape, Value};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use url::Url;

use dockyard_gateway_admin::{
    ActivePool, BreakerState, EndpointState, PoolKind, StablePool, Upstreams,
};

use crate::config::ConsoleConfig;

/// Points of history kept (at the default interval of 1 s: two and a half minutes).
pub const HISTORY: usize = 150;
/// How long one poll of the gateway or of an instance may take.
const POLL_TIMEOUT: Duration = Duration::from_millis(800);

/// Recent values, oldest first, at most [`HISTORY`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series(VecDeque<Option<f64>>);

impl Series {
    fn push(&mut self, value: Option<f64>) {
        if self.0.len() == HISTORY {
            self.0.pop_front();
        }
        self.0.push_back(value);
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct InstanceHistory {
    pub rps: Series,
    pub error_rate: Series,
    pub p99_ms: Series,
}

/// What the console knows of an instance: the gateway's view, or nothing while the gateway
/// does not answer (shown as `unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum InstanceState {
    Reported(EndpointState),
    Unknown(Unknown),
}

/// Serialises as `"unknown"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unknown {
    Unknown,
}

impl InstanceState {
    pub const UNKNOWN: Self = Self::Unknown(Unknown::Unknown);
}

/// An instance card.
#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub url: String,
    pub state: InstanceState,
    pub in_flight: usize,
    pub rps: Option<f64>,
    pub error_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub history: InstanceHistory,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pool {
    pub pool: PoolKind,
    pub active: bool,
    pub breaker: BreakerState,
    pub instances: Vec<Instance>,
}

/// A route with its pools, as the page and the release controls show it.
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    pub route: String,
    pub prefix: String,
    pub active: PoolKind,
    pub canary_weight: Option<u8>,
    pub has_green: bool,
    pub pools: Vec<Pool>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SagaHistory {
    pub confirmed_per_s: Series,
    pub pending: Series,
}

/// The saga's numbers, summed over the order instances (counters since each started) or, for
/// what every instance counts in the shared database, the largest value any reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Saga {
    pub placed: u64,
    pub confirmed: u64,
    pub rejected: u64,
    pub cancelled: u64,
    pub pending: u64,
    pub shed: u64,
    pub outbox_backlog: std::collections::BTreeMap<String, u64>,
    pub dead_letters: std::collections::BTreeMap<String, u64>,
    pub history: SagaHistory,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GatewayStatus {
    pub reachable: bool,
    pub error: Option<String>,
}

/// Everything the page shows but the traces (`GET /api/overview`).
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    #[serde(with = "time::serde::rfc3339")]
    pub generated_at: OffsetDateTime,
    pub history_interval_s: f64,
    pub gateway: GatewayStatus,
    pub routes: Vec<Route>,
    pub saga: Saga,
}

/// Counters read from one poll, to difference with the next.
#[derive(Debug, Clone, Default)]
struct Reading {
    at: Option<Instant>,
    attempts: f64,
    failures: f64,
    /// Cumulative bucket counts (upper bound in seconds, count).
    buckets: Vec<(f64, f64)>,
}

/// An instance of a route's pool: (route, pool, url).
type InstanceKey = (String, PoolKind, String);

/// What the observer keeps between polls.
#[derive(Debug, Default)]
struct Memory {
    readings: HashMap<InstanceKey, Reading>,
    histories: HashMap<InstanceKey, InstanceHistory>,
    /// The service each instance said it is (`/health/live`), by URL.
    services: HashMap<String, String>,
    confirmed_before: Option<(Instant, u64)>,
    saga_history: SagaHistory,
    routes: Vec<Route>,
}

/// Polls the platform and holds the latest [`Overview`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct Observer {
    config: Arc<ConsoleConfig>,
    /// The main runtime: polls and changes run there, whose connections outlive actix's
    /// workers.
    runtime: tokio::runtime::Handle,
    http: reqwest::Client,
    latest: Arc<RwLock<Overview>>,
    memory: Arc<tokio::sync::Mutex<Memory>>,
}

/// A release change, as the page asks for it.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    /// The canary's share of clients, in percent (0 to 100).
    CanaryWeight(u8),
    /// Switch to the blue or the green pool.
    Active(StablePool),
}

impl Change {
    /// The admin API's resource under `/upstreams/{route}/`.
    fn resource(self) -> &'static str {
        match self {
            Self::CanaryWeight(_) => "canary",
            Self::Active(_) => "active",
        }
    }
}

/// What the gateway's admin API answered to a change.
#[derive(Debug)]
pub enum ChangeError {
    /// The console has no `ADMIN_TOKEN`.
    NoToken,
    /// The gateway refused: its status and problem body, passed on.
    Refused(u16, serde_json::Value),
    Unreachable(String),
}

impl Observer {
    /// Call from the main runtime: polls (and changes) run there.
    pub fn new(config: ConsoleConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(POLL_TIMEOUT)
            .build()
            .expect("an HTTP client");
        Self {
            config: Arc::new(config),
            runtime: tokio::runtime::Handle::current(),
            http,
            latest: Arc::new(RwLock::new(Overview {
                generated_at: OffsetDateTime::now_utc(),
                history_interval_s: 0.0,
                gateway: GatewayStatus::default(),
                routes: Vec::new(),
                saga: Saga::default(),
            })),
            memory: Arc::new(tokio::sync::Mutex::new(Memory::default())),
        }
    }

    /// Runs `work` on the main runtime and waits for it; `None` while it shuts down.
    pub async fn on_main<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        dockyard_runtime::main_runtime::run_on(&self.runtime, work).await
    }

    /// The latest overview.
    pub fn overview(&self) -> Overview {
        self.latest.read().expect("the overview's lock").clone()
    }

    /// Polls until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.scrape_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.poll().await,
            }
        }
    }

    fn admin(&self, path: &str) -> Url {
        self.config
            .gateway_admin
            .join(path)
            .expect("a path joins an http URL")
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.config.admin_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// One poll: the gateway, then every instance; the overview is replaced when done.
    pub async fn poll(&self) {
        let mut memory = self.memory.lock().await;
        let now = Instant::now();
        let (gateway, upstreams) = match self.upstreams().await {
            Ok(upstreams) => (
                GatewayStatus {
                    reachable: true,
                    error: None,
                },
                Some(upstreams),
            ),
            Err(error) => (
                GatewayStatus {
                    reachable: false,
                    error: Some(error),
                },
                None,
            ),
        };
        let gateway_metrics = self.metrics_of(self.admin("/metrics")).await.ok();
        let routes = match upstreams {
            Some(upstreams) => Self::routes(&mut memory, upstreams, gateway_metrics.as_ref(), now),
            // The last routes seen, every instance's state unknown.
            None => memory
                .routes
                .iter()
                .cloned()
                .map(|mut route| {
                    for pool in &mut route.pools {
                        for instance in &mut pool.instances {
                            instance.state = InstanceState::UNKNOWN;
                        }
                    }
                    route
                })
                .collect(),
        };
        let saga = self.saga(&mut memory, &routes, now).await;
        memory.routes.clone_from(&routes);
        *self.latest.write().expect("the overview's lock") = Overview {
            generated_at: OffsetDateTime::now_utc(),
            history_interval_s: self.config.scrape_interval.as_secs_f64(),
            gateway,
            routes,
            saga,
        };
    }

    async fn upstreams(&self) -> Result<Upstreams, String> {
        if self.config.admin_token.is_none() {
            return Err(
                "the console has no ADMIN_TOKEN: the gateway's admin API is closed to it"
                    .to_owned(),
            );
        }
        let response = self
            .authorized(self.http.get(self.admin("/upstreams")))
            .send()
            .await
            .map_err(|e| format!("the gateway's admin API is unreachable: {e}"))?;
        if !response.status().is_success() {
            return Err(format!(
                "the gateway's admin API answered {}",
                response.status()
            ));
        }
        response
            .json()
            .await
            .map_err(|e| format!("unexpected answer from the gateway's admin API: {e}"))
    }

    async fn metrics_of(&self, url: Url) -> Result<Scrape, String> {
        let text = self
            .http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).map_err(|e| e.to_string())
    }

    fn routes(
        memory: &mut Memory,
        upstreams: Upstreams,
        gateway: Option<&Scrape>,
        now: Instant,
    ) -> Vec<Route> {
        let routes: Vec<Route> = upstreams
            .routes
            .into_iter()
            .map(|route| {
                let has_green = route.pools.iter().any(|p| p.pool == PoolKind::Green);
                let pools = route
                    .pools
                    .into_iter()
                    .map(|pool| {
                        let instances = pool
                            .endpoints
                            .into_iter()
                            .map(|endpoint| {
                                let key = (route.route.clone(), pool.pool, endpoint.url.clone());
                                let reading = gateway
                                    .map(|g| reading_of(g, &key, now))
                                    .unwrap_or_default();
                                let before = memory.readings.insert(key.clone(), reading.clone());
                                let rates = before.map(|before| Rates::between(&before, &reading));
                                let history = memory.histories.entry(key).or_default();
                                let rates = rates.unwrap_or_default();
                                history.rps.push(rates.rps);
                                history.error_rate.push(rates.error_rate);
                                history.p99_ms.push(rates.p99_ms);
                                Instance {
                                    url: endpoint.url,
                                    state: InstanceState::Reported(endpoint.state),
                                    in_flight: endpoint.in_flight,
                                    rps: rates.rps,
                                    error_rate: rates.error_rate,
                                    p50_ms: rates.p50_ms,
                                    p99_ms: rates.p99_ms,
                                    history: history.clone(),
                                }
                            })
                            .collect();
                        Pool {
                            pool: pool.pool,
                            active: pool.active,
                            breaker: pool.breaker,
                            instances,
                        }
                    })
                    .collect();
                Route {
                    route: route.route,
                    prefix: route.prefix,
                    active: route.active,
                    canary_weight: route.canary_weight,
                    has_green,
                    pools,
                }
            })
            .collect();
        // Instances the gateway no longer lists (scaled in, replaced) are forgotten, so the
        // console's memory follows the platform instead of every instance it ever saw.
        let listed: std::collections::HashSet<InstanceKey> = routes
            .iter()
            .flat_map(|r| {
                r.pools.iter().flat_map(move |p| {
                    p.instances
                        .iter()
                        .map(move |i| (r.route.clone(), p.pool, i.url.clone()))
                })
            })
            .collect();
        memory.readings.retain(|key, _| listed.contains(key));
        memory.histories.retain(|key, _| listed.contains(key));
        memory
            .services
            .retain(|url, _| listed.iter().any(|(_, _, listed)| listed == url));
        routes
    }

    /// The saga's numbers from every instance's `/metrics`.
    async fn saga(&self, memory: &mut Memory, routes: &[Route], now: Instant) -> Saga {
        let mut urls: Vec<String> = routes
            .iter()
            .flat_map(|r| r.pools.iter())
            .flat_map(|p| p.instances.iter())
            .filter(|i| i.state != InstanceState::UNKNOWN)
            .map(|i| i.url.clone())
            .collect();
        urls.sort();
        urls.dedup();
        let mut saga = Saga::default();
        let polls = urls
            .iter()
            .map(|url| self.instance(memory.services.get(url).cloned(), url));
        for (url, polled) in urls.iter().zip(futures_util::future::join_all(polls).await) {
            let Some((service, scrape)) = polled else {
                continue;
            };
            memory.services.insert(url.clone(), service.clone());
            let value = |name: &str| total(&scrape, name, &[]);
            if service == "order" {
                for (status, count) in [
                    ("placed", &mut saga.placed),
                    ("confirmed", &mut saga.confirmed),
                    ("rejected", &mut saga.rejected),
                    ("cancelled", &mut saga.cancelled),
                ] {
                    *count += as_count(total(
                        &scrape,
                        "dockyard_order_orders_total",
                        &[("status", status)],
                    ));
                }
                saga.pending = saga.pending.max(as_count(value("dockyard_order_pending")));
                saga.shed += as_count(value("dockyard_order_shed_total"));
            }
            let backlog = saga.outbox_backlog.entry(service.clone()).or_default();
            *backlog = (*backlog).max(as_count(value("dockyard_outbox_backlog")));
            let dead = saga.dead_letters.entry(service).or_default();
            *dead = (*dead).max(as_count(value("dockyard_consumer_dead_letters")));
        }
        let rate = memory.confirmed_before.and_then(|(at, before)| {
            let seconds = now.duration_since(at).as_secs_f64();
            (seconds > 0.0 && saga.confirmed >= before)
                .then(|| as_float(saga.confirmed - before) / seconds)
        });
        memory.confirmed_before = Some((now, saga.confirmed));
        memory.saga_history.confirmed_per_s.push(rate);
        memory
            .saga_history
            .pending
            .push(Some(as_float(saga.pending)));
        saga.history = memory.saga_history.clone();
        saga
    }

    /// An instance's service (asked once, from `/health/live`) and metrics.
    async fn instance(&self, known: Option<String>, url: &str) -> Option<(String, Scrape)> {
        let base = Url::parse(url).ok()?;
        let service = if let Some(service) = known {
            service
        } else {
            #[derive(Deserialize)]
            struct Live {
                service: String,
            }
            let live: Live = self
                .http
                .get(base.join("/health/live").ok()?)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            live.service
        };
        let scrape = self.metrics_of(base.join("/metrics").ok()?).await.ok()?;
        Some((service, scrape))
    }

    /// Applies `change` to `route` through the gateway's admin API, then polls at once and
    /// returns the route.
    pub async fn change(&self, route: &str, change: Change) -> Result<Option<Route>, ChangeError> {
        if self.config.admin_token.is_none() {
            return Err(ChangeError::NoToken);
        }
        let mut url = self.admin("/upstreams/");
        url.path_segments_mut()
            .expect("an http URL has a path")
            .pop_if_empty()
            .push(route)
            .push(change.resource());
        let request = self.authorized(self.http.put(url));
        let request = match change {
            Change::CanaryWeight(weight) => request.json(&serde_json::json!({ "weight": weight })),
            Change::Active(pool) => request.json(&ActivePool { pool }),
        };
        let response = request
            .send()
            .await
            .map_err(|e| ChangeError::Unreachable(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let problem = response.json().await.unwrap_or(serde_json::Value::Null);
            return Err(ChangeError::Refused(status.as_u16(), problem));
        }
        self.poll().await;
        Ok(self
            .overview()
            .routes
            .into_iter()
            .find(|r| r.route == route))
    }
}

/// Rates between two readings of one instance.
#[derive(Debug, Clone, Copy, Default)]
struct Rates {
    rps: Option<f64>,
    error_rate: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl Rates {
    fn between(before: &Reading, now: &Reading) -> Self {
        let (Some(then), Some(at)) = (before.at, now.at) else {
            return Self::default();
        };
        let seconds = at.duration_since(then).as_secs_f64();
        let attempts = now.attempts - before.attempts;
        if seconds <= 0.0 || attempts < 0.0 {
            return Self::default(); // the gateway restarted: its counters began again
        }
        let mut rates = Self {
            rps: Some(attempts / seconds),
            ..Self::default()
        };
        if attempts > 0.0 {
            rates.error_rate = Some(((now.failures - before.failures) / attempts).clamp(0.0, 1.0));
            let buckets: Vec<(f64, f64)> = now
                .buckets
                .iter()
                .map(|(le, count)| {
                    let earlier = before
                        .buckets
                        .iter()
                        .find(|(l, _)| l.total_cmp(le).is_eq())
                        .map_or(0.0, |(_, c)| *c);
                    (*le, count - earlier)
                })
                .collect();
            rates.p50_ms = quantile(&buckets, 0.5).map(|s| s * 1000.0);
            rates.p99_ms = quantile(&buckets, 0.99).map(|s| s * 1000.0);
        }
        rates
    }
}

/// The `q` quantile of cumulative histogram buckets, interpolated within its bucket (as
/// Prometheus' `histogram_quantile` does); `None` without observations.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (upper, count) in buckets {
        if *count >= rank {
            if upper.is_infinite() {
                return Some(lower); // beyond the last finite bound: report that bound
            }
            let within = count - below;
            let fraction = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return Some(lower + (upper - lower) * fraction);
        }
        (lower, below) = (*upper, *count);
    }
    Some(lower)
}

/// The gateway's counters for one instance of a pool.
fn reading_of(scrape: &Scrape, (route, pool, url): &InstanceKey, now: Instant) -> Reading {
    let of_instance = |sample: &&Sample| {
        sample.labels.get("route") == Some(route.as_str())
            && sample.labels.get("pool") == Some(pool.as_str())
            && sample.labels.get("endpoint") == Some(url.as_str())
    };
    let mut reading = Reading {
        at: Some(now),
        ..Reading::default()
    };
    for sample in scrape.samples.iter().filter(of_instance) {
        match (sample.metric.as_str(), &sample.value) {
            ("dockyard_gateway_upstream_attempts_total", value) => {
                let count = number(value);
                reading.attempts += count;
                if matches!(
                    sample.labels.get("outcome"),
                    Some("5xx" | "error" | "timeout")
                ) {
                    reading.failures += count;
                }
            }
            ("dockyard_gateway_upstream_attempt_duration_seconds", Value::Histogram(buckets)) => {
                reading.buckets = buckets
                    .iter()
                    .map(|HistogramCount { less_than, count }| (*less_than, *count))
                    .collect();
            }
            _ => {}
        }
    }
    reading
}

fn number(value: &Value) -> f64 {
    match value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        _ => 0.0,
    }
}

/// The sum of a metric's samples whose labels include `labels`.
fn total(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| number(&s.value))
        .sum()
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // counters: whole, >= 0
fn as_count(value: f64) -> u64 {
    value.max(0.0).round() as u64
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn as_float(value: u64) -> f64 {
    value as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: &str = r#"# TYPE dockyard_gateway_upstream_attempts counter
dockyard_gateway_upstream_attempts_total{route="catalog",pool="blue",endpoint="http://a",outcome="2xx"} 90
dockyard_gateway_upstream_attempts_total{route="catalog",pool="blue",endpoint="http://a",outcome="5xx"} 10
dockyard_gateway_upstream_attempts_total{route="catalog",pool="blue",endpoint="http://b",outcome="2xx"} 5
# TYPE dockyard_gateway_upstream_attempt_duration_seconds histogram
dockyard_gateway_upstream_attempt_duration_seconds_bucket{le="0.001",route="catalog",pool="blue",endpoint="http://a"} 50
dockyard_gateway_upstream_attempt_duration_seconds_bucket{le="0.002",route="catalog",pool="blue",endpoint="http://a"} 98
dockyard_gateway_upstream_attempt_duration_seconds_bucket{le="0.004",route="catalog",pool="blue",endpoint="http://a"} 100
dockyard_gateway_upstream_attempt_duration_seconds_bucket{le="+Inf",route="catalog",pool="blue",endpoint="http://a"} 100
dockyard_gateway_upstream_attempt_duration_seconds_sum{route="catalog",pool="blue",endpoint="http://a"} 0.15
dockyard_gateway_upstream_attempt_duration_seconds_count{route="catalog",pool="blue",endpoint="http://a"} 100
# EOF
"#;

    fn scrape(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
    }

    #[test]
    fn rates_and_percentiles_come_from_the_difference_of_two_polls() {
        let key = ("catalog".to_owned(), PoolKind::Blue, "http://a".to_owned());
        let start = Instant::now();
        let before = Reading {
            at: Some(start),
            ..Reading::default()
        };
        let now = reading_of(&scrape(GATEWAY), &key, start + Duration::from_secs(2));
        assert_eq!((now.attempts, now.failures), (100.0, 10.0));
        let rates = Rates::between(&before, &now);
        assert_eq!(rates.rps, Some(50.0));
        assert_eq!(rates.error_rate, Some(0.1));
        assert_eq!(
            rates.p50_ms,
            Some(1.0),
            "the 50th of 100 is the top of the first bucket"
        );
        let p99 = rates.p99_ms.unwrap();
        assert!(
            (p99 - 3.0).abs() < 1e-9,
            "the 99th is halfway into (2, 4] ms: {p99}"
        );
        let other = reading_of(
            &scrape(GATEWAY),
            &("catalog".into(), PoolKind::Blue, "http://b".into()),
            start,
        );
        assert_eq!((other.attempts, other.buckets.len()), (5.0, 0));
    }

    #[test]
    fn a_restarted_gateway_gives_no_rate_rather_than_a_negative_one() {
        let start = Instant::now();
        let before = Reading {
            at: Some(start),
            attempts: 1000.0,
            ..Reading::default()
        };
        let now = Reading {
            at: Some(start + Duration::from_secs(1)),
            attempts: 3.0,
            ..Reading::default()
        };
        assert!(Rates::between(&before, &now).rps.is_none());
        assert_eq!(quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
    }

    #[test]
    fn an_instance_the_gateway_no_longer_lists_is_forgotten() {
        let upstreams = |urls: &[&str]| -> Upstreams {
            let endpoints: Vec<serde_json::Value> = urls
                .iter()
                .map(|url| serde_json::json!({"url": url, "state": "healthy", "in_flight": 0}))
                .collect();
            serde_json::from_value(serde_json::json!({"routes": [{"route": "catalog",
                "prefix": "/api/catalog", "active": "blue", "canary_weight": null,
                "pools": [{"pool": "blue", "active": true, "targets": [], "breaker": "closed",
                    "endpoints": endpoints}]}]}))
            .unwrap()
        };
        let mut memory = Memory::default();
        let now = Instant::now();
        memory
            .services
            .insert("http://b".to_owned(), "catalog".to_owned());
        Observer::routes(&mut memory, upstreams(&["http://a", "http://b"]), None, now);
        assert_eq!(memory.histories.len(), 2);
        let routes = Observer::routes(&mut memory, upstreams(&["http://a"]), None, now);
        assert_eq!(routes[0].pools[0].instances.len(), 1);
        let kept: Vec<&str> = memory
            .histories
            .keys()
            .map(|(_, _, url)| url.as_str())
            .collect();
        assert_eq!(kept, ["http://a"]);
        assert_eq!(memory.readings.len(), 1);
        assert!(
            memory.services.is_empty(),
            "http://b's service is forgotten too"
        );
    }

    #[test]
    fn the_history_keeps_its_last_points() {
        let mut series = Series::default();
        for n in 0..(HISTORY + 10) {
            series.push(Some(as_float(n as u64)));
        }
        assert_eq!(series.0.len(), HISTORY);
        assert_eq!(series.0.front(), Some(&Some(10.0)));
    }
}
