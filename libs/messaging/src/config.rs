//! Broker settings from the environment.

use dockyard_runtime::secret::SecretUrl;
use serde::Deserialize;

/// From `AMQP_URL`, `AMQP_EXCHANGE`, `AMQP_PREFETCH`, `AMQP_DELIVERY_LIMIT`.
#[derive(Debug, Clone, Deserialize)]
pub struct BrokerConfig {
    /// `amqp://user:password@host:5672/vhost`; the password is redacted when shown.
    pub amqp_url: SecretUrl,
    /// The topic exchange all events go through. Tests give each run its own.
    #[serde(default = "default_exchange")]
    pub amqp_exchange: String,
    /// Unacknowledged deliveries a consumer holds at once: bounds memory and in-flight work.
    #[serde(default = "default_prefetch")]
    pub amqp_prefetch: u16,
    /// Deliveries of one message before it is dead-lettered as poison.
    #[serde(default = "default_delivery_limit")]
    pub amqp_delivery_limit: u32,
}

fn default_exchange() -> String {
    "dockyard.events".to_owned()
}

fn default_prefetch() -> u16 {
    16
}

fn default_delivery_limit() -> u32 {
    5
}

impl BrokerConfig {
    /// Checks the URI scheme; the error names `AMQP_URL`.
    pub fn validate(&self) -> Result<(), dockyard_runtime::config::ConfigError> {
        if matches!(self.amqp_url.scheme(), "amqp" | "amqps") {
            Ok(())
        } else {
            Err(dockyard_runtime::config::ConfigError::new(
                "AMQP_URL",
                "expected an amqp:// or amqps:// URI",
            ))
        }
    }
}
