//! What every worker shares: the route table with its services and pools, the rate limiter,
//! the limits, and the background upkeep that keeps the pools current (discovery, active
//! health checks, gauges).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use dockyard_resilience::{RetryBudget, State};
use tokio_util::sync::CancellationToken;

use crate::{
    checks::HealthChecker,
    config::GatewayConfig,
    discovery::Resolver,
    metrics::{GatewayMetrics, PoolLabels, RouteLabels, StateLabels},
    pool::{Pool, PoolKind},
    ratelimit::ClientLimiter,
    routes::{Route, RouteTable},
    service::Service,
};

#[derive(Debug)]
pub struct Gateway {
    pub routes: RouteTable,
    pub limiter: ClientLimiter,
    pub attempts: usize,
    pub try_timeout: Duration,
    pub timeout: Duration,
    pub retry_backoff: Duration,
    pub wait_for_instance: Duration,
    pub max_body_bytes: usize,
    pub metrics: Arc<GatewayMetrics>,
    resolver: Resolver,
    checker: Option<HealthChecker>,
    discovery_interval: Duration,
    check_interval: Duration,
}

impl Gateway {
    /// Builds every pool and runs a first discovery and health-check round, so the gateway
    /// starts with a current view.
    pub async fn start(
        config: &GatewayConfig,
        metrics: Arc<GatewayMetrics>,
    ) -> anyhow::Result<Self> {
        let active_checks = config.health_checks.is_some();
        let pool = |name: &str, kind, urls: &[url::Url]| -> anyhow::Result<Option<Pool>> {
            if urls.is_empty() {
                return Ok(None);
            }
            Ok(Some(Pool::new(
                name,
                kind,
                urls.to_vec(),
                config.breaker.clone(),
                config.health_policy.clone(),
                active_checks,
                Arc::clone(&metrics),
            )?))
        };
        let mut routes = Vec::new();
        for spec in &config.routes {
            let service = Service::new(
                &spec.name,
                pool(&spec.name, PoolKind::Blue, &spec.blue)?
                    .expect("ROUTES lists a URL per route"),
                pool(&spec.name, PoolKind::Green, &spec.green)?,
                pool(&spec.name, PoolKind::Canary, &spec.canary)?,
                config.active_pool == PoolKind::Green && !spec.green.is_empty(),
                config.canary_weight,
                config.canary_keys.clone(),
                RetryBudget::new(config.retry_budget.clone(), Instant::now()),
            );
            routes.push(Route {
                prefix: spec.prefix.clone(),
                service: Arc::new(service),
            });
        }
        let gateway = Self {
            routes: RouteTable::new(routes),
            limiter: ClientLimiter::new(
                config.rate_limit_per_sec,
                config.rate_limit_burst,
                config.trusted_proxies.clone(),
            ),
            attempts: config.attempts,
            try_timeout: config.try_timeout,
            timeout: config.timeout,
            retry_backoff: config.retry_backoff,
            wait_for_instance: config.wait_for_instance,
            max_body_bytes: config.max_body_bytes,
            metrics,
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
                .map_or(Duration::ZERO, |checks| checks.interval),
        };
        gateway.discover().await;
        gateway.update_gauges();
        Ok(gateway)
    }

    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.routes.iter().flat_map(|route| route.service.pools())
    }

    /// Re-resolves every pool; checks newly discovered endpoints at once.
    pub async fn discover(&self) {
        for pool in self.pools() {
            let changes = self.resolver.refresh(pool).await;
            if let (Some(checker), false) = (&self.checker, changes.added.is_empty()) {
                checker.check(pool, &changes.added).await;
            }
        }
    }

    /// One round of active health checks on every endpoint.
    pub async fn check(&self) {
        if let Some(checker) = &self.checker {
            for pool in self.pools() {
                checker.check(pool, &pool.endpoints()).await;
            }
        }
    }

    /// Refreshes the gauges (breaker states, endpoint states, weights, active pools).
    pub fn update_gauges(&self) {
        let now = Instant::now();
        for route in self.routes.iter() {
            let service = &route.service;
            let name = service.name().to_owned();
            self.metrics
                .canary_weight
                .get_or_create(&RouteLabels {
                    route: name.clone(),
                })
                .set(i64::from(service.canary_weight()));
            for pool in service.pools() {
                let pool_name = pool.kind().as_str().to_owned();
                let labels = PoolLabels {
                    route: name.clone(),
                    pool: pool_name.clone(),
                };
                let state = match pool.breaker.state(now) {
                    State::Closed => 0,
                    State::HalfOpen => 1,
                    State::Open => 2,
                };
                self.metrics.breaker_state.get_or_create(&labels).set(state);
                if pool.kind() != PoolKind::Canary {
                    let active = Arc::ptr_eq(pool, service.active());
                    self.metrics
                        .active_pool
                        .get_or_create(&labels)
                        .set(i64::from(active));
                }
                let endpoints = pool.endpoints();
                for state in ["healthy", "pending", "unhealthy", "ejected"] {
                    let count = endpoints.iter().filter(|e| e.state(now) == state).count();
                    self.metrics
                        .endpoints
                        .get_or_create(&StateLabels {
                            route: name.clone(),
                            pool: pool_name.clone(),
                            state,
                        })
                        .set(i64::try_from(count).unwrap_or(i64::MAX));
                }
            }
        }
    }

    /// Discovery, health checks and housekeeping until `stop` is cancelled.
    pub async fn run_upkeep(self: Arc<Self>, stop: CancellationToken) {
        let mut discovery = tokio::time::interval(self.discovery_interval);
        let mut checks = tokio::time::interval(if self.checker.is_some() {
            self.check_interval
        } else {
            Duration::from_secs(3600)
        });
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        for timer in [&mut discovery, &mut checks, &mut housekeeping] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer.reset(); // the first round ran at start
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = discovery.tick() => self.discover().await,
                _ = checks.tick() => self.check().await,
                _ = housekeeping.tick() => {
                    self.update_gauges();
                    self.limiter.forget_idle();
                }
            }
        }
    }
}
