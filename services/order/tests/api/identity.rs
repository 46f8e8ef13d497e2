//! `REQUIRE_IDENTITY`: every order call needs a customer the gateway vouched for, and a
//! customer sees, lists, cancels and places only their own orders.

use dockyard_messaging::testing::{TestExchange, amqp_url};
use dockyard_runtime::identity::SUBJECT_HEADER;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Platform, databases, order_body, start_catalog, start_order_with};

#[tokio::test]
async fn customers_place_see_and_cancel_only_their_own_orders() {
    let (catalog_db, order_db) = databases().await;
    let exchange = TestExchange::new(dockyard_contracts::topology());
    let catalog = start_catalog(&catalog_db, &exchange);
    let order = start_order_with(
        &order_db,
        &exchange,
        &amqp_url(),
        &catalog.address,
        &[("REQUIRE_IDENTITY", "true")],
    );
    let platform = Platform::new(exchange, (catalog_db, order_db), Some(catalog), order);
    let mug = platform.product("MUG-ID", 10).await;
    let (alice, bob) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
    let client = &platform.client;
    let orders = format!("{}/orders", platform.order.address);
    let place = |who: &str, key: &str, body: &Value| {
        client
            .post(&orders)
            .header(SUBJECT_HEADER, who)
            .header("idempotency-key", key)
            .json(body)
    };
    let lines = json!({"lines": [{"product_id": mug, "quantity": 1}]});

    // Nobody: 401, for writes and reads alike.
    let anonymous = client
        .post(&orders)
        .header("idempotency-key", "k-0")
        .json(&order_body(Uuid::now_v7(), &[(&mug, 1)]))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let listing = client.get(format!("{orders}?customer_id={alice}")).send();
    assert_eq!(listing.await.unwrap().status(), 401);

    // Alice orders without naming herself; the order is hers.
    let placed = place(&alice, "k-1", &lines).send().await.unwrap();
    assert_eq!(placed.status(), 202);
    let placed: Value = placed.json().await.unwrap();
    assert_eq!(placed["customer_id"], alice.as_str());
    let id = placed["id"].as_str().unwrap().to_owned();

    // Naming another customer, or being no customer: 403.
    let as_bob = json!({"customer_id": bob, "lines": lines["lines"]});
    assert_eq!(
        place(&alice, "k-2", &as_bob).send().await.unwrap().status(),
        403
    );
    assert_eq!(
        place("billing", "k-3", &lines)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );

    // Bob reusing Alice's key with the same body gets no answer of hers.
    let reused = place(&bob, "k-1", &lines).send().await.unwrap();
    assert_eq!(reused.status(), 422);

    // Bob cannot see, list or cancel Alice's order.
    let order = format!("{orders}/{id}");
    let seen = |who: &str| client.get(&order).header(SUBJECT_HEADER, who).send();
    assert_eq!(seen(&bob).await.unwrap().status(), 404);
    assert_eq!(seen(&alice).await.unwrap().status(), 200);
    let cancelled = client
        .post(format!("{order}/cancel"))
        .header(SUBJECT_HEADER, bob.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 404);
    let list = |who: &str, query: &str| {
        client
            .get(format!("{orders}{query}"))
            .header(SUBJECT_HEADER, who)
            .send()
    };
    let bobs: Value = list(&bob, "").await.unwrap().json().await.unwrap();
    assert_eq!(bobs["items"], json!([]));
    let alices: Value = list(&alice, "").await.unwrap().json().await.unwrap();
    assert_eq!(alices["items"][0]["id"], id.as_str());
    let snooping = list(&bob, &format!("?customer_id={alice}")).await.unwrap();
    assert_eq!(snooping.status(), 403);

    // Alice can cancel her own.
    let own = client
        .post(format!("{order}/cancel"))
        .header(SUBJECT_HEADER, alice.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
}
