//! Broker settings from the environment.

use dockyard_runtime::secret::SecretUrl;
use serde::Deserialize;

/// From `AMQP_URL`, `AMQP_EXCHANGE`, `AMQP_PREFETCH`, `AMQP_FAILURE_LIMIT`,
/// `AMQP_DELIVERY_LIMIT`.
#[derive(Debug, Clone, Deserialize)]
pub struct BrokerConfig {
    /// `amqp://user:password@host:5672/vhost`; the password is redacted when shown.
    pub amqp_url: SecretUrl,
    /// The topic exchange all events go through. Tests give each run its own.
    #[serde(default = "default_exchange")]
    pub amqp_exchange: String,
    /// Unacknowledged deliveries a consumer holds at once: bounds memory and in-flight work.
    /// A consumer starts each connection holding one and widens to this after its first
    /// handled event, so a process that dies at start-up holds (and returns) only one.
    #[serde(default = "default_prefetch")]
    pub amqp_prefetch: u16,
    /// Times the handler may fail on one event before it is given up on (compensated and
    /// dead-lettered). Counted by the consumer in the message itself, so the deaths of
    /// consumers that held the event do not count.
    #[serde(default = "default_failure_limit")]
    pub amqp_failure_limit: u32,
    /// The broker's own limit (the quorum queue's `x-delivery-limit`): every return of a
    /// message counts, consumer deaths included. A backstop for an event that kills the process
    /// handling it; well above `AMQP_FAILURE_LIMIT` so that crash loops do not reach it.
    #[serde(default = "default_delivery_limit")]
    pub amqp_delivery_limit: u32,
}

fn default_exchange() -> String {
    "dockyard.events".to_owned()
}

fn default_prefetch() -> u16 {
    64
}

fn default_failure_limit() -> u32 {
    5
}

fn default_delivery_limit() -> u32 {
    20
}

impl BrokerConfig {
    /// Checks the URI scheme; the error names `AMQP_URL`.
    pub fn validate(&self) -> Result<(), dockyard_runtime::config::ConfigError> {
        use dockyard_runtime::config::ConfigError;
        if !matches!(self.amqp_url.scheme(), "amqp" | "amqps") {
            return Err(ConfigError::new(
                "AMQP_URL",
                "expected an amqp:// or amqps:// URI",
            ));
        }
        if self.amqp_prefetch == 0 {
            return Err(ConfigError::new("AMQP_PREFETCH", "must be at least 1"));
        }
        if self.amqp_failure_limit == 0 {
            return Err(ConfigError::new("AMQP_FAILURE_LIMIT", "must be at least 1"));
        }
        if self.amqp_delivery_limit <= self.amqp_failure_limit {
            return Err(ConfigError::new(
                "AMQP_DELIVERY_LIMIT",
                "must be greater than AMQP_FAILURE_LIMIT (it is the backstop for crashes)",
            ));
        }
        Ok(())
    }
}
