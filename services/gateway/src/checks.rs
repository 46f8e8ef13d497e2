//! Active health checks: `GET HEALTH_CHECK_PATH` (by default `/health/ready`) on every
//! endpoint every `HEALTH_CHECK_INTERVAL_MS`. A 2xx within `HEALTH_CHECK_TIMEOUT_MS` makes
//! an endpoint healthy; anything else takes it out of rotation until a check passes. A newly
//! discovered endpoint is checked at once and joins after its first passing check. An endpoint
//! that passes again ends its pool breaker's open period: the next request is the probe.

use std::{sync::Arc, time::Duration};

use futures_util::future::join_all;

use crate::pool::{Checked, Endpoint, Pool};

#[derive(Debug, Clone)]
pub struct HealthChecker {
    client: reqwest::Client,
    path: String,
    timeout: Duration,
}

impl HealthChecker {
    pub fn new(path: &str, timeout: Duration, connect_timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .connect_timeout(connect_timeout)
                .timeout(timeout)
                // One connection per check: a check also proves the instance accepts new ones.
                .pool_max_idle_per_host(0)
                .build()?,
            path: path.to_owned(),
            timeout,
        })
    }

    async fn passes(&self, endpoint: &Endpoint) -> bool {
        let url = endpoint.url(&self.path, "");
        match self.client.get(url).timeout(self.timeout).send().await {
            Ok(response) => response.status().is_success(),
            Err(_) => false,
        }
    }

    /// Checks `endpoints` of `pool` concurrently and records the results.
    pub async fn check(&self, pool: &Pool, endpoints: &[Arc<Endpoint>]) {
        let results = join_all(endpoints.iter().map(|e| self.passes(e))).await;
        for (endpoint, passed) in endpoints.iter().zip(results) {
            let now = if passed {
                Checked::Healthy
            } else {
                Checked::Unhealthy
            };
            let before = endpoint.set_checked(now);
            if before == now {
                continue;
            }
            let (route, pool_kind, url) = (pool.route(), pool.kind().as_str(), endpoint.base());
            match now {
                Checked::Healthy => {
                    tracing::info!(
                        route,
                        pool = pool_kind,
                        endpoint = url,
                        "endpoint passed its health check; in rotation"
                    );
                    // The breaker measures the pool's health: an instance that is back ends
                    // its open period, so the next request probes instead of waiting it out.
                    if pool.breaker.end_open_period(std::time::Instant::now()) {
                        tracing::info!(
                            route,
                            pool = pool_kind,
                            "breaker half-open: an instance passed its check"
                        );
                    }
                }
                // Never in rotation (bar a pool in panic mode): an instance still starting is
                // no news. One that stays unready shows as `pending` in the admin API.
                _ if before == Checked::Pending => {
                    tracing::info!(
                        route,
                        pool = pool_kind,
                        endpoint = url,
                        "endpoint not ready yet; joins after a passing check"
                    );
                }
                _ => {
                    tracing::warn!(
                        route,
                        pool = pool_kind,
                        endpoint = url,
                        "endpoint failed its health check; out of rotation"
                    );
                }
            }
        }
    }
}
