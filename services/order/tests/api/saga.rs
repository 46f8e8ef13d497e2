//! The order saga end to end: order → RabbitMQ → catalog → RabbitMQ → order, including broker
//! and catalog outages.

use std::time::Duration;

use dockyard_messaging::testing::amqp_url;
use dockyard_testkit::TcpProxy;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    Platform, databases, order_body, spawn_platform, start_catalog, start_order, start_order_with,
};

#[tokio::test]
async fn a_placed_order_is_confirmed_with_the_catalog_total_and_stock_taken_once() {
    let platform = spawn_platform().await;
    let mug = platform.product("MUG", 10).await;

    let id = platform
        .place_ok(&order_body(Uuid::now_v7(), &[(&mug, 3)]))
        .await;

    let order = platform.settled(&id).await;
    assert_eq!(order["status"], "confirmed");
    assert_eq!(
        order["total"],
        json!({"amount_minor": 3897, "currency": "EUR"})
    );
    // The placement has left the outbox and the catalog applied one event: nothing is left
    // that could take the stock again.
    platform.saga_caught_up(1).await;
    assert_eq!(platform.stock(&mug).await, 7, "taken once");
}

#[tokio::test]
async fn an_order_beyond_the_stock_is_rejected_with_the_reason_and_takes_nothing() {
    let platform = spawn_platform().await;
    let mug = platform.product("MUG", 2).await;

    let id = platform
        .place_ok(&order_body(Uuid::now_v7(), &[(&mug, 3)]))
        .await;

    let order = platform.settled(&id).await;
    assert_eq!(order["status"], "rejected");
    assert!(
        order["reason"]
            .as_str()
            .unwrap()
            .contains("insufficient stock"),
        "{order}"
    );
    assert_eq!(platform.stock(&mug).await, 2);
}

#[tokio::test]
async fn cancelling_a_confirmed_order_restores_the_stock_exactly_and_illegal_moves_are_409() {
    let platform = spawn_platform().await;
    let mug = platform.product("MUG", 10).await;
    let confirmed = platform
        .place_ok(&order_body(Uuid::now_v7(), &[(&mug, 4)]))
        .await;
    assert_eq!(platform.settled(&confirmed).await["status"], "confirmed");
    let rejected = platform
        .place_ok(&order_body(Uuid::now_v7(), &[(&mug, 50)]))
        .await;
    assert_eq!(platform.settled(&rejected).await["status"], "rejected");

    let cancel = platform.cancel(&confirmed).await;
    let again = platform.cancel(&confirmed).await;
    let cancel_rejected = platform.cancel(&rejected).await;

    assert_eq!(cancel.status(), 200);
    assert_eq!(cancel.json::<Value>().await.unwrap()["status"], "cancelled");
    assert_eq!(again.status(), 409);
    assert_eq!(cancel_rejected.status(), 409);
    platform.stock_becomes(&mug, 10).await;
    // Two placements and the cancellation, each applied by the catalog, and nothing left in
    // the outbox: nothing more can restore stock.
    platform.saga_caught_up(3).await;
    assert_eq!(platform.stock(&mug).await, 10, "restored exactly, once");
}

#[tokio::test]
async fn fifty_concurrent_orders_for_ten_in_stock_confirm_exactly_ten() {
    let platform = spawn_platform().await;
    let mug = platform.product("MUG", 10).await;

    let placing: Vec<_> = (0..50)
        .map(|_| {
            let (client, url) = (
                platform.client.clone(),
                format!("{}/orders", platform.order.address),
            );
            let body = order_body(Uuid::now_v7(), &[(&mug, 1)]);
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .header("idempotency-key", Uuid::new_v4().to_string())
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                response.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
        })
        .collect();
    let mut ids = Vec::new();
    for placed in placing {
        ids.push(placed.await.unwrap());
    }

    let mut confirmed = 0;
    for id in &ids {
        if platform.settled(id).await["status"] == "confirmed" {
            confirmed += 1;
        }
    }
    assert_eq!(confirmed, 10);
    assert_eq!(platform.stock(&mug).await, 0);
}

#[tokio::test]
async fn orders_placed_while_the_broker_is_unreachable_are_confirmed_after_it_returns() {
    let (catalog_db, order_db) = databases().await;
    let exchange = dockyard_messaging::testing::TestExchange::new(dockyard_contracts::topology());
    let catalog = start_catalog(&catalog_db, &exchange);
    let (proxy, via_proxy) = TcpProxy::in_front_of(&amqp_url()).await;
    let order = start_order(&order_db, &exchange, &via_proxy, &catalog.address);
    let platform = Platform::new(exchange, (catalog_db, order_db), Some(catalog), order);
    let mug = platform.product("MUG", 10).await;

    let ids = [
        platform
            .place_ok(&order_body(Uuid::now_v7(), &[(&mug, 1)]))
            .await,
        platform
            .place_ok(&order_body(Uuid::now_v7(), &[(&mug, 2)]))
            .await,
    ];
    let ready = platform
        .client
        .get(format!("{}/health/ready", platform.order.address))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "still ready: the broker is shared by every replica, and placements wait in the outbox"
    );
    assert_eq!(
        ready.json::<Value>().await.unwrap()["checks"]["broker"]["status"],
        "degraded"
    );
    // Both placements wait in the outbox, unpublished: the catalog cannot have answered.
    platform
        .metric_until("dockyard_outbox_backlog", |n| (n - 2.0).abs() < 0.5)
        .await;
    assert_eq!(platform.order(&ids[0]).await["status"], "pending");
    let age = platform
        .metric_until("dockyard_outbox_oldest_unsent_seconds", |s| s > 0.0)
        .await;
    assert!(age < 30.0, "{age}");

    proxy.restore().await;

    for id in &ids {
        assert_eq!(platform.settled(id).await["status"], "confirmed");
    }
    platform
        .metric_until("dockyard_outbox_backlog", |n| n < 0.5)
        .await;
    assert_eq!(platform.stock(&mug).await, 7);
}

#[tokio::test]
async fn an_order_whose_placement_waits_in_the_outbox_outlives_its_deadline() {
    let (catalog_db, order_db) = databases().await;
    let exchange = dockyard_messaging::testing::TestExchange::new(dockyard_contracts::topology());
    let catalog = start_catalog(&catalog_db, &exchange);
    let (proxy, via_proxy) = TcpProxy::in_front_of(&amqp_url()).await;
    // Every order ends within 2 × 1 s of its placement reaching the catalog.
    let order = start_order_with(
        &order_db,
        &exchange,
        &via_proxy,
        &catalog.address,
        &[
            ("ORDER_PENDING_TIMEOUT", "1s"),
            ("ORDER_PENDING_REPUBLISH", "1"),
        ],
    );
    let platform = Platform::new(exchange, (catalog_db, order_db), Some(catalog), order);
    let mug = platform.product("MUG", 10).await;
    let id = platform
        .place_ok(&order_body(Uuid::now_v7(), &[(&mug, 1)]))
        .await;
    // The broker stays away for three deadlines: the placement has not left the outbox.
    platform
        .metric_until("dockyard_outbox_oldest_unsent_seconds", |s| s > 3.0)
        .await;
    assert_eq!(
        platform.order(&id).await["status"],
        "pending",
        "not timed out"
    );

    proxy.restore().await;

    assert_eq!(platform.settled(&id).await["status"], "confirmed");
    assert_eq!(
        platform.metric("dockyard_order_saga_timeouts_total").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn with_the_catalog_down_orders_are_accepted_unpriced_and_confirmed_when_it_returns() {
    let (catalog_db, order_db) = databases().await;
    let exchange = dockyard_messaging::testing::TestExchange::new(dockyard_contracts::topology());
    // Create the product, then stop the catalog entirely (HTTP and consumer).
    let catalog = start_catalog(&catalog_db, &exchange);
    let seeded = Platform::product_via(&catalog.address, "MUG", 10).await;
    let dead_catalog_url = catalog.address.clone();
    catalog.stop().await;
    let order = start_order(&order_db, &exchange, &amqp_url(), &dead_catalog_url);
    let mut platform = Platform::new(exchange, (catalog_db, order_db), None, order);
    let mut placements = platform.exchange.probe("order.placed").await;

    let response = platform
        .place("while-down", &order_body(Uuid::now_v7(), &[(&seeded, 2)]))
        .await;

    assert_eq!(response.status(), 202, "the alternate path accepts it");
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["status"], "pending");
    assert_eq!(accepted["total"], Value::Null, "not priced yet");
    // The placement is published (the catalog's queue holds it, with no one consuming).
    let placed = placements.next(Duration::from_secs(10)).await;
    assert_eq!(placed.correlation_id.to_string(), accepted["id"]);
    assert_eq!(
        platform.order(accepted["id"].as_str().unwrap()).await["status"],
        "pending"
    );

    platform.catalog = Some(start_catalog(&platform.catalog_db, &platform.exchange));

    let order = platform.settled(accepted["id"].as_str().unwrap()).await;
    assert_eq!(order["status"], "confirmed");
    assert_eq!(
        order["total"],
        json!({"amount_minor": 2598, "currency": "EUR"}),
        "priced by the saga"
    );
    assert_eq!(platform.stock(&seeded).await, 8);
}

#[tokio::test]
async fn an_answer_that_cannot_be_applied_rejects_the_order_and_releases_its_stock() {
    let (catalog_db, order_db) = databases().await;
    let exchange = dockyard_messaging::testing::TestExchange::new(dockyard_contracts::topology());
    // No catalog: this test plays it, with an answer the order's table refuses.
    let order = start_order(&order_db, &exchange, &amqp_url(), "http://127.0.0.1:9");
    let platform = Platform::new(exchange, (catalog_db, order_db), None, order);
    let mut compensations = platform.exchange.probe("order.cancelled").await;
    let id = platform
        .place_ok(&order_body(
            Uuid::now_v7(),
            &[(&Uuid::now_v7().to_string(), 1)],
        ))
        .await;
    let order_id: Uuid = id.parse().unwrap();
    let broken = dockyard_messaging::Envelope::new(
        "stock.reserved",
        order_id,
        &json!({"order_id": order_id, "lines": [], "total_minor": -5, "currency": "EUR"}),
    );

    platform.exchange.publish(&broken).await;

    let order = platform.settled(&id).await;
    assert_eq!(order["status"], "rejected");
    assert!(
        order["reason"]
            .as_str()
            .unwrap()
            .contains("could not be applied"),
        "{order}"
    );
    let compensation = compensations.next(Duration::from_secs(10)).await;
    assert_eq!(compensation.correlation_id, order_id);
    assert!(compensation.payload["reason"].is_string());
    let dead = platform
        .exchange
        .wait_for_dead_letters("order", 1, Duration::from_secs(10))
        .await;
    assert_eq!(dead, 1, "the answer waits in the dead letters");
}

#[tokio::test]
async fn behind_the_saga_new_orders_get_503_and_a_retry_with_the_same_key_makes_one_order() {
    let (catalog_db, order_db) = databases().await;
    let exchange = dockyard_messaging::testing::TestExchange::new(dockyard_contracts::topology());
    let catalog = start_catalog(&catalog_db, &exchange);
    let mug = Platform::product_via(&catalog.address, "MUG", 100).await;
    let catalog_url = catalog.address.clone();
    // No catalog consuming: every order stays pending, and the saga falls behind.
    catalog.stop().await;
    let order = start_order_with(
        &order_db,
        &exchange,
        &amqp_url(),
        &catalog_url,
        &[("ORDER_ADMISSION_BACKLOG", "3")],
    );
    let mut platform = Platform::new(exchange, (catalog_db, order_db), None, order);
    // Connected first, and counted since: orders placed while the broker is away are not the
    // saga's backlog.
    platform.broker_connected().await;
    platform.admission_counting().await;
    let body = order_body(Uuid::now_v7(), &[(&mug, 1)]);
    let first = platform.place("let-in-first", &body).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    for _ in 0..2 {
        platform.place_ok(&body).await;
    }
    // Three orders pending: the backlog is full once they are counted.
    platform
        .metric_until("dockyard_order_pending", |n| (n - 3.0).abs() < 0.5)
        .await;

    // A retry of an order let in before (its answer was lost) gets that answer, not a 503,
    // and is not counted as shed.
    let retried = platform.place("let-in-first", &body).await;
    assert_eq!(retried.status(), 202, "the first answer, even while full");
    assert_eq!(retried.json::<Value>().await.unwrap()["id"], first["id"]);

    for _ in 0..2 {
        let refused = platform.place("retry-me", &body).await;
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()["retry-after"], "1");
        assert_eq!(
            refused.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = refused.json().await.unwrap();
        assert_eq!(problem["type"], "urn:dockyard:problem:overloaded");
    }
    assert_eq!(
        platform.metric("dockyard_order_shed_total").await,
        Some(2.0)
    );

    // The catalog comes back, the saga catches up, the door opens again.
    platform.catalog = Some(start_catalog(&platform.catalog_db, &platform.exchange));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let accepted = loop {
        let response = platform.place("retry-me", &body).await;
        if response.status() == 202 {
            break response.json::<Value>().await.unwrap();
        }
        assert_eq!(response.status(), 503, "only refused while behind");
        assert!(tokio::time::Instant::now() < deadline, "never let in again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let again = platform.place("retry-me", &body).await;
    assert_eq!(again.status(), 202, "the first answer again");
    let replayed: Value = again.json().await.unwrap();
    assert_eq!(replayed["id"], accepted["id"]);

    let pool = platform.order_db.pool().await;
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orders, 4, "three before, exactly one for the retried key");
    pool.close().await;
    assert_eq!(
        platform.settled(accepted["id"].as_str().unwrap()).await["status"],
        "confirmed"
    );
}

#[tokio::test]
async fn the_pricing_breaker_state_is_a_metric_and_opens_when_the_catalog_fails() {
    let (catalog_db, order_db) = databases().await;
    let exchange = dockyard_messaging::testing::TestExchange::new(dockyard_contracts::topology());
    // Nothing listens there: every pricing call fails at once.
    let order = start_order(&order_db, &exchange, &amqp_url(), "http://127.0.0.1:9");
    let platform = Platform::new(exchange, (catalog_db, order_db), None, order);
    assert_eq!(
        platform
            .metric("dockyard_order_pricing_breaker_state")
            .await,
        Some(0.0),
        "closed"
    );
    let product = Uuid::now_v7().to_string();
    for _ in 0..6 {
        // The alternate path: accepted unpriced.
        platform
            .place_ok(&order_body(Uuid::now_v7(), &[(&product, 1)]))
            .await;
    }
    assert_eq!(
        platform
            .metric("dockyard_order_pricing_breaker_state")
            .await,
        Some(2.0),
        "open"
    );
}
