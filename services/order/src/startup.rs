//! Assembles the order process: pool, broker, catalog client, routes, the stock-event
//! consumer, the outbox relay and the saga's deadline; shuts them down in order.

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

use tokio_util::sync::CancellationToken;

use crate::{
    SERVICE,
    admission::{Admission, Signals},
    catalog::CatalogClient,
    config::Settings,
    events::{Deadline, StockEvents},
    routes,
    store::{OrderCounts, OrderStore},
};

/// A bound, ready-to-run order service.
pub struct Application {
    server: server::Server,
    database: Database,
    broker: Broker,
    subscription: Subscription,
    relay: OutboxRelay,
    deadline: Deadline,
    admission: Arc<Admission>,
    outbox: OutboxGauges,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port())
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds the listener; the database, broker and catalog are reached in the background.
    pub fn build(settings: &Settings) -> anyhow::Result<Self> {
        let database = Database::new(settings.database.connect_lazy()?);
        let broker = Broker::start(settings.broker.clone(), dockyard_contracts::topology());
        let catalog = CatalogClient::new(&settings.catalog)?;
        let outbox = OutboxGauges::default();
        let relay =
            OutboxRelay::new(database.pool().clone(), broker.clone()).with_gauges(outbox.clone());
        let counts = OrderCounts::default();
        let subscription = Subscription::new(
            SERVICE,
            Arc::new(StockEvents {
                counts: counts.clone(),
            }),
        )
        .with_handoff(relay.handoff());
        let health = Health::new(SERVICE)
            .with_check(DatabaseCheck::new(database.clone()))
            .with_check(BrokerCheck(broker.clone()))
            .with_check(OutboxCheck(outbox.clone()))
            .with_check(ConsumerCheck(subscription.status()));
        let mut metrics = Metrics::new();
        subscription.status().register(&mut metrics);
        outbox.register(&mut metrics);
        counts.register(&mut metrics);
        let deadline = Deadline::new(
            database.pool().clone(),
            settings.saga.clone(),
            counts.clone(),
            &mut metrics,
        );
        catalog.register(&mut metrics);
        let admission = Admission::new(settings.admission.clone(), &mut metrics);
        let store = OrderStore::new(
            database.clone(),
            relay.handoff(),
            settings.saga.order_pending_timeout,
            counts,
        );
        let admitting = admission.clone();
        let identity = settings.identity;
        let server = server::bind(&settings.http, health, metrics, move |config| {
            routes::configure(
                config,
                store.clone(),
                catalog.clone(),
                admitting.clone(),
                identity,
            );
        })?;
        Ok(Self {
            server,
            database,
            broker,
            subscription,
            relay,
            deadline,
            admission,
            outbox,
        })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves until `shutdown`; then drains HTTP, stops the deadline, stops the consumer
    /// after its current message, flushes the relay, closes the broker and the pool.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let signals = Signals {
            broker: self.broker.clone(),
            outbox: self.outbox,
        };
        let workers = EventWorkers::start(
            self.database.pool().clone(),
            self.broker,
            self.subscription,
            self.relay,
        );
        let stop_deadline = CancellationToken::new();
        let deadline = tokio::spawn(self.deadline.run(stop_deadline.clone()));
        let admission = tokio::spawn(self.admission.run(
            self.database.pool().clone(),
            signals,
            stop_deadline.clone(),
        ));
        let served = self.server.run_until_stopped(shutdown).await;
        stop_deadline.cancel();
        let _ = deadline.await;
        let _ = admission.await;
        workers.stop().await;
        self.database.close().await;
        tracing::info!("broker and database closed; bye");
        Ok(served?)
    }
}
