//! The background side of an event-driven service: its consumer and its outbox relay, started
//! together and stopped in the order that loses nothing.

use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Broker, OutboxRelay, Subscription, outbox::OutboxGauges};

/// How long each worker may take to stop.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running consumer and outbox relay on one broker connection.
#[derive(Debug)]
pub struct EventWorkers {
    stop: CancellationToken,
    consumer: JoinHandle<()>,
    relay: JoinHandle<()>,
    broker: Broker,
}

impl EventWorkers {
    /// Starts consuming for `subscription` and relaying the outbox of `pool` (counted in
    /// `outbox`).
    pub fn start(
        pool: PgPool,
        broker: Broker,
        subscription: Subscription,
        outbox: OutboxGauges,
    ) -> Self {
        let stop = CancellationToken::new();
        let relay = tokio::spawn(
            OutboxRelay::new(pool.clone(), broker.clone())
                .with_gauges(outbox)
                .run(stop.clone()),
        );
        let consumer = tokio::spawn(subscription.run(pool, broker.clone(), stop.clone()));
        Self {
            stop,
            consumer,
            relay,
            broker,
        }
    }

    /// The consumer finishes and acks its current message, the relay publishes what is
    /// pending, then the broker connection closes. Each gets [`STOP_GRACE`]; one that takes
    /// longer (a broker that stopped answering) is aborted: its unacked message returns to the
    /// queue and its unpublished events stay in the outbox, so nothing is lost, and the process
    /// still exits.
    pub async fn stop(self) {
        self.stop.cancel();
        for (name, task) in [("consumer", self.consumer), ("outbox relay", self.relay)] {
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
