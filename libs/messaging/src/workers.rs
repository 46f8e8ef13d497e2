//! The background side of an event-driven service: its consumer and its outbox relay, started
//! together and stopped in the order that loses nothing.

use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Broker, OutboxRelay, Subscription};

/// How long each worker may take to stop.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running consumer and outbox relay on one broker connection.
#[derive(Debug)]
pub struct EventWorkers {
    stop_consumer: CancellationToken,
    stop_relay: CancellationToken,
    consumer: JoinHandle<()>,
    relay: JoinHandle<()>,
    broker: Broker,
}

impl EventWorkers {
    /// Starts consuming for `subscription` (with `pool`) and `relay`. Hand the relay's
    /// [`OutboxRelay::handoff`] to the subscription and to the process's other writers of
    /// events before.
    pub fn start(
        pool: PgPool,
        broker: Broker,
        subscription: Subscription,
        relay: OutboxRelay,
    ) -> Self {
        let (stop_consumer, stop_relay) = (CancellationToken::new(), CancellationToken::new());
        let relay = tokio::spawn(relay.run(stop_relay.clone()));
        let consumer = tokio::spawn(subscription.run(pool, broker.clone(), stop_consumer.clone()));
        Self {
            stop_consumer,
            stop_relay,
            consumer,
            relay,
            broker,
        }
    }

    /// The consumer finishes and acks its current message, then the relay publishes what is
    /// pending (the consumer's last events among it), then the broker connection closes. Each
    /// gets [`STOP_GRACE`]; one that takes longer (a broker that stopped answering) is aborted:
    /// its unacked message returns to the queue and its unpublished events stay in the outbox,
    /// so nothing is lost, and the process still exits.
    pub async fn stop(self) {
        for (name, stop, task) in [
            ("consumer", self.stop_consumer, self.consumer),
            ("outbox relay", self.stop_relay, self.relay),
        ] {
            stop.cancel();
            let abort = task.abort_handle();
            if tokio::time::timeout(STOP_GRACE, task).await.is_err() {
                tracing::warn!(
                    worker = name,
                    grace_ms = STOP_GRACE.as_millis(),
                    "did not stop in time; aborted"
                );
                abort.abort();
            }
        }
        if tokio::time::timeout(STOP_GRACE, self.broker.close())
            .await
            .is_err()
        {
            tracing::warn!("the broker connection did not close in time");
        }
    }
}
