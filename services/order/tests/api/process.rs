//! The `order` binary as an OS process: configuration errors and commands.

const BIN: &str = env!("CARGO_BIN_EXE_order");

async fn run(vars: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    dockyard_testkit::process(BIN, vars)
        .args(args)
        .output()
        .await
        .unwrap()
}

const DB: (&str, &str) = ("DATABASE_URL", "postgres://localhost/orders");
const AMQP: (&str, &str) = ("AMQP_URL", "amqp://localhost:5672/%2f");

#[tokio::test]
async fn a_missing_or_malformed_catalog_url_exits_2_naming_it() {
    for vars in [
        &[DB, AMQP][..],
        &[DB, AMQP, ("CATALOG_URL", "ftp://catalog")][..],
        &[DB, AMQP, ("CATALOG_URL", "::")][..],
    ] {
        let output = run(vars, &[]).await;

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{vars:?}: {stderr}");
        assert!(stderr.contains("CATALOG_URL"), "{stderr}");
    }
}

#[tokio::test]
async fn seed_is_not_an_order_command() {
    let output = run(
        &[DB, AMQP, ("CATALOG_URL", "http://catalog:8080")],
        &["seed"],
    )
    .await;

    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("usage: order [serve | migrate | healthcheck | dlq")
    );
}

#[tokio::test]
async fn migrate_needs_only_the_database() {
    let db = dockyard_testkit::TestDatabase::create("order").await;

    let output = run(&[("DATABASE_URL", db.url())], &["migrate"]).await;

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pool = db.pool().await;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('orders', 'idempotency_keys', 'outbox', 'inbox')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 4);
}

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn an_order_nobody_answers_is_republished_then_rejected_for_timeout_and_compensated() {
    use std::time::Duration;

    use dockyard_messaging::testing::{TestExchange, amqp_url};
    use serde_json::{Value, json};

    let db = dockyard_testkit::TestDatabase::create("order").await;
    let migrated = run(&[("DATABASE_URL", db.url())], &["migrate"]).await;
    assert!(migrated.status.success());
    let exchange = TestExchange::new(dockyard_contracts::topology());
    let mut placements = exchange.probe("order.placed").await;
    let mut cancellations = exchange.probe("order.cancelled").await;
    let port = free_port().to_string();
    let amqp = amqp_url();
    // No catalog consumes the events: the saga never answers.
    let _order = dockyard_testkit::process(
        BIN,
        &[
            ("DATABASE_URL", db.url()),
            ("AMQP_URL", amqp.as_str()),
            ("AMQP_EXCHANGE", exchange.name()),
            ("CATALOG_URL", "http://127.0.0.1:9"),
            ("HOST", "127.0.0.1"),
            ("PORT", port.as_str()),
            ("ORDER_PENDING_TIMEOUT", "500ms"),
            ("ORDER_PENDING_REPUBLISH", "2"),
        ],
    )
    .stdout(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        let ready = client.get(format!("{base}/health/ready")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let placed = client
        .post(format!("{base}/orders"))
        .header("idempotency-key", "deadline-1")
        .json(&json!({"customer_id": uuid::Uuid::now_v7(), "lines": [{"product_id": uuid::Uuid::now_v7(), "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 202);
    let order_id = placed.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    for attempt in 0..3 {
        let event = placements.next(Duration::from_secs(10)).await;
        assert_eq!(
            event.correlation_id.to_string(),
            order_id,
            "placement {attempt}"
        );
    }
    let compensation = cancellations.next(Duration::from_secs(10)).await;
    assert_eq!(compensation.correlation_id.to_string(), order_id);
    assert_eq!(compensation.payload["reason"], "timeout");
    let order: Value = client
        .get(format!("{base}/orders/{order_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (order["status"].as_str(), order["reason"].as_str()),
        (Some("rejected"), Some("timeout"))
    );
}
