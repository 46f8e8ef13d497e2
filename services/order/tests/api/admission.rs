//! Admission control's count of the orders in progress, on the real PostgreSQL.

use order::admission::{COUNT_PENDING, PendingCounter};
use serde_json::Value;
use sqlx::{PgConnection, types::Json};
use uuid::Uuid;

use crate::helpers::databases;

/// Shared buffers `COUNT_PENDING` reads on `connection` (from its plan).
async fn pages_read(connection: &mut PgConnection) -> u64 {
    let plan: Json<Value> = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {COUNT_PENDING}"
    ))
    .fetch_one(connection)
    .await
    .unwrap();
    let top = &plan.0[0]["Plan"];
    ["Shared Hit Blocks", "Shared Read Blocks"]
        .iter()
        .map(|field| top[field].as_u64().unwrap())
        .sum()
}

/// The count runs 40 times a second. Every confirmed order leaves a dead entry in the partial
/// index of pending orders until a vacuum (never, on a machine with autovacuum off; rarely
/// enough under load elsewhere): the count must not visit them each time.
#[tokio::test]
async fn the_admission_count_stays_cheap_however_many_orders_were_confirmed() {
    let (_catalog_db, order_db) = databases().await;
    let pool = order_db.pool().await;
    // 20,000 orders placed and confirmed (a pass of the saga benchmark), 10 still pending.
    sqlx::query(
        "INSERT INTO orders (id, customer_id, status, lines)
         SELECT gen_random_uuid(), gen_random_uuid(), 'pending', '[]' FROM generate_series(1, 20000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE orders SET status = 'confirmed'")
        .execute(&pool)
        .await
        .unwrap();
    for _ in 0..10 {
        sqlx::query(
            "INSERT INTO orders (id, customer_id, status, lines) VALUES ($1, $1, 'pending', '[]')",
        )
        .bind(Uuid::now_v7())
        .execute(&pool)
        .await
        .unwrap();
    }

    // What a count with the planner's own choice reads (a bitmap scan, on a pool connection).
    let planner = pages_read(&mut pool.acquire().await.unwrap()).await;
    let mut counter = PendingCounter::new(&pool);
    // Each count marks the dead entries it passes once no transaction can see them any more,
    // which concurrent transactions (elsewhere on the server) may delay a little.
    let mut pages = u64::MAX;
    for _ in 0..100 {
        assert_eq!(counter.count().await.unwrap(), 10);
        pages = pages_read(counter.connection().await.unwrap()).await;
        if pages < 50 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        pages < 50,
        "counts keep reading {pages} pages, visiting the 20,000 dead entries each time (the \
         planner's own plan reads {planner})"
    );
    counter.close().await;
}
