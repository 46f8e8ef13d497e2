//! # dockyard-messaging
//!
//! Events between Dockyard services over RabbitMQ, with the guarantees a saga needs:
//! nothing lost, nothing doubled.
//!
//! - **Publishing** goes through a transactional [`outbox`]: a service inserts the event in the
//!   same PostgreSQL transaction as the change it describes; the [`outbox::OutboxRelay`] claims
//!   unpublished rows with `FOR UPDATE SKIP LOCKED` (safe with many instances), publishes them
//!   with publisher confirms and marks them sent. It wakes on `LISTEN/NOTIFY` and polls as a
//!   fallback. While the broker is away, events simply wait in the table.
//! - **Consuming** ([`consumer`]) acks only after the handler's transaction commits, and that
//!   transaction records the message id in the [`inbox`], so a redelivery has no second effect.
//!   Database outages are waited out; an event that can never be applied, or that keeps
//!   failing, is compensated by the handler and dead-lettered with the reason, without
//!   blocking the events behind it. The [`dlq`] commands list, show and replay dead letters.
//! - **Connection** ([`broker`]): lapin is supervised by a task that connects with back-off,
//!   declares the [`topology`], hands sessions to consumers and the relay, and reconnects when
//!   the connection drops (or was never up at start). Readiness reports it `degraded` while it
//!   is down, never unready: every replica shares the broker, and events wait in the outbox.
//!
//! # Layout
//! - [`config`]: `AMQP_URL` and friends.
//! - [`envelope`]: the event envelope every message carries.
//! - [`topology`]: exchange, quorum queues, dead-letter exchange and queues.
//! - [`broker`]: the supervised connection and its readiness check.
//! - [`outbox`]: enqueueing in a transaction, and the relay.
//! - [`inbox`]: de-duplication of handled messages.
//! - [`consumer`]: the consume loop around a service's handler.
//! - [`status`]: a consumer's state for readiness (stuck, dead letters growing) and metrics.
//! - [`dlq`]: the one-off `dlq list | show | replay` commands.
//! - [`workers`]: a service's consumer and relay, started together, stopped in order.
//! - `testing` (feature `testing`): a private exchange per test and an event probe.

pub mod broker;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod envelope;
pub mod inbox;
pub mod outbox;
pub mod status;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topology;
pub mod workers;

pub use broker::{Broker, BrokerCheck};
pub use config::BrokerConfig;
pub use consumer::{Compensation, Handled, Handler, HandlerError, HandlerFuture, Subscription};
pub use envelope::Envelope;
pub use outbox::{OutboxCheck, OutboxRelay};
pub use status::{ConsumerCheck, ConsumerStatus};
pub use topology::Topology;
pub use workers::EventWorkers;

/// The outbox and inbox tables. Services run it from their `migrate` command, beside their own
/// migrations (both ignore each other's versions).
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}
