use serde_json::Value;

use dockyard_messaging::testing::TestExchange;

use crate::helpers::{client, settings, spawn_app, start};

#[tokio::test]
async fn live_reports_the_service_and_its_release() {
    let app = spawn_app().await;

    let response = app.get("/health/live").await;

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["service"], "catalog");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["release"].is_string());
}

#[tokio::test]
async fn ready_checks_the_database_and_the_broker() {
    let app = spawn_app().await;

    // Ready with the database; the broker connection, which every replica shares, only
    // degrades the report while it is being made.
    let mut body = Value::Null;
    for _ in 0..100 {
        let response = app.get("/health/ready").await;
        let status = response.status();
        body = response.json().await.unwrap();
        if status == 200 && body["checks"]["broker"]["status"] == "up" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["checks"]["database"]["status"], "up");
    assert_eq!(body["checks"]["broker"]["status"], "up");
    assert_eq!(body["checks"]["outbox"]["status"], "up");
}

#[tokio::test]
async fn the_service_starts_without_its_database_and_reports_not_ready() {
    // Nothing listens on port 1: the database is "not up yet".
    let exchange = TestExchange::new(dockyard_contracts::topology());
    let settings = settings("postgres://postgres@127.0.0.1:1/nothing", &exchange);
    let (address, _stop) = start(&settings);
    let client = client();

    let live = client
        .get(format!("{address}/health/live"))
        .send()
        .await
        .unwrap();
    let ready = client
        .get(format!("{address}/health/ready"))
        .send()
        .await
        .unwrap();

    assert_eq!(
        live.status(),
        200,
        "liveness does not depend on backing services"
    );
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["database"]["status"], "down");
}

#[tokio::test]
async fn a_database_outage_is_a_503_with_retry_after_not_a_500() {
    let exchange = TestExchange::new(dockyard_contracts::topology());
    let settings = settings("postgres://postgres@127.0.0.1:1/nothing", &exchange);
    let (address, _stop) = start(&settings);

    let response = client()
        .get(format!("{address}/products"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn metrics_count_requests_per_route_and_status() {
    let app = spawn_app().await;
    app.get("/products").await;
    app.get("/products/not-a-uuid").await;

    let text = app.get("/metrics").await.text().await.unwrap();

    assert!(
        text.contains(
            r#"dockyard_http_requests_total{method="GET",route="/products",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"dockyard_http_requests_total{method="GET",route="/products/{id}",status="400"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("dockyard_http_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = spawn_app().await;

    let given = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    let generated = app.get("/health/live").await;

    assert_eq!(given.headers()["x-request-id"], "trace-me-42");
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}
