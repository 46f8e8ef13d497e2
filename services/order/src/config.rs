//! Order settings, from the environment only.

use dockyard_messaging::BrokerConfig;
use std::time::Duration;

use dockyard_runtime::{
    command::{Command, DlqCommand},
    config::{ConfigError, from_env},
    database::DatabaseConfig,
    identity::IdentityConfig,
    server::HttpConfig,
};
use serde::Deserialize;

use crate::admission::AdmissionConfig;
use url::Url;

/// How the order service reaches the catalog: `CATALOG_URL`, `CATALOG_TIMEOUT_MS`,
/// `CATALOG_CONNECT_TIMEOUT_MS`, `CATALOG_PRICE_TTL_MS`.
#[derive(Debug, Clone, Deserialize)]
pub struct CatalogConfig {
    /// Base URL of the catalog, e.g. `http://catalog:8080`.
    pub catalog_url: String,
    /// Whole pricing request; past it the order takes the alternate path (pending, priced by
    /// the saga) rather than keep its client waiting.
    #[serde(default = "default_timeout_ms")]
    pub catalog_timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub catalog_connect_timeout_ms: u64,
    /// How long a price read from the catalog is used for new orders (the saga confirms at
    /// the catalog's price of that moment; `0` asks the catalog for every order).
    #[serde(default = "default_price_ttl_ms")]
    pub catalog_price_ttl_ms: u64,
}

fn default_price_ttl_ms() -> u64 {
    5_000
}

fn default_timeout_ms() -> u64 {
    800
}

fn default_connect_timeout_ms() -> u64 {
    200
}

impl CatalogConfig {
    pub fn base_url(&self) -> Result<Url, ConfigError> {
        let mut url = Url::parse(&self.catalog_url)
            .map_err(|e| ConfigError::new("CATALOG_URL", format!("is not a valid URL ({e})")))?;
        // A base with a path (`http://gateway/api/catalog`) keeps it: paths are joined to it.
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::new(
                "CATALOG_URL",
                "expected an http:// or https:// URL",
            ));
        }
        Ok(url)
    }
}

#[cfg(test)]
mod base_url_tests {
    use dockyard_runtime::config::from_vars;

    use super::*;

    #[test]
    fn a_base_path_is_kept_with_or_without_its_trailing_slash() {
        for base in ["http://gw:8080/api/catalog", "http://gw:8080/api/catalog/"] {
            let config: CatalogConfig = from_vars([("CATALOG_URL", base)]).unwrap();
            let products = config.base_url().unwrap().join("products").unwrap();
            assert_eq!(products.as_str(), "http://gw:8080/api/catalog/products");
        }
    }
}

/// The saga's deadline: `ORDER_PENDING_TIMEOUT`, `ORDER_PENDING_REPUBLISH`.
#[derive(Debug, Clone, Deserialize)]
pub struct SagaConfig {
    /// How long an order may stay `pending` before its `order.placed` is published again
    /// (`30s`, `500ms`, `2m`); each re-publication starts a new deadline.
    #[serde(with = "humantime_serde", default = "default_pending_timeout")]
    pub order_pending_timeout: Duration,
    /// Re-publications before a still-pending order is rejected with reason `timeout` (and a
    /// compensating `order.cancelled` releases whatever the catalog reserved).
    #[serde(default = "default_pending_republish")]
    pub order_pending_republish: u32,
}

fn default_pending_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_pending_republish() -> u32 {
    3
}

impl SagaConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.order_pending_timeout < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "ORDER_PENDING_TIMEOUT",
                "must be at least 100ms",
            ));
        }
        Ok(())
    }
}

/// What a command of the `order` binary needs: serving needs everything, `migrate` only the
/// database, `dlq` only the broker.
#[derive(Debug, Clone)]
pub enum Loaded {
    Serve(Box<Settings>),
    Migrate(DatabaseConfig),
    Dlq(BrokerConfig, DlqCommand),
}

impl Loaded {
    pub fn from_env(command: Command) -> Result<Self, ConfigError> {
        match command {
            Command::Migrate => {
                let database: DatabaseConfig = from_env()?;
                database.connect_options()?;
                Ok(Self::Migrate(database))
            }
            Command::Dlq(command) => {
                let broker: BrokerConfig = from_env()?;
                broker.validate()?;
                Ok(Self::Dlq(broker, command))
            }
            _ => Ok(Self::Serve(Box::new(Settings::from_env()?))),
        }
    }
}

/// Everything `order serve` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub broker: BrokerConfig,
    pub catalog: CatalogConfig,
    pub saga: SagaConfig,
    pub admission: AdmissionConfig,
    /// `REQUIRE_IDENTITY`: every `/orders` call needs the gateway's identity headers.
    pub identity: IdentityConfig,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let settings = Self {
            http: from_env()?,
            database: from_env()?,
            broker: from_env()?,
            catalog: from_env()?,
            saga: from_env()?,
            admission: from_env()?,
            identity: from_env()?,
        };
        settings.database.connect_options()?;
        settings.broker.validate()?;
        settings.catalog.base_url()?;
        settings.saga.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod saga_tests {
    use dockyard_runtime::config::from_vars;

    use super::*;

    #[test]
    fn the_deadline_reads_human_durations_and_names_a_bad_one() {
        let saga: SagaConfig = from_vars([("ORDER_PENDING_TIMEOUT", "1m 30s")]).unwrap();
        assert_eq!(saga.order_pending_timeout, Duration::from_secs(90));
        assert_eq!(saga.order_pending_republish, 3);
        let error = from_vars::<SagaConfig, _, _>([("ORDER_PENDING_TIMEOUT", "soon")]).unwrap_err();
        assert_eq!(error.variable, "ORDER_PENDING_TIMEOUT");
        let tiny: SagaConfig = from_vars([("ORDER_PENDING_TIMEOUT", "1ms")]).unwrap();
        assert_eq!(
            tiny.validate().unwrap_err().variable,
            "ORDER_PENDING_TIMEOUT"
        );
    }
}
