//! Assembles the catalog process: a lazy pool, the supervised broker connection, health with
//! database, broker, outbox and consumer checks, the routes, and the saga's consumer and outbox relay.

use std::{future::Future, sync::Arc};

use dockyard_messaging::{
    Broker, BrokerCheck, ConsumerCheck, EventWorkers, OutboxCheck, OutboxRelay, Subscription,
    outbox::OutboxGauges,
};
use dockyard_runtime::{
    database::{Database, DatabaseCheck},
    health::Health,
    metrics::Metrics,
    server,
};

use crate::{SERVICE, config::Settings, events::OrderEvents, routes, store::ProductStore};

/// A bound, ready-to-run catalog.
pub struct Application {
    server: server::Server,
    database: Database,
    broker: Broker,
    subscription: Subscription,
    relay: OutboxRelay,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port())
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds the listener and starts connecting to the broker. Touches neither the database
    /// nor the broker synchronously: both are awaited in the background.
    pub fn build(settings: &Settings) -> anyhow::Result<Self> {
        let database = Database::new(settings.database.connect_lazy()?);
        let broker = Broker::start(settings.broker.clone(), dockyard_contracts::topology());
        let outbox = OutboxGauges::default();
        let relay =
            OutboxRelay::new(database.pool().clone(), broker.clone()).with_gauges(outbox.clone());
        let subscription =
            Subscription::new(SERVICE, Arc::new(OrderEvents)).with_handoff(relay.handoff());
        let health = Health::new(SERVICE)
            .with_check(DatabaseCheck::new(database.clone()))
            .with_check(BrokerCheck(broker.clone()))
            .with_check(OutboxCheck(outbox.clone()))
            .with_check(ConsumerCheck(subscription.status()));
        let mut metrics = Metrics::new();
        subscription.status().register(&mut metrics);
        outbox.register(&mut metrics);
        let store = ProductStore::new(database.clone());
        let identity = settings.identity;
        let server = server::bind(&settings.http, health, metrics, move |config| {
            routes::configure(config, store.for_worker(), identity);
        })?;
        Ok(Self {
            server,
            database,
            broker,
            subscription,
            relay,
        })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves and consumes until `shutdown` resolves. Then, in order: HTTP drains, the
    /// consumer finishes and acks its current message, the relay publishes what is pending,
    /// the broker connection closes, the pool closes.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let workers = EventWorkers::start(
            self.database.pool().clone(),
            self.broker,
            self.subscription,
            self.relay,
        );
        let served = self.server.run_until_stopped(shutdown).await;
        workers.stop().await;
        self.database.close().await;
        tracing::info!("broker and database closed; bye");
        Ok(served?)
    }
}
