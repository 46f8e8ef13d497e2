//! Broker settings from the environment.

use dockyard_runtime::secret::SecretUrl;
use serde::Deserialize;

/// From `AMQP_URL`, `AMQP_EXCHANGE`, `AMQP_QUEUE_TYPE`, `AMQP_PREFETCH`,
/// `AMQP_FAILURE_LIMIT`, `AMQP_DELIVERY_LIMIT`.
#[derive(Debug, Clone, Deserialize)]
pub struct BrokerConfig {
    /// `amqp://user:password@host:5672/vhost`; the password is redacted when shown.
    pub amqp_url: SecretUrl,
    /// The topic exchange all events go through. Tests give each run its own.
    #[serde(default = "default_exchange")]
    pub amqp_exchange: String,
    /// How the consumers' queues keep their messages (see [`QueueType`]).
    #[serde(default)]
    pub amqp_queue_type: QueueType,
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
    /// Classic queues have no such limit.
    #[serde(default = "default_delivery_limit")]
    pub amqp_delivery_limit: u32,
}

/// `AMQP_QUEUE_TYPE`: the kind of queue each consumer's (and dead-letter) queue is declared as.
/// An existing queue keeps the kind it was declared with (RabbitMQ cannot change it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Raft-replicated (across a cluster's nodes), every message written to the queue's log
    /// before it is confirmed or delivered, and `x-delivery-limit` as the backstop for an event
    /// that kills its consumer. The default: what RabbitMQ recommends for data that must not be
    /// lost.
    #[default]
    Quorum,
    /// Durable classic queues: persistent messages are confirmed once written to the node's
    /// message store (or consumed and acknowledged), delivered without waiting for the disk,
    /// and not replicated. No broker-side delivery limit: an event that kills its consumer
    /// before the consumer can count a failure (not a panic: those are caught and counted) is
    /// delivered again for as long as that happens. Less work per message for the broker and
    /// the disk (BENCHMARKS.md measures both kinds).
    Classic,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
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
