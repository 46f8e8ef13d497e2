//! The inbox: which messages a consumer has already handled.

use sqlx::PgConnection;
use uuid::Uuid;

/// Records that `consumer` handles `message_id`, inside the handler's transaction. `false`
/// means it was handled before (a redelivery): skip it. A concurrent duplicate blocks on the
/// first one's uncommitted row and then sees it, so two deliveries never both proceed.
pub async fn claim(
    transaction: &mut PgConnection,
    consumer: &str,
    message_id: Uuid,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO inbox (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(message_id)
    .execute(transaction)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// [`claim`] for many messages at once; returns the ids claimed now (the others were handled
/// before).
pub async fn claim_many(
    transaction: &mut PgConnection,
    consumer: &str,
    message_ids: &[Uuid],
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "INSERT INTO inbox (consumer, message_id) SELECT $1, unnest($2::uuid[])
         ON CONFLICT DO NOTHING RETURNING message_id",
    )
    .bind(consumer)
    .bind(message_ids)
    .fetch_all(transaction)
    .await
}
