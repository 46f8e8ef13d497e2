//! An upstream's endpoints: balancing and passive health.
//!
//! Balancing is the power of two choices: pick two available endpoints at random and send to
//! the one with fewer requests in flight. Cheap, and it avoids both herding (least-loaded
//! everywhere) and ignoring load (random).
//!
//! Passive health works like Envoy's outlier detection: `eject_after_failures` consecutive
//! failures (connect error, time-out, 5xx) eject an endpoint for `eject_for`, doubled on each
//! repeat (up to 16×); a success resets the count. If every endpoint is ejected, the least
//! recently ejected one is tried anyway rather than failing outright.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use url::Url;

#[derive(Debug, Clone)]
pub struct HealthPolicy {
    pub eject_after_failures: u32,
    pub eject_for: Duration,
}

/// One instance of a service.
#[derive(Debug)]
pub struct Endpoint {
    base: Url,
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// How many times it was ejected in a row: the back-off grows with it.
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    fn new(base: Url) -> Self {
        Self {
            base,
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
        }
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn ejected_until(&self) -> Option<Instant> {
        *self
            .ejected_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn is_available(&self, now: Instant) -> bool {
        self.ejected_until().is_none_or(|until| now >= until)
    }

    /// The URL for `path_and_query` (which starts with `/`) on this endpoint.
    pub fn url(&self, path: &str, query: &str) -> Url {
        let mut url = self.base.clone();
        let base_path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base_path}{path}"));
        url.set_query((!query.is_empty()).then_some(query));
        url
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejections.store(0, Ordering::Relaxed);
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
        true
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

/// The endpoints behind one route.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    endpoints: Vec<Endpoint>,
    policy: HealthPolicy,
}

impl Upstream {
    pub fn new(name: &str, bases: Vec<Url>, policy: HealthPolicy) -> Self {
        Self {
            name: name.to_owned(),
            endpoints: bases.into_iter().map(Endpoint::new).collect(),
            policy,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Picks an endpoint not in `tried`: power of two choices among the available ones;
    /// if none is available, the one whose ejection ends first.
    pub fn pick(&self, tried: &[usize], now: Instant) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.endpoints.len())
            .filter(|i| !tried.contains(i))
            .collect();
        let available: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| self.endpoints[i].is_available(now))
            .collect();
        match available.len() {
            0 => candidates
                .into_iter()
                .min_by_key(|&i| self.endpoints[i].ejected_until()),
            1 => Some(available[0]),
            n => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (a, b) = (available[a], available[b]);
                Some(
                    if self.endpoints[b].in_flight() < self.endpoints[a].in_flight() {
                        b
                    } else {
                        a
                    },
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(n: usize) -> Upstream {
        let bases = (0..n)
            .map(|i| Url::parse(&format!("http://10.0.0.{i}:80")).unwrap())
            .collect();
        Upstream::new(
            "/api/x",
            bases,
            HealthPolicy {
                eject_after_failures: 2,
                eject_for: Duration::from_secs(1),
            },
        )
    }

    #[test]
    fn the_less_loaded_of_two_is_chosen() {
        let upstream = upstream(2);
        let _busy = upstream.endpoints()[0].start();
        for _ in 0..20 {
            assert_eq!(upstream.pick(&[], Instant::now()), Some(1));
        }
    }

    #[test]
    fn tried_endpoints_are_skipped() {
        let upstream = upstream(3);
        for _ in 0..20 {
            let pick = upstream.pick(&[0, 2], Instant::now());
            assert_eq!(pick, Some(1));
        }
        assert_eq!(upstream.pick(&[0, 1, 2], Instant::now()), None);
    }

    #[test]
    fn consecutive_failures_eject_with_growing_back_off_and_success_resets() {
        let upstream = upstream(2);
        let (endpoint, policy, now) = (
            &upstream.endpoints()[0],
            upstream.policy().clone(),
            Instant::now(),
        );
        assert!(!endpoint.record_failure(now, &policy));
        assert!(
            endpoint.record_failure(now, &policy),
            "second consecutive failure ejects"
        );
        assert!(!endpoint.is_available(now + Duration::from_millis(999)));
        assert!(endpoint.is_available(now + Duration::from_secs(1)));
        for _ in 0..20 {
            assert_eq!(
                upstream.pick(&[], now),
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
    fn when_all_are_ejected_the_first_to_return_is_tried() {
        let upstream = upstream(2);
        let (policy, now) = (upstream.policy().clone(), Instant::now());
        for _ in 0..2 {
            upstream.endpoints()[0].record_failure(now, &policy);
        }
        for _ in 0..2 {
            upstream.endpoints()[1].record_failure(now + Duration::from_millis(10), &policy);
        }
        assert_eq!(upstream.pick(&[], now), Some(0));
    }

    #[test]
    fn urls_keep_the_base_path_and_the_query() {
        let endpoint = Endpoint::new(Url::parse("http://h:1/base/").unwrap());
        assert_eq!(
            endpoint.url("/products", "limit=2").as_str(),
            "http://h:1/base/products?limit=2"
        );
        assert_eq!(endpoint.url("/", "").as_str(), "http://h:1/base/");
    }
}
