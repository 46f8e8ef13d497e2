//! A routed service: its stable pool(s), an optional canary pool, the traffic split between
//! them and the retry budget shared by its requests.
//!
//! - **Blue-green**: two stable pools, one active. [`Service::switch`] flips one atomic:
//!   requests already running keep the endpoint they hold, new ones go to the other pool, so
//!   the switch fails no request as long as both pools are up.
//! - **Canary**: `weight` percent of clients go to the canary pool. The split is sticky per
//!   client key (a header, else a cookie), so a user sees one version; without a key each
//!   request is split at random. A header forces the choice (`always` / `never`). If the
//!   canary's breaker is open, its share falls back to the active stable pool.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU8, Ordering},
};

use dockyard_resilience::RetryBudget;
use http::HeaderMap;

use crate::pool::{Pool, PoolKind};

/// Where the canary choice comes from.
#[derive(Debug, Clone)]
pub struct CanaryKeys {
    pub force_header: String,
    pub key_header: String,
    pub key_cookie: String,
}

#[derive(Debug)]
pub struct Service {
    name: String,
    blue: Arc<Pool>,
    green: Option<Arc<Pool>>,
    canary: Option<Arc<Pool>>,
    green_active: AtomicBool,
    canary_weight: AtomicU8,
    keys: CanaryKeys,
    pub budget: RetryBudget,
}

/// A change the admin API asked for that this service cannot make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("route `{0}` has no {1} pool")]
    NoSuchPool(String, &'static str),
    #[error("the canary weight is a percentage: 0 to 100")]
    WeightOutOfRange,
    #[error("only blue or green can be the active pool")]
    NotStable,
}

impl Service {
    #[allow(clippy::too_many_arguments)] // one per pool and policy; built in one place
    pub fn new(
        name: &str,
        blue: Pool,
        green: Option<Pool>,
        canary: Option<Pool>,
        green_active: bool,
        canary_weight: u8,
        keys: CanaryKeys,
        budget: RetryBudget,
    ) -> Self {
        Self {
            name: name.to_owned(),
            blue: Arc::new(blue),
            green: green.map(Arc::new),
            canary: canary.map(Arc::new),
            green_active: AtomicBool::new(green_active),
            canary_weight: AtomicU8::new(canary_weight.min(100)),
            keys,
            budget,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        std::iter::once(&self.blue)
            .chain(self.green.as_ref())
            .chain(self.canary.as_ref())
    }

    /// The stable pool taking traffic now.
    pub fn active(&self) -> &Arc<Pool> {
        match &self.green {
            Some(green) if self.green_active.load(Ordering::Acquire) => green,
            _ => &self.blue,
        }
    }

    pub fn canary(&self) -> Option<&Arc<Pool>> {
        self.canary.as_ref()
    }

    pub fn canary_weight(&self) -> u8 {
        self.canary_weight.load(Ordering::Relaxed)
    }

    pub fn set_canary_weight(&self, weight: u8) -> Result<(), ChangeError> {
        if self.canary.is_none() {
            return Err(ChangeError::NoSuchPool(self.name.clone(), "canary"));
        }
        if weight > 100 {
            return Err(ChangeError::WeightOutOfRange);
        }
        self.canary_weight.store(weight, Ordering::Relaxed);
        Ok(())
    }

    /// Makes `to` the active stable pool.
    pub fn switch(&self, to: PoolKind) -> Result<(), ChangeError> {
        match to {
            PoolKind::Blue => self.green_active.store(false, Ordering::Release),
            PoolKind::Green if self.green.is_none() => {
                return Err(ChangeError::NoSuchPool(self.name.clone(), "green"));
            }
            PoolKind::Green => self.green_active.store(true, Ordering::Release),
            PoolKind::Canary => return Err(ChangeError::NotStable),
        }
        Ok(())
    }

    /// The canary pool, if this request belongs to the canary's share.
    pub fn canary_for(&self, headers: &HeaderMap) -> Option<&Arc<Pool>> {
        let canary = self.canary.as_ref()?;
        match headers
            .get(self.keys.force_header.as_str())
            .and_then(|v| v.to_str().ok())
        {
            Some(v) if v.eq_ignore_ascii_case("always") => return Some(canary),
            Some(v) if v.eq_ignore_ascii_case("never") => return None,
            _ => {}
        }
        let weight = u64::from(self.canary_weight());
        if weight == 0 {
            return None;
        }
        let bucket = match self.client_key(headers) {
            Some(key) => fnv1a(key.as_bytes()) % 100,
            None => fastrand::u64(..100),
        };
        (bucket < weight).then_some(canary)
    }

    fn client_key<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        if let Some(key) = headers
            .get(self.keys.key_header.as_str())
            .and_then(|v| v.to_str().ok())
        {
            return Some(key);
        }
        headers
            .get_all("cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == self.keys.key_cookie)
            .map(|(_, value)| value)
    }
}

/// FNV-1a: a fixed, well-spread hash, so every gateway replica (and every build) puts a
/// client key in the same bucket.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use dockyard_resilience::{BreakerConfig, BudgetConfig};
    use http::header::{HeaderName, HeaderValue};

    use super::*;
    use crate::{metrics::GatewayMetrics, pool::HealthPolicy};

    fn pool(kind: PoolKind) -> Pool {
        Pool::new(
            "catalog",
            kind,
            Vec::new(),
            BreakerConfig::default(),
            HealthPolicy {
                eject_after_failures: 3,
                eject_for: Duration::from_secs(1),
            },
            false,
            Arc::new(GatewayMetrics::new()),
        )
        .unwrap()
    }

    fn service(weight: u8) -> Service {
        Service::new(
            "catalog",
            pool(PoolKind::Blue),
            Some(pool(PoolKind::Green)),
            Some(pool(PoolKind::Canary)),
            false,
            weight,
            CanaryKeys {
                force_header: "x-canary".into(),
                key_header: "x-client-id".into(),
                key_cookie: "dockyard_client".into(),
            },
            RetryBudget::new(BudgetConfig::default(), Instant::now()),
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn a_client_key_always_lands_on_the_same_side() {
        let service = service(30);
        for client in 0..200 {
            let key = format!("client-{client}");
            let by_header = service
                .canary_for(&headers(&[("x-client-id", &key)]))
                .is_some();
            for _ in 0..5 {
                let again = service
                    .canary_for(&headers(&[(
                        "cookie",
                        &format!("a=b; dockyard_client={key}"),
                    )]))
                    .is_some();
                assert_eq!(again, by_header, "{key}");
            }
        }
    }

    #[test]
    fn the_force_header_overrides_the_weight() {
        let service = service(0);
        assert!(
            service
                .canary_for(&headers(&[("x-canary", "always")]))
                .is_some()
        );
        service.set_canary_weight(100).unwrap();
        assert!(service.canary_for(&headers(&[])).is_some());
        assert!(
            service
                .canary_for(&headers(&[("x-canary", "never")]))
                .is_none()
        );
    }

    #[test]
    fn switching_flips_the_active_pool_and_refuses_what_cannot_be() {
        let service = service(0);
        assert_eq!(service.active().kind(), PoolKind::Blue);
        service.switch(PoolKind::Green).unwrap();
        assert_eq!(service.active().kind(), PoolKind::Green);
        assert_eq!(
            service.switch(PoolKind::Canary),
            Err(ChangeError::NotStable)
        );
        assert_eq!(
            service.set_canary_weight(101),
            Err(ChangeError::WeightOutOfRange)
        );
    }
}
