//! A pool: the instances (endpoints) of one version of a service, its circuit breaker, and
//! how a request picks an instance.
//!
//! Balancing is the power of two choices: pick two available endpoints at random and send to
//! the cheaper one, its cost being its peak-EWMA latency times its requests in flight plus one
//! (Finagle's and linkerd's balancer). Cheap, and it avoids both herding (least-loaded
//! everywhere) and ignoring load (random); a slow instance (a lossy link, a struggling host)
//! costs more and gets less, without failing anything (see [`Latency`]).
//!
//! An endpoint is *available* when its last active health check passed and passive health
//! has not ejected it. Passive health works like Envoy's outlier detection:
//! `eject_after_failures` consecutive failures (connect error, time-out, 5xx) eject an
//! endpoint for `eject_for`, doubled on each repeat (up to 16×); a success resets the count.
//! When no endpoint of the pool is available, every one is tried anyway ("panic mode"):
//! failing fast on a stale view would turn a health-check hiccup into an outage.
//!
//! The endpoint list is replaced as a whole when discovery sees the addresses change; a
//! request holds its endpoint by `Arc`, so an endpoint that left finishes what it has in
//! flight and only stops getting new requests — but an attempt that may be retried waits for
//! it [`DEPARTED_GRACE`] more (checked every [`DEPARTURE_CHECK`]) and is then tried on another
//! instance: an address that left may be a partition, which drops packets rather than closing
//! connections.

use std::{
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use dockyard_resilience::{BreakerConfig, CircuitBreaker};
use url::Url;

use dockyard_gateway_admin::EndpointState;

use crate::metrics::{EndpointLabels, EndpointMetrics, GatewayMetrics, Outcome};

/// Which pool of a route a list of URLs describes (defined with the admin API, which shows it).
pub use dockyard_gateway_admin::PoolKind;

/// How often a retryable attempt still waiting looks whether its instance has departed (a
/// slice of its try time-out: no cost for the attempts answered sooner, nearly all of them).
pub const DEPARTURE_CHECK: Duration = Duration::from_secs(1);

/// How much longer a retryable attempt waits for an answer from an instance that has left
/// discovery before it is tried on another. Long enough for an instance that is draining (an
/// orchestrator takes it out of DNS as it tells it to stop) to finish what it has; far shorter
/// than the try time-out an instance cut off by a partition (its packets dropped, no reset)
/// would otherwise cost the request.
pub const DEPARTED_GRACE: Duration = Duration::from_secs(2);

/// How passive health (outlier ejection) behaves.
#[derive(Debug, Clone)]
pub struct HealthPolicy {
    pub eject_after_failures: u32,
    pub eject_for: Duration,
}

/// What active health checks last said about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Checked {
    /// Discovered, not checked yet: gets no traffic unless the pool is in panic mode.
    Pending = 0,
    Healthy = 1,
    Unhealthy = 2,
}

impl Checked {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Healthy,
            2 => Self::Unhealthy,
            _ => Self::Pending,
        }
    }
}

/// One instance of a service.
#[derive(Debug)]
pub struct Endpoint {
    /// `http://address:port/base-path` (no trailing slash), what request paths are appended to.
    base: String,
    /// Its `address:port` and `/base-path` (no trailing slash), parsed once.
    authority: http::uri::Authority,
    base_path: String,
    /// Index of the configured URL it was discovered from.
    target: usize,
    checked: AtomicU8,
    in_flight: AtomicUsize,
    latency: Mutex<Latency>,
    consecutive_failures: AtomicU32,
    /// How many times it was ejected in a row: the back-off grows with it.
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    /// When the endpoint left discovery (read only by attempts older than a second).
    left: Mutex<Option<Instant>>,
    pub metrics: EndpointMetrics,
}

impl Endpoint {
    fn new(base: &Url, target: usize, checked: Checked, metrics: EndpointMetrics) -> Self {
        Self {
            base: base.as_str().trim_end_matches('/').to_owned(),
            authority: base
                .authority()
                .parse()
                .expect("an http URL's authority is a URI authority"),
            base_path: base.path().trim_end_matches('/').to_owned(),
            target,
            checked: AtomicU8::new(checked as u8),
            in_flight: AtomicUsize::new(0),
            latency: Mutex::new(Latency::default()),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            left: Mutex::new(None),
            metrics,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn checked(&self) -> Checked {
        Checked::from_u8(self.checked.load(Ordering::Relaxed))
    }

    /// Records a health check result; returns the previous state.
    pub fn set_checked(&self, checked: Checked) -> Checked {
        Checked::from_u8(self.checked.swap(checked as u8, Ordering::Relaxed))
    }

    fn ejected_until(&self) -> Option<Instant> {
        *self
            .ejected_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until().is_some_and(|until| now < until)
    }

    pub fn is_available(&self, now: Instant) -> bool {
        self.checked() == Checked::Healthy && !self.is_ejected(now)
    }

    /// The URI of `path` (which starts with `/`) and `query` on this endpoint, for a request:
    /// built from the parts parsed at start, no URL parsing per request.
    pub fn uri(&self, path: &str, query: &str) -> Result<http::Uri, http::Error> {
        let mut path_and_query =
            String::with_capacity(self.base_path.len() + path.len() + query.len() + 1);
        path_and_query.push_str(&self.base_path);
        path_and_query.push_str(path);
        if !query.is_empty() {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        http::Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    /// The URL of `path` (which starts with `/`) and `query` on this endpoint.
    pub fn url(&self, path: &str, query: &str) -> String {
        let mut url = String::with_capacity(self.base.len() + path.len() + query.len() + 1);
        url.push_str(&self.base);
        url.push_str(path);
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// Records how long an attempt took to its response head (or to its try time-out).
    pub fn observe(&self, took: Duration, now: Instant) {
        self.latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .observe(took, now);
    }

    /// What sending it one more request is expected to cost: its latency estimate (never below
    /// [`Latency::FLOOR`], so that load still counts between fast instances) times its
    /// requests in flight plus this one.
    pub fn cost(&self, now: Instant) -> f64 {
        let latency = self
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .estimate(now)
            .max(Latency::FLOOR);
        #[allow(clippy::cast_precision_loss)] // requests in flight are far below 2^52
        let waiting = (self.in_flight() + 1) as f64;
        latency * waiting
    }

    /// Whether the endpoint left discovery at least [`DEPARTED_GRACE`] before `now`.
    pub fn departed(&self, now: Instant) -> bool {
        self.left
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| now.saturating_duration_since(at) >= DEPARTED_GRACE)
    }

    fn leave(&self) {
        *self
            .left
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Returns `true` when this failure ejected the endpoint.
    pub fn record_failure(&self, now: Instant, policy: &HealthPolicy) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < policy.eject_after_failures {
            return false;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let repeats = self.ejections.fetch_add(1, Ordering::Relaxed).min(4);
        let until = now + policy.eject_for * 2u32.pow(repeats);
        *self
            .ejected_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(until);
        self.metrics.ejections.inc();
        true
    }

    /// A one-word summary for the admin API.
    pub fn state(&self, now: Instant) -> EndpointState {
        if self.is_ejected(now) {
            EndpointState::Ejected
        } else {
            match self.checked() {
                Checked::Pending => EndpointState::Pending,
                Checked::Healthy => EndpointState::Healthy,
                Checked::Unhealthy => EndpointState::Unhealthy,
            }
        }
    }
}

/// An endpoint's peak-EWMA latency, in seconds: a slower answer than the estimate raises it
/// at once (the peak), a faster one pulls it down by a weight that grows with the time since
/// the last answer, and with no answers it decays towards zero with the time constant
/// [`Latency::DECAY`]. A slow instance is thus avoided as soon as one answer shows it, and
/// tried again only once its estimate has decayed below the others' costs (for an instance
/// 100 times slower than its peers, about 45 s): recovery costs one slow request, not a
/// stream of them.
#[derive(Debug, Default)]
pub struct Latency {
    seconds: f64,
    at: Option<Instant>,
}

impl Latency {
    /// linkerd's default decay time.
    pub const DECAY: Duration = Duration::from_secs(10);
    /// The smallest latency a cost is computed with (a fresh endpoint has no estimate).
    pub const FLOOR: f64 = 0.000_1;
    /// What a failed attempt counts as, at least.
    pub const FAILURE_PENALTY: Duration = Duration::from_millis(100);

    fn weight(&self, now: Instant) -> f64 {
        self.at.map_or(0.0, |at| {
            (-now.saturating_duration_since(at).as_secs_f64() / Self::DECAY.as_secs_f64()).exp()
        })
    }

    /// The estimate at `now`.
    pub fn estimate(&self, now: Instant) -> f64 {
        self.seconds * self.weight(now)
    }

    pub fn observe(&mut self, took: Duration, now: Instant) {
        let sample = took.as_secs_f64();
        let weight = self.weight(now);
        let decayed = self.seconds * weight;
        self.seconds = if sample > decayed {
            sample
        } else {
            decayed + sample * (1.0 - weight)
        };
        self.at = Some(now);
    }
}

/// Decrements the endpoint's in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of one version of a service.
#[derive(Debug)]
pub struct Pool {
    route: String,
    kind: PoolKind,
    /// The configured URLs; a hostname in one stands for every address it resolves to.
    targets: Vec<Url>,
    endpoints: RwLock<Arc<[Arc<Endpoint>]>>,
    pub breaker: CircuitBreaker,
    policy: HealthPolicy,
    /// With active checks off, a new endpoint takes traffic at once.
    initial: Checked,
    metrics: Arc<GatewayMetrics>,
}

/// What a [`Pool::replace`] changed.
#[derive(Debug, Default)]
pub struct Changes {
    pub added: Vec<Arc<Endpoint>>,
    pub removed: Vec<Arc<Endpoint>>,
}

impl Pool {
    pub fn new(
        route: &str,
        kind: PoolKind,
        targets: Vec<Url>,
        breaker: BreakerConfig,
        policy: HealthPolicy,
        active_checks: bool,
        metrics: Arc<GatewayMetrics>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            route: route.to_owned(),
            kind,
            targets,
            endpoints: RwLock::new(Arc::from(Vec::new())),
            breaker: CircuitBreaker::new(breaker)?,
            policy,
            initial: if active_checks {
                Checked::Pending
            } else {
                Checked::Healthy
            },
            metrics,
        })
    }

    pub fn route(&self) -> &str {
        &self.route
    }

    pub fn kind(&self) -> PoolKind {
        self.kind
    }

    pub fn targets(&self) -> &[Url] {
        &self.targets
    }

    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    /// The current endpoints (a snapshot: cheap to take, never changes under the caller).
    pub fn endpoints(&self) -> Arc<[Arc<Endpoint>]> {
        Arc::clone(
            &self
                .endpoints
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Replaces the endpoints with `addresses` (resolved URL, index of its target): known
    /// endpoints are kept with their state, new ones start unchecked, missing ones leave.
    pub fn replace(&self, addresses: &[(Url, usize)]) -> Changes {
        let mut slot = self
            .endpoints
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut changes = Changes::default();
        let mut next = Vec::with_capacity(addresses.len());
        for (url, target) in addresses {
            let base = url.as_str().trim_end_matches('/');
            if next.iter().any(|e: &Arc<Endpoint>| e.base() == base) {
                continue;
            }
            if let Some(known) = slot.iter().find(|e| e.base() == base) {
                next.push(Arc::clone(known));
            } else {
                let metrics = self.metrics.endpoint(EndpointLabels {
                    route: self.route.clone(),
                    pool: self.kind.as_str().to_owned(),
                    endpoint: url.authority().to_owned(),
                });
                let endpoint = Arc::new(Endpoint::new(url, *target, self.initial, metrics));
                changes.added.push(Arc::clone(&endpoint));
                next.push(endpoint);
            }
        }
        for old in slot.iter() {
            if !next.iter().any(|e| Arc::ptr_eq(e, old)) {
                old.leave();
                self.metrics.forget(&old.metrics);
                changes.removed.push(Arc::clone(old));
            }
        }
        *slot = Arc::from(next);
        changes
    }

    /// The current endpoints that came from `target`.
    pub fn endpoints_of(&self, target: usize) -> Vec<Url> {
        self.endpoints()
            .iter()
            .filter(|e| e.target == target)
            .filter_map(|e| Url::parse(e.base()).ok())
            .collect()
    }

    /// Picks an endpoint of `endpoints` not in `tried`: power of two choices among the
    /// available ones; if none of the pool is available, among all (panic mode).
    pub fn pick(
        endpoints: &[Arc<Endpoint>],
        tried: &[Arc<Endpoint>],
        now: Instant,
    ) -> Option<Arc<Endpoint>> {
        let untried = |e: &&Arc<Endpoint>| !tried.iter().any(|t| Arc::ptr_eq(t, e));
        let available: Vec<&Arc<Endpoint>> = endpoints
            .iter()
            .filter(untried)
            .filter(|e| e.is_available(now))
            .collect();
        if !available.is_empty() {
            return Some(Arc::clone(two_choices(&available, now)));
        }
        if endpoints.iter().any(|e| e.is_available(now)) {
            return None; // the available ones were all tried
        }
        let all: Vec<&Arc<Endpoint>> = endpoints.iter().filter(untried).collect();
        (!all.is_empty()).then(|| Arc::clone(two_choices(&all, now)))
    }

    /// Counts a failed attempt against `endpoint`, ejecting it after too many in a row.
    pub fn record_failure(&self, endpoint: &Endpoint, outcome: Outcome, reason: &str) {
        if endpoint.record_failure(Instant::now(), &self.policy) {
            tracing::warn!(
                route = self.route,
                pool = self.kind.as_str(),
                endpoint = endpoint.base(),
                ?outcome,
                reason,
                "endpoint ejected"
            );
        } else {
            tracing::debug!(
                route = self.route,
                endpoint = endpoint.base(),
                reason,
                "attempt failed"
            );
        }
    }
}

fn two_choices<'a>(candidates: &[&'a Arc<Endpoint>], now: Instant) -> &'a Arc<Endpoint> {
    let n = candidates.len();
    if n == 1 {
        return candidates[0];
    }
    let a = fastrand::usize(..n);
    let b = (a + 1 + fastrand::usize(..n - 1)) % n;
    let (a, b) = (candidates[a], candidates[b]);
    if b.cost(now) < a.cost(now) { b } else { a }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn pool(n: usize, active_checks: bool) -> Pool {
        let pool = Pool::new(
            "x",
            PoolKind::Blue,
            Vec::new(),
            BreakerConfig::default(),
            HealthPolicy {
                eject_after_failures: 2,
                eject_for: Duration::from_secs(1),
            },
            active_checks,
            Arc::new(GatewayMetrics::new()),
        )
        .unwrap();
        let addresses: Vec<_> = (0..n)
            .map(|i| (Url::parse(&format!("http://10.0.0.{i}:8080")).unwrap(), 0))
            .collect();
        pool.replace(&addresses);
        pool
    }

    fn pick(pool: &Pool, tried: &[usize], now: Instant) -> Option<usize> {
        let endpoints = pool.endpoints();
        let tried: Vec<_> = tried.iter().map(|&i| Arc::clone(&endpoints[i])).collect();
        let chosen = Pool::pick(&endpoints, &tried, now)?;
        endpoints.iter().position(|e| Arc::ptr_eq(e, &chosen))
    }

    #[test]
    fn the_less_loaded_of_two_is_chosen() {
        let pool = pool(2, false);
        let endpoints = pool.endpoints();
        let _busy = endpoints[0].start();
        for _ in 0..20 {
            assert_eq!(pick(&pool, &[], Instant::now()), Some(1));
        }
    }

    #[test]
    fn a_slow_endpoint_gets_no_traffic_until_its_estimate_decays() {
        let pool = pool(2, false);
        let endpoints = pool.endpoints();
        let now = Instant::now();
        endpoints[0].observe(Duration::from_millis(2), now);
        endpoints[1].observe(Duration::from_millis(200), now);
        for _ in 0..50 {
            assert_eq!(pick(&pool, &[], now), Some(0), "the fast one, while fresh");
        }
        let busy: Vec<_> = (0..10).map(|_| endpoints[0].start()).collect();
        assert_eq!(
            pick(&pool, &[], now),
            Some(0),
            "ten in flight at 2 ms still cost less than one at 200 ms"
        );
        drop(busy);
        // Keep the fast one's estimate fresh; the slow one gets no answers and decays.
        let later = now + Duration::from_secs(60);
        endpoints[0].observe(Duration::from_millis(2), later);
        assert_eq!(
            pick(&pool, &[], later),
            Some(1),
            "after a minute without answers the slow one is tried again"
        );
    }

    #[test]
    fn the_latency_estimate_peaks_at_once_and_comes_down_slowly() {
        let mut latency = Latency::default();
        let start = Instant::now();
        latency.observe(Duration::from_millis(1), start);
        latency.observe(
            Duration::from_millis(100),
            start + Duration::from_millis(10),
        );
        let peak = latency.estimate(start + Duration::from_millis(10));
        assert!((peak - 0.1).abs() < 1e-9, "peak {peak}");
        // A fast answer 1 s later pulls it part of the way down, not all of it.
        let at = start + Duration::from_millis(1010);
        latency.observe(Duration::from_millis(1), at);
        let after = latency.estimate(at);
        assert!(
            after < 0.1 && after > 0.05,
            "after one fast answer: {after}"
        );
        // Fast answers for a while bring it back near them.
        let mut t = at;
        for _ in 0..600 {
            t += Duration::from_millis(100);
            latency.observe(Duration::from_millis(1), t);
        }
        let settled = latency.estimate(t);
        assert!(settled < 0.002, "settled at {settled}");
    }

    #[test]
    fn tried_endpoints_are_skipped() {
        let pool = pool(3, false);
        for _ in 0..20 {
            assert_eq!(pick(&pool, &[0, 2], Instant::now()), Some(1));
        }
        assert_eq!(pick(&pool, &[0, 1, 2], Instant::now()), None);
    }

    #[test]
    fn unchecked_endpoints_wait_for_a_passing_check_unless_none_is_healthy() {
        let pool = pool(3, true);
        let endpoints = pool.endpoints();
        let now = Instant::now();
        assert!(
            pick(&pool, &[], now).is_some(),
            "panic mode: nothing is healthy yet"
        );

        endpoints[1].set_checked(Checked::Healthy);
        for _ in 0..20 {
            assert_eq!(pick(&pool, &[], now), Some(1), "only the checked one");
        }
        assert_eq!(
            pick(&pool, &[1], now),
            None,
            "a retry does not fall back to unchecked ones"
        );
        endpoints[1].set_checked(Checked::Unhealthy);
        assert!(pick(&pool, &[], now).is_some(), "panic mode again");
    }

    #[test]
    fn consecutive_failures_eject_with_growing_back_off_and_success_resets() {
        let pool = pool(2, false);
        let endpoints = pool.endpoints();
        let (endpoint, policy, now) = (&endpoints[0], pool.policy().clone(), Instant::now());
        assert!(!endpoint.record_failure(now, &policy));
        assert!(
            endpoint.record_failure(now, &policy),
            "second consecutive failure ejects"
        );
        assert!(!endpoint.is_available(now + Duration::from_millis(999)));
        assert!(endpoint.is_available(now + Duration::from_secs(1)));
        for _ in 0..20 {
            assert_eq!(
                pick(&pool, &[], now),
                Some(1),
                "ejected endpoints get no traffic"
            );
        }
        endpoint.record_failure(now, &policy);
        endpoint.record_failure(now, &policy);
        assert!(
            !endpoint.is_available(now + Duration::from_millis(1999)),
            "twice as long"
        );
        endpoint.record_success();
        assert!(
            !endpoint.record_failure(now, &policy),
            "a success resets the count"
        );
    }

    #[test]
    fn replacing_keeps_known_endpoints_and_their_state() {
        let pool = pool(2, true);
        let before = pool.endpoints();
        before[0].set_checked(Checked::Healthy);
        let changes = pool.replace(&[
            (Url::parse("http://10.0.0.0:8080").unwrap(), 0),
            (Url::parse("http://10.0.0.7:8080").unwrap(), 0),
        ]);
        let after = pool.endpoints();
        assert!(Arc::ptr_eq(&before[0], &after[0]));
        assert_eq!(after[0].checked(), Checked::Healthy);
        assert_eq!(after[1].checked(), Checked::Pending);
        assert_eq!(changes.added.len(), 1);
        assert_eq!(changes.removed[0].base(), "http://10.0.0.1:8080");
    }

    #[test]
    fn urls_keep_the_base_path_and_the_query() {
        let pool = pool(0, false);
        pool.replace(&[(Url::parse("http://h:1/base/").unwrap(), 0)]);
        let endpoint = &pool.endpoints()[0];
        assert_eq!(
            endpoint.url("/products", "limit=2"),
            "http://h:1/base/products?limit=2"
        );
        assert_eq!(endpoint.url("/", ""), "http://h:1/base/");
        assert_eq!(
            endpoint.uri("/products", "limit=2").unwrap(),
            "http://h:1/base/products?limit=2"
        );
        assert_eq!(endpoint.uri("/", "").unwrap(), "http://h:1/base/");
    }
}
