//! The transactional outbox and its relay.

use std::time::Duration;

use futures_util::future::join_all;
use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use sqlx::{PgConnection, PgPool, postgres::PgListener, types::Json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Broker, envelope::Envelope};

/// `NOTIFY` channel that wakes relays when an event is committed.
const NOTIFY_CHANNEL: &str = "dockyard_outbox";
/// Rows claimed and published per transaction.
const BATCH: i64 = 100;
/// How often relays look for events when no notification arrives (or `LISTEN` is down).
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long the broker may take to confirm a batch; past it the batch is published again later
/// (consumers ignore the copies they already handled).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Adds `envelope` to the outbox inside the caller's transaction. It is published only if that
/// transaction commits; the notification, too, is delivered only on commit.
pub async fn enqueue(transaction: &mut PgConnection, envelope: &Envelope) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO outbox (id, routing_key, envelope) VALUES ($1, $2, $3)")
        .bind(envelope.id)
        .bind(&envelope.kind)
        .bind(Json(envelope))
        .execute(&mut *transaction)
        .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(&mut *transaction)
        .await?;
    Ok(())
}

/// Publishes the event `id` (enqueued earlier in this outbox) once more, with the same id, so
/// a consumer that handled it already ignores it (its inbox has the id) and only one that never
/// got it acts. `false` when the outbox no longer has it.
pub async fn publish_again(transaction: &mut PgConnection, id: Uuid) -> sqlx::Result<bool> {
    let rearmed = sqlx::query("UPDATE outbox SET published_at = NULL WHERE id = $1")
        .bind(id)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
    if rearmed == 1 {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&mut *transaction)
            .await?;
    }
    Ok(rearmed == 1)
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker did not confirm {0} event(s)")]
    NotConfirmed(usize),
}

/// Publishes committed outbox rows. Run one per process; many processes may share a database.
#[derive(Debug)]
pub struct OutboxRelay {
    pool: PgPool,
    broker: Broker,
    /// Kept between batches; replaced after any broker error.
    channel: Option<Channel>,
}

impl OutboxRelay {
    pub fn new(pool: PgPool, broker: Broker) -> Self {
        Self {
            pool,
            broker,
            channel: None,
        }
    }

    /// Relays until `shutdown`, then publishes what is pending once more and returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut listener = None;
        loop {
            if listener.is_none() {
                listener = self.listen().await;
            }
            self.drain(&shutdown).await;
            let woken = async {
                match listener.as_mut() {
                    Some(listener) => listener.recv().await.map(drop),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                result = woken => if result.is_err() { listener = None },
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
        // Flush: whatever was committed before shutdown goes out now if the broker is there.
        if self.broker.is_connected() {
            let _ = self.publish_batch().await;
        }
        tracing::info!("outbox relay stopped");
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen(NOTIFY_CHANNEL).await.ok()?;
        Some(listener)
    }

    /// Publishes batches until the outbox is empty or something fails (retried on next wake).
    async fn drain(&mut self, shutdown: &CancellationToken) {
        loop {
            if !self.broker.is_connected() || shutdown.is_cancelled() {
                return;
            }
            match self.publish_batch().await {
                Ok(0) => return,
                Ok(published) => tracing::debug!(published, "outbox batch published"),
                Err(error) => {
                    tracing::warn!(%error, "outbox relay failed; events stay queued and are retried");
                    self.channel = None;
                    return;
                }
            }
        }
    }

    async fn confirm_channel(&mut self) -> Result<Channel, RelayError> {
        if let Some(channel) = self.channel.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let never = CancellationToken::new();
        let session = self
            .broker
            .session(&never)
            .await
            .ok_or(RelayError::NotConfirmed(0))?;
        let channel = session.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    /// Claims up to [`BATCH`] unpublished rows, publishes them with confirms, marks them sent.
    async fn publish_batch(&mut self) -> Result<usize, RelayError> {
        let channel = self.confirm_channel().await?;
        let exchange = self.broker.config().amqp_exchange.clone();
        let mut transaction = self.pool.begin().await?;
        let rows: Vec<(Uuid, String, Json<Envelope>)> = sqlx::query_as(
            "SELECT id, routing_key, envelope FROM outbox
             WHERE published_at IS NULL
             ORDER BY id
             LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *transaction)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut confirms = Vec::with_capacity(rows.len());
        for (id, routing_key, Json(envelope)) in &rows {
            let body = serde_json::to_vec(envelope).expect("an envelope serialises");
            let properties = BasicProperties::default()
                .with_message_id(id.to_string().into())
                .with_type(envelope.kind.as_str().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2); // persistent
            confirms.push(
                channel
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await?,
            );
        }
        let confirmations = tokio::time::timeout(CONFIRM_TIMEOUT, join_all(confirms))
            .await
            .map_err(|_| RelayError::NotConfirmed(rows.len()))?;
        let mut unconfirmed = 0;
        for confirmation in confirmations {
            if !matches!(confirmation?, Confirmation::Ack(_)) {
                unconfirmed += 1;
            }
        }
        if unconfirmed > 0 {
            // Nothing marked: all of the batch is published again (consumers de-duplicate).
            return Err(RelayError::NotConfirmed(unconfirmed));
        }
        let ids: Vec<Uuid> = rows.iter().map(|(id, ..)| *id).collect();
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(rows.len())
    }
}
