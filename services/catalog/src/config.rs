//! Catalog settings: every one from an environment variable, each with a default in code
//! except `DATABASE_URL` and `AMQP_URL`.

use dockyard_messaging::BrokerConfig;
use dockyard_runtime::{
    config::{ConfigError, from_env},
    database::DatabaseConfig,
    server::HttpConfig,
};

/// Everything `catalog serve`, `migrate` and `seed` need.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub broker: BrokerConfig,
}

impl Settings {
    /// Reads and validates the environment; the error names the variable at fault.
    pub fn from_env() -> Result<Self, ConfigError> {
        let settings = Self {
            http: from_env()?,
            database: from_env()?,
            broker: from_env()?,
        };
        settings.database.connect_options()?;
        settings.broker.validate()?;
        Ok(settings)
    }
}
