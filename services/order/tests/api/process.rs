//! The `order` binary as an OS process: configuration errors and commands.

use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_order");

async fn run(vars: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .env_clear()
        .envs(vars.iter().copied())
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
            .contains("usage: order [serve | migrate | healthcheck]")
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
