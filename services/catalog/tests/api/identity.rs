//! `REQUIRE_IDENTITY`: the catalog changes only for a caller the gateway vouched for, holding
//! the scope `catalog:write`; reads stay open.

use dockyard_messaging::testing::TestExchange;
use dockyard_runtime::identity::{SCOPES_HEADER, SUBJECT_HEADER};
use dockyard_testkit::TestDatabase;
use serde_json::{Value, json};

use crate::helpers::{client, product_body, settings, start};

#[tokio::test]
async fn with_required_identity_writes_need_a_caller_holding_the_write_scope() {
    let db = TestDatabase::create("catalog").await;
    let exchange = TestExchange::new(dockyard_contracts::topology());
    let mut settings = settings(db.url(), &exchange);
    settings.identity.require_identity = true;
    catalog::store::migrate(&settings.database).await.unwrap();
    let (address, _stop) = start(&settings);
    let client = client();
    let products = format!("{address}/products");

    let anonymous = client
        .post(&products)
        .json(&product_body("ID-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    assert_eq!(
        anonymous.headers()["content-type"],
        "application/problem+json"
    );

    let reader = client
        .post(&products)
        .header(SUBJECT_HEADER, "reader-1")
        .header(SCOPES_HEADER, "orders:read")
        .json(&product_body("ID-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(reader.status(), 403);

    let editor = |request: reqwest::RequestBuilder| {
        request
            .header(SUBJECT_HEADER, "editor-1")
            .header(SCOPES_HEADER, "catalog:write")
    };
    let created = editor(client.post(&products))
        .json(&product_body("ID-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let product = format!("{products}/{id}");

    // Reads need no caller.
    assert_eq!(client.get(&product).send().await.unwrap().status(), 200);
    assert_eq!(client.get(&products).send().await.unwrap().status(), 200);

    for request in [
        client.patch(&product).json(&json!({"stock": 0})),
        client.delete(&product),
    ] {
        let refused = request.header("if-match", "*").send().await.unwrap();
        assert_eq!(refused.status(), 401);
    }
    let changed = editor(client.patch(&product))
        .header("if-match", "*")
        .json(&json!({"stock": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let deleted = editor(client.delete(&product)).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
}
