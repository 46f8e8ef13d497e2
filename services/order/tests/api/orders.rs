//! The order API: idempotency, validation, reading, transitions.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{order_body, spawn_platform};

async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn placing_answers_202_with_location_and_a_priced_pending_order() {
    let platform = spawn_platform().await;
    let mug = platform.product("MUG", 10).await;

    let response = platform
        .place("key-1", &order_body(Uuid::now_v7(), &[(&mug, 2)]))
        .await;

    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let order: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/orders/{}", order["id"].as_str().unwrap())
    );
    assert_eq!(order["status"], "pending");
    assert_eq!(
        order["total"],
        json!({"amount_minor": 2598, "currency": "EUR"})
    );
    assert_eq!(order["lines"][0]["unit_price_minor"], 1299);
}

#[tokio::test]
async fn the_same_key_and_body_replay_the_first_response_and_create_one_order() {
    let platform = spawn_platform().await;
    let mug = platform.product("MUG", 10).await;
    let body = order_body(Uuid::now_v7(), &[(&mug, 1)]);

    let first: Value = platform
        .place("same-key", &body)
        .await
        .json()
        .await
        .unwrap();
    let again = platform.place("same-key", &body).await;

    assert_eq!(again.status(), 202);
    assert_eq!(
        again.json::<Value>().await.unwrap(),
        first,
        "the original response"
    );
    assert_eq!(platform.orders_in_database().await, 1);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_422() {
    let platform = spawn_platform().await;
    let mug = platform.product("MUG", 10).await;
    platform
        .place("key", &order_body(Uuid::now_v7(), &[(&mug, 1)]))
        .await;

    let reused = platform
        .place("key", &order_body(Uuid::now_v7(), &[(&mug, 5)]))
        .await;

    let problem = problem(reused, 422).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    assert_eq!(platform.orders_in_database().await, 1);
}

#[tokio::test]
async fn concurrent_duplicates_create_one_order() {
    let platform = spawn_platform().await;
    let mug = platform.product("MUG", 100).await;
    let body = order_body(Uuid::now_v7(), &[(&mug, 1)]);

    let attempts: Vec<_> = (0..10)
        .map(|_| {
            let (client, url, body) = (
                platform.client.clone(),
                format!("{}/orders", platform.order.address),
                body.clone(),
            );
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .header("idempotency-key", "race")
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (
                    response.status().as_u16(),
                    response.json::<Value>().await.unwrap()["id"].clone(),
                )
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for attempt in attempts {
        outcomes.push(attempt.await.unwrap());
    }

    assert!(
        outcomes.iter().all(|(status, _)| *status == 202),
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|(_, id)| *id == outcomes[0].1),
        "one order id: {outcomes:?}"
    );
    assert_eq!(platform.orders_in_database().await, 1);
}

#[tokio::test]
async fn client_mistakes_are_4xx_problems_and_create_nothing() {
    let platform = spawn_platform().await;
    let mug = platform.product("MUG", 10).await;
    let unknown = Uuid::now_v7().to_string();
    let url = format!("{}/orders", platform.order.address);

    let no_key = platform
        .client
        .post(&url)
        .json(&order_body(Uuid::now_v7(), &[(&mug, 1)]))
        .send()
        .await
        .unwrap();
    let unknown_product = platform
        .place(
            "k1",
            &order_body(Uuid::now_v7(), &[(&mug, 1), (&unknown, 1)]),
        )
        .await;
    let zero = platform
        .place("k2", &order_body(Uuid::now_v7(), &[(&mug, 0)]))
        .await;
    let no_lines = platform
        .place("k3", &json!({"customer_id": Uuid::now_v7(), "lines": []}))
        .await;
    let not_uuid = platform
        .place("k4", &json!({"customer_id": "bob", "lines": []}))
        .await;
    let malformed = platform
        .client
        .post(&url)
        .header("idempotency-key", "k5")
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();

    assert!(
        problem(no_key, 400).await["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    let unknown_problem = problem(unknown_product, 422).await;
    assert_eq!(unknown_problem["errors"][0]["field"], "lines[1].product_id");
    assert_eq!(
        problem(zero, 422).await["errors"][0]["field"],
        "lines[0].quantity"
    );
    problem(no_lines, 422).await;
    problem(not_uuid, 422).await;
    problem(malformed, 400).await;
    assert_eq!(platform.orders_in_database().await, 0);
}

#[tokio::test]
async fn orders_are_listed_per_customer_with_a_cursor() {
    let platform = spawn_platform().await;
    let mug = platform.product("MUG", 100).await;
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    for _ in 0..3 {
        platform.place_ok(&order_body(alice, &[(&mug, 1)])).await;
    }
    platform.place_ok(&order_body(bob, &[(&mug, 1)])).await;
    let list = |query: String| {
        let client = platform.client.clone();
        let url = format!("{}/orders?{query}", platform.order.address);
        async move {
            client
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };

    let first = list(format!("customer_id={alice}&limit=2")).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second = list(format!("customer_id={alice}&limit=2&cursor={cursor}")).await;

    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["next_cursor"], Value::Null);
    assert!(
        first["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["customer_id"] == json!(alice))
    );
    let missing = platform
        .client
        .get(format!("{}/orders?limit=2", platform.order.address))
        .send()
        .await
        .unwrap();
    problem(missing, 400).await;
    let unknown = platform
        .client
        .get(format!(
            "{}/orders/{}",
            platform.order.address,
            Uuid::now_v7()
        ))
        .send()
        .await
        .unwrap();
    problem(unknown, 404).await;
}

#[tokio::test]
async fn an_order_status_is_read_from_the_database_exactly_or_not_at_all() {
    let db = dockyard_testkit::TestDatabase::create("order").await;
    let pool = db.pool().await;
    let confirmed: order::domain::Status = sqlx::query_scalar("SELECT 'confirmed'::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(confirmed, order::domain::Status::Confirmed);
    // A status this release does not know is an error, never taken for `pending`.
    let unknown = sqlx::query_scalar::<_, order::domain::Status>("SELECT 'shipped'::text")
        .fetch_one(&pool)
        .await;
    assert!(unknown.is_err(), "{unknown:?}");
    pool.close().await;
}
