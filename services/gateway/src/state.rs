//! What every worker shares: the route table with its services and pools, the rate limiter,
//! the request policy (attempts, time-outs, body limit) and the metrics. Keeping the pools
//! current is [`crate::upkeep`]'s job.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use dockyard_gateway_admin::EndpointState;
use dockyard_resilience::{RetryBudget, State};

use crate::{
    auth::Authenticator,
    config::GatewayConfig,
    metrics::{GatewayMetrics, PoolLabels, RouteLabels, StateLabels},
    paths::InternalPaths,
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
    /// `None`: tokens are not verified, every route is public.
    pub auth: Option<Authenticator>,
    pub internal_paths: InternalPaths,
    pub metrics: Arc<GatewayMetrics>,
}

impl Gateway {
    /// Builds every route and pool (with no endpoint yet: [`crate::upkeep::Upkeep::start`]
    /// discovers them).
    pub fn new(
        config: &GatewayConfig,
        auth: Option<Authenticator>,
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
        Ok(Self {
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
            auth,
            internal_paths: config.internal_paths.clone(),
            metrics,
        })
    }

    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.routes.iter().flat_map(|route| route.service.pools())
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
                for state in EndpointState::ALL {
                    let count = endpoints.iter().filter(|e| e.state(now) == state).count();
                    self.metrics
                        .endpoints
                        .get_or_create(&StateLabels {
                            route: name.clone(),
                            pool: pool_name.clone(),
                            state: state.as_str(),
                        })
                        .set(i64::try_from(count).unwrap_or(i64::MAX));
                }
            }
        }
    }
}
