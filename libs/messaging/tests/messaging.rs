//! The messaging library against the real RabbitMQ and PostgreSQL of the machine. Each test
//! gets its own database and its own exchange (so its own queues), deleted afterwards.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use dockyard_messaging::{
    Broker, BrokerConfig, Envelope, Handler, HandlerError, OutboxRelay, Subscription, outbox,
    testing::{TestExchange, amqp_url},
    topology,
};
use dockyard_runtime::config;
use dockyard_testkit::{TcpProxy, TestDatabase};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, QueueDeclareOptions},
    types::FieldTable,
};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Records each applied event in `effects`; `stock.rejected` with `{"poison": true}` is
/// permanently invalid.
struct RecordEffects;

impl Handler for RecordEffects {
    fn understands(&self, envelope: &Envelope) -> bool {
        envelope.version == 1
    }

    fn handle<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        envelope: &'a Envelope,
    ) -> Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>> {
        Box::pin(async move {
            if envelope.payload["poison"] == true {
                return Err(HandlerError::Permanent("poison".to_owned()));
            }
            sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
                .bind(envelope.id)
                .execute(transaction)
                .await?;
            Ok(())
        })
    }
}

/// A database with the messaging tables and an `effects` table, and a private exchange.
struct Fixture {
    db: TestDatabase,
    pool: PgPool,
    /// Deleted with every queue on drop, even when the test fails.
    exchange: TestExchange,
    shutdown: CancellationToken,
}

impl Fixture {
    async fn new() -> Self {
        let db = TestDatabase::create("messaging").await;
        let pool = db.pool().await;
        dockyard_messaging::migrator().run(&pool).await.unwrap();
        sqlx::query("CREATE TABLE effects (event_id uuid NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        Self {
            db,
            pool,
            exchange: TestExchange::new(),
            shutdown: CancellationToken::new(),
        }
    }

    fn broker_config(&self, url: &str) -> BrokerConfig {
        config::from_vars([
            ("AMQP_URL", url),
            ("AMQP_EXCHANGE", self.exchange.name()),
            ("AMQP_DELIVERY_LIMIT", "3"),
        ])
        .unwrap()
    }

    /// Starts a broker, the relay and an `order` consumer with [`RecordEffects`].
    fn start(&self, url: &str) -> Broker {
        let broker = Broker::start(self.broker_config(url));
        tokio::spawn(
            OutboxRelay::new(self.pool.clone(), broker.clone()).run(self.shutdown.clone()),
        );
        let subscription = Subscription {
            consumer: "order",
            handler: Arc::new(RecordEffects),
        };
        tokio::spawn(subscription.run(self.pool.clone(), broker.clone(), self.shutdown.clone()));
        broker
    }

    async fn enqueue(&self, envelope: &Envelope) {
        let mut transaction = self.pool.begin().await.unwrap();
        outbox::enqueue(&mut transaction, envelope).await.unwrap();
        transaction.commit().await.unwrap();
    }

    async fn effects(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM effects")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn wait_for_effects(&self, expected: i64) {
        for _ in 0..200 {
            if self.effects().await >= expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("expected {expected} effects, saw {}", self.effects().await);
    }

    /// Waits until `broker` is connected, which means the topology is declared.
    async fn connected(&self, broker: &Broker) {
        for _ in 0..100 {
            if broker.is_connected() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the broker never connected");
    }

    /// Publishes raw bytes straight to the exchange, bypassing the outbox.
    async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .basic_publish(
                self.exchange.name().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        connection.close(200, "done".into()).await.unwrap();
    }

    async fn dead_lettered(&self) -> u32 {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare(
                topology::dead_letter_queue(self.exchange.name(), "order")
                    .as_str()
                    .into(),
                passive,
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = connection.close(200, "done".into()).await;
        queue.message_count()
    }

    async fn stop(self, broker: Broker) {
        self.shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        broker.close().await;
        drop(self.db);
    }
}

#[tokio::test]
async fn an_enqueued_event_is_relayed_and_handled_once() {
    let fixture = Fixture::new().await;
    let broker = fixture.start(&amqp_url());

    fixture
        .enqueue(&Envelope::new(
            "stock.reserved",
            Uuid::now_v7(),
            &serde_json::json!({"n": 1}),
        ))
        .await;

    fixture.wait_for_effects(1).await;
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&fixture.pool)
            .await
            .unwrap();
    assert_eq!(unpublished, 0, "the relay marks what it published");
    fixture.stop(broker).await;
}

#[tokio::test]
async fn an_event_rolled_back_with_its_transaction_is_never_published() {
    let fixture = Fixture::new().await;
    let broker = fixture.start(&amqp_url());
    let mut transaction = fixture.pool.begin().await.unwrap();
    outbox::enqueue(
        &mut transaction,
        &Envelope::new("stock.reserved", Uuid::now_v7(), &()),
    )
    .await
    .unwrap();
    transaction.rollback().await.unwrap();

    fixture
        .enqueue(&Envelope::new("stock.reserved", Uuid::now_v7(), &()))
        .await;

    fixture.wait_for_effects(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fixture.effects().await, 1);
    fixture.stop(broker).await;
}

#[tokio::test]
async fn a_redelivered_message_has_no_second_effect() {
    let fixture = Fixture::new().await;
    let broker = fixture.start(&amqp_url());
    fixture.connected(&broker).await;
    let envelope = Envelope::new("stock.reserved", Uuid::now_v7(), &());
    let body = serde_json::to_vec(&envelope).unwrap();

    fixture.publish_raw("stock.reserved", &body).await;
    fixture.publish_raw("stock.reserved", &body).await;
    let marker = Envelope::new("stock.reserved", Uuid::now_v7(), &());
    fixture
        .publish_raw("stock.reserved", &serde_json::to_vec(&marker).unwrap())
        .await;

    // The marker is handled after both copies (one queue, in order): then count.
    fixture.wait_for_effects(2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fixture.effects().await,
        2,
        "two distinct events, one effect each"
    );
    fixture.stop(broker).await;
}

#[tokio::test]
async fn malformed_unknown_version_and_rejected_messages_are_dead_lettered() {
    let fixture = Fixture::new().await;
    let broker = fixture.start(&amqp_url());
    fixture.connected(&broker).await;
    let mut future_version = Envelope::new("stock.reserved", Uuid::now_v7(), &());
    future_version.version = 99;
    let poison = Envelope::new(
        "stock.rejected",
        Uuid::now_v7(),
        &serde_json::json!({"poison": true}),
    );

    fixture.publish_raw("stock.reserved", b"{not json").await;
    fixture
        .publish_raw(
            "stock.reserved",
            &serde_json::to_vec(&future_version).unwrap(),
        )
        .await;
    fixture
        .publish_raw("stock.rejected", &serde_json::to_vec(&poison).unwrap())
        .await;
    fixture
        .enqueue(&Envelope::new("stock.reserved", Uuid::now_v7(), &()))
        .await;

    fixture.wait_for_effects(1).await;
    let mut dead = 0;
    for _ in 0..50 {
        dead = fixture.dead_lettered().await;
        if dead == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        dead, 3,
        "all three bad messages reach the dead-letter queue"
    );
    assert_eq!(
        fixture.effects().await,
        1,
        "and only the good one had an effect"
    );
    fixture.stop(broker).await;
}

#[tokio::test]
async fn events_committed_while_the_broker_is_unreachable_are_delivered_when_it_returns() {
    let fixture = Fixture::new().await;
    let proxy = TcpProxy::down("127.0.0.1:5672".parse().unwrap()).await;
    let via_proxy = amqp_url().replace("127.0.0.1:5672", &format!("127.0.0.1:{}", proxy.port()));
    let broker = fixture.start(&via_proxy);

    for _ in 0..5 {
        fixture
            .enqueue(&Envelope::new("stock.reserved", Uuid::now_v7(), &()))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!broker.is_connected(), "the broker is down: not ready");
    assert_eq!(fixture.effects().await, 0);

    proxy.restore().await;
    fixture.wait_for_effects(5).await;
    assert!(broker.is_connected());

    // A second outage in the middle of a session: cut, enqueue, restore.
    proxy.cut();
    for _ in 0..3 {
        fixture
            .enqueue(&Envelope::new("stock.reserved", Uuid::now_v7(), &()))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore().await;
    fixture.wait_for_effects(8).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fixture.effects().await, 8, "none lost, none doubled");
    fixture.stop(broker).await;
}
