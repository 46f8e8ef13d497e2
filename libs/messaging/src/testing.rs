//! Test support (feature `testing`): a private exchange per test, removed afterwards, and a
//! probe that observes the events published to it.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties, Consumer,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};

use crate::{
    config::QueueType,
    envelope::Envelope,
    topology::{self, Topology},
};

/// `AMQP_URL`, or the machine's local RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A uniquely named exchange (and so queues) on the test broker; deleted on drop.
#[derive(Debug)]
pub struct TestExchange {
    name: String,
    topology: Topology,
    queues: topology::Queues,
}

impl TestExchange {
    /// An exchange for `topology`'s queues (quorum queues, as services declare them by default).
    pub fn new(topology: Topology) -> Self {
        Self {
            name: format!("test.{}", uuid::Uuid::new_v4().simple()),
            topology,
            queues: topology::Queues {
                kind: QueueType::Quorum,
                delivery_limit: 20,
            },
        }
    }

    /// Its queues are of `kind` (declare the services' with the same `AMQP_QUEUE_TYPE`).
    #[must_use]
    pub fn with_queue_type(mut self, kind: QueueType) -> Self {
        self.queues.kind = kind;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Publishes `envelope` with its type as routing key, as an outbox relay would.
    pub async fn publish(&self, envelope: &Envelope) {
        let connection = connect().await;
        let channel = connection.create_channel().await.expect("a channel");
        let body = serde_json::to_vec(envelope).expect("an envelope serialises");
        channel
            .basic_publish(
                self.name.as_str().into(),
                envelope.kind.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .expect("publishing")
            .await
            .expect("a confirmation");
        let _ = connection.close(200, "published".into()).await;
    }

    /// How many messages wait in `consumer`'s dead-letter queue.
    pub async fn dead_letters(&self, consumer: &str) -> u32 {
        let connection = connect().await;
        let channel = connection.create_channel().await.expect("a channel");
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare(
                topology::dead_letter_queue(&self.name, consumer)
                    .as_str()
                    .into(),
                passive,
                FieldTable::default(),
            )
            .await
            .expect("the dead-letter queue exists");
        let _ = connection.close(200, "counted".into()).await;
        queue.message_count()
    }

    /// Waits up to `timeout` until `consumer`'s dead-letter queue holds `expected` messages;
    /// returns the last count seen.
    pub async fn wait_for_dead_letters(
        &self,
        consumer: &str,
        expected: u32,
        timeout: Duration,
    ) -> u32 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let count = self.dead_letters(consumer).await;
            if count >= expected || tokio::time::Instant::now() >= deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A probe receiving every event published with a key matching `pattern` from now on.
    pub async fn probe(&self, pattern: &str) -> EventProbe {
        let connection = connect().await;
        // The exchange may not exist yet if no service has connected: declare it the same way.
        topology::declare(&connection, &self.topology, &self.name, self.queues)
            .await
            .expect("declaring the topology");
        let channel = connection.create_channel().await.expect("a channel");
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare("".into(), exclusive, FieldTable::default())
            .await
            .expect("a probe queue");
        channel
            .queue_bind(
                queue.name().clone(),
                self.name.as_str().into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("binding the probe");
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "probe".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consuming the probe");
        EventProbe {
            _connection: connection,
            consumer,
        }
    }
}

impl Drop for TestExchange {
    fn drop(&mut self) {
        let (name, topology) = (self.name.clone(), self.topology.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let connection = connect().await;
                let channel = connection.create_channel().await.expect("a channel");
                if let Err(error) = topology::delete(&channel, &topology, &name).await {
                    eprintln!("could not delete test exchange {name}: {error}");
                }
                let _ = connection.close(200, "cleaned up".into()).await;
            });
        })
        .join();
    }
}

async fn connect() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("tests need RabbitMQ at AMQP_URL")
}

/// Events observed on a test exchange.
pub struct EventProbe {
    _connection: Connection,
    consumer: Consumer,
}

impl std::fmt::Debug for EventProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventProbe").finish_non_exhaustive()
    }
}

impl EventProbe {
    /// The next event, or a panic after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Envelope {
        let delivery = tokio::time::timeout(timeout, self.consumer.next())
            .await
            .expect("an event within the timeout")
            .expect("the probe is open")
            .expect("a delivery");
        delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("acking");
        serde_json::from_slice(&delivery.data).expect("an envelope")
    }
}
