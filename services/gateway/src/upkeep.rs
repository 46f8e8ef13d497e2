//! Keeping the pools current, in the background: discovery (hostnames re-resolved into
//! endpoints), active health checks, the gauges, forgetting idle rate-limit buckets, and
//! fetching a JWKS URL's keys again.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    auth::Authenticator, checks::HealthChecker, config::GatewayConfig, discovery::Resolver,
    state::Gateway,
};

/// The upkeep of one gateway's pools.
#[derive(Debug)]
pub struct Upkeep {
    gateway: Arc<Gateway>,
    resolver: Resolver,
    checker: Option<HealthChecker>,
    discovery_interval: Duration,
    check_interval: Duration,
}

impl Upkeep {
    /// Runs a first discovery and health-check round, so the gateway starts with a current
    /// view.
    pub async fn start(config: &GatewayConfig, gateway: Arc<Gateway>) -> anyhow::Result<Self> {
        let upkeep = Self {
            gateway,
            resolver: Resolver::new(config.discovery_nameserver)?,
            checker: config
                .health_checks
                .as_ref()
                .map(|checks| {
                    HealthChecker::new(&checks.path, checks.timeout, config.connect_timeout)
                })
                .transpose()?,
            discovery_interval: config.discovery_interval,
            check_interval: config
                .health_checks
                .as_ref()
                .map_or(Duration::from_secs(3600), |checks| checks.interval),
        };
        upkeep.discover().await;
        upkeep.gateway.update_gauges();
        Ok(upkeep)
    }

    /// Re-resolves every pool; checks newly discovered endpoints at once.
    async fn discover(&self) {
        for pool in self.gateway.pools() {
            let changes = self.resolver.refresh(pool).await;
            if let (Some(checker), false) = (&self.checker, changes.added.is_empty()) {
                checker.check(pool, &changes.added).await;
            }
        }
    }

    /// One round of active health checks on every endpoint.
    async fn check(&self) {
        if let Some(checker) = &self.checker {
            for pool in self.gateway.pools() {
                checker.check(pool, &pool.endpoints()).await;
            }
        }
    }

    /// Discovery, health checks and housekeeping until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut discovery = tokio::time::interval(self.discovery_interval);
        let mut checks = tokio::time::interval(self.check_interval);
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        let auth = self.gateway.auth.as_ref();
        let mut keys = tokio::time::interval(
            auth.and_then(Authenticator::refresh_interval)
                .unwrap_or(Duration::from_secs(3600)),
        );
        for timer in [&mut discovery, &mut checks, &mut housekeeping, &mut keys] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer.reset(); // the first round ran at start
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = discovery.tick() => self.discover().await,
                _ = checks.tick() => self.check().await,
                _ = keys.tick() => if let Some(auth) = auth { auth.refresh().await },
                _ = housekeeping.tick() => {
                    self.gateway.update_gauges();
                    self.gateway.limiter.forget_idle();
                }
            }
        }
    }
}
