//! Gateway settings, from the environment only.

use std::time::Duration;

use dockyard_runtime::{
    config::{ConfigError, from_env},
    server::HttpConfig,
};
use serde::Deserialize;

use crate::{routes::RouteTable, upstream::HealthPolicy};

/// From `ROUTES`, `UPSTREAM_*`, `EJECT_*`, `MAX_BODY_BYTES`.
#[derive(Debug, Clone, Deserialize)]
pub struct GatewayConfig {
    /// `prefix=url[,url…][;prefix=url…]`, e.g.
    /// `/api/catalog=http://127.0.0.1:8081,http://127.0.0.1:8083;/api/orders=http://127.0.0.1:8082`.
    pub routes: String,
    #[serde(default = "default_connect_timeout_ms")]
    pub upstream_connect_timeout_ms: u64,
    /// One attempt, from sending the request to receiving the response head.
    #[serde(default = "default_try_timeout_ms")]
    pub upstream_try_timeout_ms: u64,
    /// Attempts per request, each on a different endpoint (retries only for idempotent
    /// requests and POSTs with an `Idempotency-Key`).
    #[serde(default = "default_attempts")]
    pub upstream_attempts: usize,
    /// Consecutive failures (connect errors, time-outs, 5xx) that eject an endpoint.
    #[serde(default = "default_eject_after")]
    pub eject_after_failures: u32,
    /// First ejection time; doubled on each repeat, up to 16 times as long.
    #[serde(default = "default_eject_for_ms")]
    pub eject_for_ms: u64,
    /// Largest request body accepted (413 above).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

fn default_connect_timeout_ms() -> u64 {
    500
}
fn default_try_timeout_ms() -> u64 {
    10_000
}
fn default_attempts() -> usize {
    3
}
fn default_eject_after() -> u32 {
    3
}
fn default_eject_for_ms() -> u64 {
    5_000
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}

impl GatewayConfig {
    pub fn health_policy(&self) -> HealthPolicy {
        HealthPolicy {
            eject_after_failures: self.eject_after_failures.max(1),
            eject_for: Duration::from_millis(self.eject_for_ms),
        }
    }

    pub fn route_table(&self) -> Result<RouteTable, ConfigError> {
        RouteTable::parse(&self.routes, &self.health_policy())
            .map_err(|reason| ConfigError::new("ROUTES", reason))
    }
}

/// Everything `gateway serve` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpConfig,
    pub gateway: GatewayConfig,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let settings = Self {
            http: from_env()?,
            gateway: from_env()?,
        };
        settings.gateway.route_table()?;
        if settings.gateway.upstream_attempts == 0 {
            return Err(ConfigError::new("UPSTREAM_ATTEMPTS", "must be at least 1"));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use dockyard_runtime::config::from_vars;

    use super::*;

    #[test]
    fn a_missing_or_malformed_route_table_names_routes() {
        let missing = from_vars::<GatewayConfig, &str, &str>([]).unwrap_err();
        assert_eq!(missing.variable, "ROUTES");

        let config: GatewayConfig = from_vars([("ROUTES", "/api=ftp://nowhere")]).unwrap();
        let malformed = config.route_table().unwrap_err();
        assert_eq!(malformed.variable, "ROUTES");
        assert!(malformed.reason.contains("ftp://nowhere"), "{malformed}");
    }
}
