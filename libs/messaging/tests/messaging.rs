//! The messaging library against the real RabbitMQ and PostgreSQL of the machine. Each test
//! gets its own database and its own exchange (so its own queues), deleted afterwards.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use dockyard_messaging::{
    Broker, BrokerConfig, Compensation, ConsumerStatus, Envelope, Handler, HandlerError,
    HandlerFuture, OutboxRelay, Subscription, Topology,
    config::QueueType,
    consumer::Caused,
    outbox,
    testing::{TestExchange, amqp_url},
    topology,
};

/// The queue these tests consume from: messaging itself names no service.
fn test_topology() -> Topology {
    Topology::default().queue("order", &["stock.reserved", "stock.rejected"])
}
use dockyard_runtime::{
    command::{DlqCommand, Selection},
    config,
    metrics::Metrics,
};
use dockyard_testkit::{TcpProxy, TestDatabase};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Records each applied event in `effects`; `stock.rejected` with `{"poison": true}` is
/// permanently invalid; one with `{"causes": n}` causes a `stock.reserved` with
/// `{"causes": n - 1}`.
struct RecordEffects;

impl Handler for RecordEffects {
    fn understands(&self, envelope: &Envelope) -> bool {
        envelope.version == 1
    }

    fn handle<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        envelope: &'a Envelope,
    ) -> HandlerFuture<'a, Result<Caused, HandlerError>> {
        Box::pin(async move {
            if envelope.payload["poison"] == true {
                return Err(HandlerError::Permanent("poison".to_owned()));
            }
            if envelope.payload["divide_by_zero"] == true {
                // A data exception (SQLSTATE 22012): the event can never be applied.
                sqlx::query("SELECT 1 / 0")
                    .execute(&mut *transaction)
                    .await?;
            }
            if let Some(ms) = envelope.payload["sleep_ms"].as_u64() {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
                .bind(envelope.id)
                .execute(transaction)
                .await?;
            Ok(match envelope.payload["causes"].as_u64() {
                Some(n) if n > 0 => vec![
                    Envelope::new(
                        "stock.reserved",
                        envelope.correlation_id,
                        &serde_json::json!({"causes": n - 1}),
                    )
                    .caused_by(envelope),
                ],
                _ => Vec::new(),
            })
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
    /// The status of the consumer [`Fixture::start`] runs.
    consumer: std::sync::Mutex<Option<Arc<ConsumerStatus>>>,
    /// The relays and consumers that stop with `shutdown`.
    workers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
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
            exchange: TestExchange::new(test_topology()),
            shutdown: CancellationToken::new(),
            consumer: std::sync::Mutex::new(None),
            workers: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn broker_config(&self, url: &str) -> BrokerConfig {
        config::from_vars([("AMQP_URL", url), ("AMQP_EXCHANGE", self.exchange.name())]).unwrap()
    }

    /// Starts a broker, the relay and an `order` consumer with [`RecordEffects`], which hands
    /// the events it causes to the relay.
    fn start(&self, url: &str) -> Broker {
        self.start_with(self.broker_config(url))
    }

    /// [`Fixture::start`] with `config`.
    fn start_with(&self, config: BrokerConfig) -> Broker {
        let broker = Broker::start(config, test_topology());
        let relay = OutboxRelay::new(self.pool.clone(), broker.clone());
        let subscription =
            Subscription::new("order", Arc::new(RecordEffects)).with_handoff(relay.handoff());
        *self.consumer.lock().unwrap() = Some(subscription.status());
        self.spawn(relay.run(self.shutdown.clone()));
        self.spawn(subscription.run(self.pool.clone(), broker.clone(), self.shutdown.clone()));
        broker
    }

    /// Runs `worker` (a relay or a consumer on `shutdown`) until [`Fixture::stop`].
    fn spawn(&self, worker: impl Future<Output = ()> + Send + 'static) {
        self.workers.lock().unwrap().push(tokio::spawn(worker));
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

    /// The effects of the event `id`.
    async fn effects_of(&self, id: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM effects WHERE event_id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Events waiting in the outbox.
    async fn outbox(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
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

    /// Waits up to 10 s until the outbox is empty: every event in it was published and
    /// confirmed, and none will be published again.
    async fn outbox_empty(&self) {
        for _ in 0..200 {
            if self.outbox().await == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} events stayed in the outbox", self.outbox().await);
    }

    /// Waits until every copy of an event of `correlation_ids` published so far has been
    /// handled: once the outbox is empty, publishes a marker in the lane of each (a consumer
    /// handles the events of one correlation id in order, as the queue holds them) and waits
    /// for its effect, which it then removes, so the counts stay those of the test's events.
    async fn settled(&self, correlation_ids: &[Uuid]) {
        self.outbox_empty().await;
        let markers: Vec<Envelope> = correlation_ids
            .iter()
            .map(|correlation_id| Envelope::new("stock.reserved", *correlation_id, &()))
            .collect();
        for marker in &markers {
            self.publish_raw("stock.reserved", &serde_json::to_vec(marker).unwrap())
                .await;
        }
        for marker in &markers {
            for _ in 0..200 {
                if self.effects_of(marker.id).await == 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(self.effects_of(marker.id).await, 1, "a marker is handled");
        }
        let ids: Vec<Uuid> = markers.iter().map(|m| m.id).collect();
        sqlx::query("DELETE FROM effects WHERE event_id = ANY($1)")
            .bind(&ids)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    /// The consumer [`Fixture::start`] runs.
    fn consumer(&self) -> Arc<ConsumerStatus> {
        self.consumer
            .lock()
            .unwrap()
            .clone()
            .expect("the fixture's consumer is started")
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

    /// Stops the relays and consumers, waiting until they have, then the broker connection.
    async fn stop(self, broker: Broker) {
        self.shutdown.cancel();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap());
        for worker in workers {
            tokio::time::timeout(Duration::from_secs(10), worker)
                .await
                .expect("a relay or consumer stops within 10 s")
                .unwrap();
        }
        broker.close().await;
        drop(self.db);
    }
}

/// The value of `dockyard_<name>{consumer="order"<labels>}` for `status`'s consumer.
fn consumer_metric(status: &ConsumerStatus, name: &str, labels: &str) -> f64 {
    let mut metrics = Metrics::new();
    status.register(&mut metrics);
    let series = format!("dockyard_{name}{{consumer=\"order\"{labels}}} ");
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str())?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits up to 10 s until `status`'s consumer has finished `expected` deliveries with one of
/// `outcomes` (`applied`, `duplicate`, `requeued`, `dead_lettered`), acknowledged.
async fn wait_for_finished(status: &ConsumerStatus, outcomes: &[&str], expected: f64) {
    let finished = || -> f64 {
        outcomes
            .iter()
            .map(|outcome| {
                let labels = format!(",outcome=\"{outcome}\"");
                consumer_metric(status, "consumer_events_total", &labels)
            })
            .sum()
    };
    for _ in 0..200 {
        if finished() >= expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "expected {expected} deliveries {outcomes:?}, saw {}",
        finished()
    );
}

#[tokio::test]
async fn an_enqueued_event_is_relayed_and_handled_once() {
    let fixture = Fixture::new().await;
    let broker = fixture.start(&amqp_url());

    let event = Envelope::new(
        "stock.reserved",
        Uuid::now_v7(),
        &serde_json::json!({"n": 1}),
    );
    fixture.enqueue(&event).await;

    fixture.wait_for_effects(1).await;
    // It leaves the outbox once published ...
    fixture.outbox_empty().await;
    // ... and once every copy of it was handled, it had one effect.
    fixture.settled(&[event.correlation_id]).await;
    assert_eq!(fixture.effects_of(event.id).await, 1, "handled once");
    assert_eq!(fixture.effects().await, 1);
    fixture.stop(broker).await;
}

#[tokio::test]
async fn the_events_a_handler_causes_are_handed_to_the_relay_and_published_at_once() {
    let fixture = Fixture::new().await;
    let broker = fixture.start(&amqp_url());
    fixture.connected(&broker).await;

    // A chain of four: each event handled causes the next one.
    let started = std::time::Instant::now();
    let first = Envelope::new(
        "stock.reserved",
        Uuid::now_v7(),
        &serde_json::json!({"causes": 3}),
    );
    fixture.enqueue(&first).await;
    fixture.wait_for_effects(4).await;

    // Through a claim, each caused event would wait for its lease to end first.
    assert!(
        started.elapsed() < outbox::LEASE,
        "handed over, not claimed: the chain took {:?}",
        started.elapsed()
    );
    // Published events leave the outbox; once every copy of the chain was handled, count.
    fixture.settled(&[first.correlation_id]).await;
    assert_eq!(fixture.effects().await, 4, "each once");
    assert_eq!(
        fixture.outbox().await,
        0,
        "published events leave the outbox"
    );
    fixture.stop(broker).await;
}

#[tokio::test]
async fn a_hand_off_that_never_reached_a_relay_is_claimed_when_its_lease_ends() {
    let fixture = Fixture::new().await;
    let broker = fixture.start(&amqp_url());
    fixture.connected(&broker).await;
    // A process that committed the event and died before its relay published it: the hand-off
    // goes to a relay that never runs.
    let lost = OutboxRelay::new(fixture.pool.clone(), broker.clone());
    let handoff = lost.handoff();
    let mut transaction = fixture.pool.begin().await.unwrap();
    let event = Envelope::new("stock.reserved", Uuid::now_v7(), &());
    let leased = event.id;
    let written = handoff
        .enqueue(&mut transaction, vec![event])
        .await
        .unwrap();
    transaction.commit().await.unwrap();
    handoff.committed(written);
    let committed = std::time::Instant::now();

    // The running relay leaves it alone while it is leased: near the end of the lease, an
    // event any relay may claim is relayed and handled, the leased one is not ...
    tokio::time::sleep(outbox::LEASE.saturating_sub(Duration::from_secs(2))).await;
    let claimable = Envelope::new("stock.reserved", Uuid::now_v7(), &());
    fixture.enqueue(&claimable).await;
    fixture.wait_for_effects(1).await;
    let leased_effects = fixture.effects_of(leased).await;
    assert!(
        committed.elapsed() < outbox::LEASE,
        "handled only after the lease ended: {:?}",
        committed.elapsed()
    );
    assert_eq!(fixture.effects_of(claimable.id).await, 1);
    assert_eq!(leased_effects, 0, "still leased to its own relay");
    // ... and claims it after.
    fixture.wait_for_effects(2).await;
    assert!(committed.elapsed() >= outbox::LEASE);
    drop(lost);
    fixture.stop(broker).await;
}

#[tokio::test]
async fn with_classic_queues_events_flow_the_same_way() {
    let mut fixture = Fixture::new().await;
    fixture.exchange = TestExchange::new(test_topology()).with_queue_type(QueueType::Classic);
    let config: BrokerConfig = config::from_vars([
        ("AMQP_URL", amqp_url().as_str()),
        ("AMQP_EXCHANGE", fixture.exchange.name()),
        ("AMQP_QUEUE_TYPE", "classic"),
    ])
    .unwrap();
    assert_eq!(config.amqp_queue_type, QueueType::Classic);
    let broker = fixture.start_with(config);
    fixture.connected(&broker).await;

    // The queue is a classic one: declaring it again as such is accepted, as quorum refused.
    let queue = topology::queue_name(fixture.exchange.name(), "order");
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    for (kind, accepted) in [("classic", true), ("quorum", false)] {
        let channel = connection.create_channel().await.unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(topology::dead_letter_exchange(fixture.exchange.name()).into()),
        );
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(queue.as_str().into()),
        );
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(queue.as_str().into(), durable, arguments)
            .await;
        assert_eq!(
            declared.is_ok(),
            accepted,
            "declared again as {kind}: {declared:?}"
        );
    }
    let _ = connection.close(200, "done".into()).await;

    let first = Envelope::new(
        "stock.reserved",
        Uuid::now_v7(),
        &serde_json::json!({"causes": 1}),
    );
    fixture.enqueue(&first).await;
    fixture.wait_for_effects(2).await;
    fixture.settled(&[first.correlation_id]).await;
    assert_eq!(fixture.effects().await, 2, "each once");
    fixture.stop(broker).await;
}

#[test]
fn an_unknown_queue_type_is_refused_naming_the_variable() {
    let error = config::from_vars::<BrokerConfig, _, _>([
        ("AMQP_URL", "amqp://localhost"),
        ("AMQP_QUEUE_TYPE", "mirrored"),
    ])
    .unwrap_err();
    assert!(error.to_string().contains("AMQP_QUEUE_TYPE"), "{error}");
}

#[tokio::test]
async fn an_event_rolled_back_with_its_transaction_is_never_published() {
    let fixture = Fixture::new().await;
    let broker = fixture.start(&amqp_url());
    let mut transaction = fixture.pool.begin().await.unwrap();
    let rolled_back = Envelope::new("stock.reserved", Uuid::now_v7(), &());
    outbox::enqueue(&mut transaction, &rolled_back)
        .await
        .unwrap();
    transaction.rollback().await.unwrap();

    let committed = Envelope::new("stock.reserved", Uuid::now_v7(), &());
    fixture.enqueue(&committed).await;

    fixture.wait_for_effects(1).await;
    // Had the rolled-back event been published, it would have been handled by now.
    fixture
        .settled(&[rolled_back.correlation_id, committed.correlation_id])
        .await;
    assert_eq!(fixture.effects_of(rolled_back.id).await, 0);
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

    // Count once the consumer has finished all three deliveries, the second copy included.
    fixture.wait_for_effects(2).await;
    wait_for_finished(&fixture.consumer(), &["applied", "duplicate"], 3.0).await;
    assert_eq!(
        fixture.effects_of(envelope.id).await,
        1,
        "the copy had none"
    );
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
    let (proxy, via_proxy) = TcpProxy::in_front_of(&amqp_url()).await;
    let broker = fixture.start(&via_proxy);

    let mut events = Vec::new();
    for _ in 0..5 {
        let event = Envelope::new("stock.reserved", Uuid::now_v7(), &());
        fixture.enqueue(&event).await;
        events.push(event.correlation_id);
    }
    // The outage lasts a while: the broker (behind a proxy that refuses every connection)
    // cannot be reached, so the events wait in the outbox.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!broker.is_connected(), "the broker is down: not ready");
    assert_eq!(fixture.outbox().await, 5, "the events wait in the outbox");
    assert_eq!(fixture.effects().await, 0);

    proxy.restore().await;
    fixture.wait_for_effects(5).await;
    assert!(broker.is_connected());

    // A second outage in the middle of a session: cut, enqueue, restore.
    proxy.cut();
    for _ in 0..3 {
        let event = Envelope::new("stock.reserved", Uuid::now_v7(), &());
        fixture.enqueue(&event).await;
        events.push(event.correlation_id);
    }
    for _ in 0..200 {
        if !broker.is_connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!broker.is_connected(), "the cut is noticed");
    proxy.restore().await;
    fixture.wait_for_effects(8).await;
    fixture.settled(&events).await;
    assert_eq!(fixture.effects().await, 8, "none lost, none doubled");
    fixture.stop(broker).await;
}

#[tokio::test]
async fn a_data_error_is_dead_lettered_and_never_blocks_the_messages_behind_it() {
    let fixture = Fixture::new().await;
    let broker = fixture.start(&amqp_url());
    fixture.connected(&broker).await;
    let poison = Envelope::new(
        "stock.reserved",
        Uuid::now_v7(),
        &serde_json::json!({"divide_by_zero": true}),
    );

    fixture
        .publish_raw("stock.reserved", &serde_json::to_vec(&poison).unwrap())
        .await;
    for _ in 0..3 {
        fixture
            .enqueue(&Envelope::new("stock.reserved", Uuid::now_v7(), &()))
            .await;
    }

    fixture.wait_for_effects(3).await;
    let mut dead = 0;
    for _ in 0..50 {
        dead = fixture.dead_lettered().await;
        if dead == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        dead, 1,
        "the data error is dead-lettered, not retried forever"
    );
    fixture.stop(broker).await;
}

/// A process that receives events and dies before finishing any (a crash loop).
struct NeverFinishes;

impl Handler for NeverFinishes {
    fn understands(&self, _: &Envelope) -> bool {
        true
    }

    fn handle<'a>(
        &'a self,
        _: &'a mut PgConnection,
        _: &'a Envelope,
    ) -> HandlerFuture<'a, Result<Caused, HandlerError>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn a_crash_looping_consumer_does_not_dead_letter_the_healthy_messages_it_held() {
    let fixture = Fixture::new().await;
    // The defaults a deployment gets: no AMQP_DELIVERY_LIMIT given.
    let config = |url: &str| -> BrokerConfig {
        config::from_vars([
            ("AMQP_URL", url),
            ("AMQP_EXCHANGE", fixture.exchange.name()),
        ])
        .unwrap()
    };
    let publisher = Broker::start(config(&amqp_url()), test_topology());
    fixture.connected(&publisher).await;
    for _ in 0..16 {
        let event = Envelope::new("stock.reserved", Uuid::now_v7(), &());
        fixture
            .publish_raw("stock.reserved", &serde_json::to_vec(&event).unwrap())
            .await;
    }

    // Eight lives of a process that takes its prefetched events and dies (its connection
    // drops with it) before finishing one: each time, the broker takes back what it held.
    for _ in 0..8 {
        let (proxy, via_proxy) = TcpProxy::in_front_of(&amqp_url()).await;
        proxy.restore().await;
        let broker = Broker::start(config(&via_proxy), test_topology());
        let life = CancellationToken::new();
        let subscription = Subscription::new("order", Arc::new(NeverFinishes));
        let status = subscription.status();
        let consumer = tokio::spawn(subscription.run(fixture.pool.clone(), broker.clone(), life));
        fixture.connected(&broker).await;
        // The life dies holding an event: one is in its handler.
        for _ in 0..200 {
            if consumer_metric(&status, "consumer_in_flight", "") >= 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            consumer_metric(&status, "consumer_in_flight", "") >= 1.0,
            "this life received no event"
        );
        consumer.abort();
        proxy.cut();
        drop(broker);
    }

    let subscription = Subscription::new("order", Arc::new(RecordEffects));
    fixture.spawn(subscription.run(
        fixture.pool.clone(),
        publisher.clone(),
        fixture.shutdown.clone(),
    ));
    // Every message came back to be handled; only then count the dead letters.
    fixture.wait_for_effects(16).await;
    let dead = fixture.dead_lettered().await;
    assert_eq!(dead, 0, "no healthy message dead-lettered");
    fixture.stop(publisher).await;
}

/// Fails every event until `fixed` is set; counts its compensations.
struct FailsUntilFixed {
    fixed: Arc<AtomicBool>,
    compensations: Arc<AtomicUsize>,
}

impl Handler for FailsUntilFixed {
    fn understands(&self, _: &Envelope) -> bool {
        true
    }

    fn handle<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        envelope: &'a Envelope,
    ) -> HandlerFuture<'a, Result<Caused, HandlerError>> {
        Box::pin(async move {
            if envelope.payload["flaky"] == true && !self.fixed.load(Ordering::SeqCst) {
                return Err(HandlerError::Failed("not yet".to_owned()));
            }
            sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
                .bind(envelope.id)
                .execute(transaction)
                .await?;
            Ok(Vec::new())
        })
    }

    fn compensate<'a>(
        &'a self,
        _: &'a mut PgConnection,
        _: &'a Envelope,
        _: &'a str,
    ) -> HandlerFuture<'a, Result<Compensation, sqlx::Error>> {
        self.compensations.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(Compensation::Replayable) })
    }
}

#[tokio::test]
async fn a_failing_event_goes_behind_the_others_then_to_the_dead_letters_and_can_be_replayed() {
    let fixture = Fixture::new().await;
    let config = fixture.broker_config(&amqp_url());
    let broker = Broker::start(config.clone(), test_topology());
    let (fixed, compensations) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let handler = FailsUntilFixed {
        fixed: Arc::clone(&fixed),
        compensations: Arc::clone(&compensations),
    };
    fixture.spawn(Subscription::new("order", Arc::new(handler)).run(
        fixture.pool.clone(),
        broker.clone(),
        fixture.shutdown.clone(),
    ));
    fixture.connected(&broker).await;
    let flaky = Envelope::new(
        "stock.reserved",
        Uuid::now_v7(),
        &serde_json::json!({"flaky": true}),
    );
    fixture
        .publish_raw("stock.reserved", &serde_json::to_vec(&flaky).unwrap())
        .await;
    for _ in 0..3 {
        let good = Envelope::new("stock.reserved", Uuid::now_v7(), &());
        fixture
            .publish_raw("stock.reserved", &serde_json::to_vec(&good).unwrap())
            .await;
    }

    fixture.wait_for_effects(3).await;
    let dead = fixture
        .exchange
        .wait_for_dead_letters("order", 1, Duration::from_secs(10))
        .await;
    assert_eq!(dead, 1);
    assert_eq!(compensations.load(Ordering::SeqCst), 1, "compensated once");
    let mut listed = Vec::new();
    dockyard_messaging::dlq::run(
        &config,
        &test_topology(),
        "order",
        DlqCommand::List,
        &mut listed,
    )
    .await
    .unwrap();
    let listed = String::from_utf8(listed).unwrap();
    assert!(listed.contains(&flaky.id.to_string()), "{listed}");
    assert!(listed.contains("failures 5"), "{listed}");
    assert!(
        listed.contains("reason: failed 5 times, last: not yet"),
        "{listed}"
    );
    assert_eq!(
        fixture.exchange.dead_letters("order").await,
        1,
        "listing keeps it"
    );

    fixed.store(true, Ordering::SeqCst);
    let mut replayed = Vec::new();
    let replay = DlqCommand::Replay(Selection::One(flaky.id));
    dockyard_messaging::dlq::run(&config, &test_topology(), "order", replay, &mut replayed)
        .await
        .unwrap();

    fixture.wait_for_effects(4).await;
    assert_eq!(fixture.exchange.dead_letters("order").await, 0);
    fixture.stop(broker).await;
}
