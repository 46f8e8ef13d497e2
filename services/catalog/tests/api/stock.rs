//! The catalog's part of the order saga: order events in, stock events out, through the real
//! RabbitMQ (a private exchange per test) and PostgreSQL.

use std::time::Duration;

use dockyard_messaging::Envelope;
use dockyard_runtime::command::{DlqCommand, Selection};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};

const WAIT: Duration = Duration::from_secs(10);

fn order_placed(order_id: Uuid, lines: &[(&str, i32)]) -> Envelope {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(product_id, quantity)| json!({"product_id": product_id, "quantity": quantity}))
        .collect();
    Envelope::new(
        "order.placed",
        order_id,
        &json!({"order_id": order_id, "lines": lines}),
    )
}

async fn stock_of(app: &TestApp, id: &str) -> i64 {
    let product: Value = app
        .get(&format!("/products/{id}"))
        .await
        .json()
        .await
        .unwrap();
    product["stock"].as_i64().unwrap()
}

/// Waits until the catalog's consumer has finished `events` deliveries (applied or
/// recognised as duplicates), as its `/metrics` count them.
async fn handled(app: &TestApp, events: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = app.get("/metrics").await.text().await.unwrap();
        let finished: u64 = metrics
            .lines()
            .filter(|line| {
                line.starts_with("dockyard_consumer_events_total{")
                    && (line.contains("outcome=\"applied\"")
                        || line.contains("outcome=\"duplicate\""))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if finished >= events {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{finished} of {events} deliveries handled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn product_id(app: &TestApp, sku: &str, stock: i64) -> String {
    let mut body = crate::helpers::product_body(sku);
    body["stock"] = json!(stock);
    let response = app.post_product(&body).await;
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn an_order_that_fits_reserves_stock_and_answers_with_authoritative_prices() {
    let app = spawn_app().await;
    let mug = product_id(&app, "MUG", 10).await;
    let tee = product_id(&app, "TEE", 5).await;
    let mut events = app.exchange.probe("stock.*").await;
    let order_id = Uuid::now_v7();
    let placed = order_placed(order_id, &[(&mug, 2), (&tee, 1), (&mug, 1)]);

    app.exchange.publish(&placed).await;

    let reply = events.next(WAIT).await;
    assert_eq!(reply.kind, "stock.reserved");
    assert_eq!(reply.correlation_id, order_id);
    assert_eq!(reply.causation_id, Some(placed.id));
    assert_eq!(
        reply.payload["total_minor"],
        4 * 1299,
        "3 mugs + 1 tee at 12.99"
    );
    assert_eq!(reply.payload["currency"], "EUR");
    assert_eq!(stock_of(&app, &mug).await, 7);
    assert_eq!(stock_of(&app, &tee).await, 4);
}

#[tokio::test]
async fn an_order_that_does_not_fit_reserves_nothing_and_says_why() {
    let app = spawn_app().await;
    let mug = product_id(&app, "MUG", 10).await;
    let tee = product_id(&app, "TEE", 1).await;
    let mut events = app.exchange.probe("stock.*").await;

    app.exchange
        .publish(&order_placed(Uuid::now_v7(), &[(&mug, 2), (&tee, 2)]))
        .await;
    app.exchange
        .publish(&order_placed(
            Uuid::now_v7(),
            &[(&Uuid::now_v7().to_string(), 1)],
        ))
        .await;

    let short = events.next(WAIT).await;
    let unknown = events.next(WAIT).await;
    assert_eq!(short.kind, "stock.rejected");
    assert!(
        short.payload["reason"]
            .as_str()
            .unwrap()
            .contains("insufficient stock"),
        "{}",
        short.payload
    );
    assert_eq!(unknown.kind, "stock.rejected");
    assert!(
        unknown.payload["reason"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{}",
        unknown.payload
    );
    assert_eq!(stock_of(&app, &mug).await, 10, "all or nothing");
    assert_eq!(stock_of(&app, &tee).await, 1);
}

#[tokio::test]
async fn cancelling_releases_exactly_what_was_reserved_once() {
    let app = spawn_app().await;
    let mug = product_id(&app, "MUG", 10).await;
    let mut events = app.exchange.probe("stock.*").await;
    let order_id = Uuid::now_v7();
    app.exchange
        .publish(&order_placed(order_id, &[(&mug, 3)]))
        .await;
    assert_eq!(events.next(WAIT).await.kind, "stock.reserved");
    let cancelled = Envelope::new("order.cancelled", order_id, &json!({"order_id": order_id}));

    app.exchange.publish(&cancelled).await;
    app.exchange.publish(&cancelled).await; // redelivered: no second release
    let other = Envelope::new("order.cancelled", order_id, &json!({"order_id": order_id}));
    app.exchange.publish(&other).await; // a second cancellation: nothing left to release

    // Every delivery handled (the placement and the three cancellations) before the stock is
    // read: a second release would have happened by then.
    handled(&app, 4).await;
    assert_eq!(
        stock_of(&app, &mug).await,
        10,
        "released once, not three times"
    );
}

#[tokio::test]
async fn a_placement_arriving_after_its_cancellation_reserves_nothing() {
    let app = spawn_app().await;
    let mug = product_id(&app, "MUG", 10).await;
    let mut events = app.exchange.probe("stock.*").await;
    let order_id = Uuid::now_v7();

    app.exchange
        .publish(&Envelope::new(
            "order.cancelled",
            order_id,
            &json!({"order_id": order_id}),
        ))
        .await;
    app.exchange
        .publish(&order_placed(order_id, &[(&mug, 3)]))
        .await;

    let reply = events.next(WAIT).await;
    assert_eq!(reply.kind, "stock.rejected");
    assert_eq!(stock_of(&app, &mug).await, 10);
}

#[tokio::test]
async fn fifty_orders_for_ten_in_stock_on_two_competing_instances_reserve_exactly_ten() {
    let app = spawn_app().await;
    let _replica = app.spawn_replica(); // two instances consume the queue concurrently
    let mug = product_id(&app, "MUG", 10).await;
    let mut events = app.exchange.probe("stock.*").await;

    for _ in 0..50 {
        app.exchange
            .publish(&order_placed(Uuid::now_v7(), &[(&mug, 1)]))
            .await;
    }

    let mut reserved = 0;
    let mut rejected = 0;
    for _ in 0..50 {
        match events.next(WAIT).await.kind.as_str() {
            "stock.reserved" => reserved += 1,
            _ => rejected += 1,
        }
    }
    assert_eq!((reserved, rejected), (10, 40));
    assert_eq!(stock_of(&app, &mug).await, 0);
}

/// Sets a product's stock through the API (GET for the ETag, then PATCH).
async fn set_stock(app: &TestApp, id: &str, stock: i64) {
    let product: Value = app
        .get(&format!("/products/{id}"))
        .await
        .json()
        .await
        .unwrap();
    let etag = format!("\"v{}\"", product["version"]);
    let patched = app.patch(id, Some(&etag), &json!({"stock": stock})).await;
    assert_eq!(patched.status(), 200, "stock {stock}");
}

/// Readiness says the consumer is degraded (still 200) and `/metrics` counts the dead letter.
async fn assert_dead_letters_reported(app: &TestApp) {
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status(), 200, "still serving");
    let report: Value = ready.json().await.unwrap();
    assert_eq!(
        report["checks"]["consumer"]["status"], "degraded",
        "{report}"
    );
    let reason = report["checks"]["consumer"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("dead letters growing: 1 waiting"),
        "{report}"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("dockyard_consumer_dead_letters{consumer=\"catalog\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_release_past_the_stock_limit_is_dead_lettered_recorded_and_blocks_nothing() {
    let app = spawn_app().await;
    let mug = product_id(&app, "MUG", 10).await;
    let tee = product_id(&app, "TEE", 20).await;
    let mut events = app.exchange.probe("stock.*").await;
    let order_id = Uuid::now_v7();
    app.exchange
        .publish(&order_placed(order_id, &[(&mug, 1)]))
        .await;
    assert_eq!(events.next(WAIT).await.kind, "stock.reserved");
    set_stock(&app, &mug, 1_000_000_000).await;

    // Releasing the one reserved unit would take the stock past its maximum.
    app.exchange
        .publish(&Envelope::new(
            "order.cancelled",
            order_id,
            &json!({"order_id": order_id}),
        ))
        .await;
    for _ in 0..20 {
        app.exchange
            .publish(&order_placed(Uuid::now_v7(), &[(&tee, 1)]))
            .await;
    }

    for _ in 0..20 {
        assert_eq!(
            events.next(WAIT).await.kind,
            "stock.reserved",
            "later orders still flow"
        );
    }
    assert_eq!(stock_of(&app, &tee).await, 0);
    assert_eq!(
        stock_of(&app, &mug).await,
        1_000_000_000,
        "never past the limit"
    );
    let dead = app.exchange.wait_for_dead_letters("catalog", 1, WAIT).await;
    assert_eq!(
        dead, 1,
        "the cancellation waits in the dead-letter queue for a replay"
    );
    assert_dead_letters_reported(&app).await;
    let (cancelled, why): (bool, Option<String>) = sqlx::query_as(
        "SELECT cancelled_at IS NOT NULL, cancel_reason FROM order_sagas WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_one(&app.db.pool().await)
    .await
    .unwrap();
    assert!(cancelled, "the cancellation itself is recorded");
    assert!(why.unwrap().contains("past the maximum"), "with the reason");

    app.exchange
        .publish(&order_placed(order_id, &[(&mug, 1)]))
        .await;
    let again = events.next(WAIT).await;
    assert_eq!(
        (again.kind.as_str(), again.correlation_id),
        ("stock.reserved", order_id),
        "a placement that comes again gets the same answer"
    );
    assert_eq!(
        stock_of(&app, &mug).await,
        1_000_000_000,
        "and reserves nothing more"
    );

    // The operator brings the stock down and replays the dead letter: the release completes.
    set_stock(&app, &mug, 500).await;
    let broker = crate::helpers::settings(app.db.url(), &app.exchange).broker;
    let mut output = Vec::new();
    let replay = DlqCommand::Replay(Selection::All);
    dockyard_messaging::dlq::run(
        &broker,
        &dockyard_contracts::topology(),
        "catalog",
        replay,
        &mut output,
    )
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&output).contains("1 dead letter(s) replayed"));
    let mut stock = 0;
    for _ in 0..100 {
        stock = stock_of(&app, &mug).await;
        if stock == 501 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stock, 501, "the reserved unit is back, once");
    assert_eq!(app.exchange.dead_letters("catalog").await, 0);
}

/// A batch that cancels one order and places another takes its locks in the global order
/// (every order's saga row, then every product, each in id order): it never holds a product
/// while it waits for an order, so it cannot deadlock with another catalog's batch.
#[tokio::test]
async fn a_batch_mixing_cancellations_and_placements_waits_for_no_order_while_holding_a_product() {
    use dockyard_messaging::Handler;
    let app = spawn_app().await;
    let mug = product_id(&app, "MUG", 10).await;
    let tee = product_id(&app, "TEE", 10).await;
    let pool = app.db.pool().await;
    let (x, y) = (Uuid::now_v7(), Uuid::now_v7());
    // Order x holds a reservation of the tee.
    let mut setup = pool.begin().await.unwrap();
    catalog::events::OrderEvents
        .handle_batch(&mut setup, &[order_placed(x, &[(&tee, 1)])])
        .await
        .unwrap();
    setup.commit().await.unwrap();

    // Another catalog's transaction holds order y's saga row.
    let mut other = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO order_sagas (order_id) VALUES ($1)")
        .bind(y)
        .execute(&mut *other)
        .await
        .unwrap();
    let cancel_x = Envelope::new("order.cancelled", x, &json!({"order_id": x}));
    let batch = tokio::spawn({
        let pool = pool.clone();
        let place_y = order_placed(y, &[(&mug, 1)]);
        async move {
            let mut transaction = pool.begin().await.unwrap();
            let handled = catalog::events::OrderEvents
                .handle_batch(&mut transaction, &[cancel_x, place_y])
                .await;
            transaction.commit().await.unwrap();
            handled.map(|caused| caused.len())
        }
    });
    // The batch waits for order y's row (observed, not assumed).
    let waiting = async {
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the batch waits for order y");

    // Meanwhile the other transaction can take the tee: the batch does not hold it.
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *other)
        .await
        .unwrap();
    let tee_id: Uuid = tee.parse().unwrap();
    let locked = sqlx::query("SELECT stock FROM products WHERE id = $1 FOR UPDATE")
        .bind(tee_id)
        .execute(&mut *other)
        .await;
    assert!(locked.is_ok(), "the tee was held while waiting: {locked:?}");
    other.commit().await.unwrap();

    let caused = batch.await.unwrap();
    assert_eq!(caused.unwrap(), 1, "y answered, x released, no deadlock");
    assert_eq!(stock_of(&app, &tee).await, 10, "x's tee given back");
    assert_eq!(stock_of(&app, &mug).await, 9, "y's mug reserved");
}
