//! The background side of an event-driven service: its consumer and its outbox relay, started
//! together and stopped in the order that loses nothing.

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Broker, OutboxRelay, Subscription};

/// A running consumer and outbox relay on one broker connection.
#[derive(Debug)]
pub struct EventWorkers {
    stop: CancellationToken,
    consumer: JoinHandle<()>,
    relay: JoinHandle<()>,
    broker: Broker,
}

impl EventWorkers {
    /// Starts consuming for `subscription` and relaying the outbox of `pool`.
    pub fn start(pool: PgPool, broker: Broker, subscription: Subscription) -> Self {
        let stop = CancellationToken::new();
        let relay = tokio::spawn(OutboxRelay::new(pool.clone(), broker.clone()).run(stop.clone()));
        let consumer = tokio::spawn(subscription.run(pool, broker.clone(), stop.clone()));
        Self {
            stop,
            consumer,
            relay,
            broker,
        }
    }

    /// The consumer finishes and acks its current message, the relay publishes what is
    /// pending, then the broker connection closes.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.consumer.await;
        let _ = self.relay.await;
        self.broker.close().await;
    }
}
