//! The transactional outbox and its relay.

use std::{
    sync::atomic::AtomicU64,
    time::{Duration, Instant},
};

use dockyard_runtime::metrics::Metrics;
use futures_util::future::join_all;
use lapin::{
    BasicProperties, Channel, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use prometheus_client::metrics::gauge::Gauge;
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
    // One round trip: the row, and the notification (sent when the transaction commits).
    sqlx::query(
        "INSERT INTO outbox (id, routing_key, envelope) VALUES ($1, $2, $3)
         RETURNING pg_notify($4, '')",
    )
    .bind(envelope.id)
    .bind(&envelope.kind)
    .bind(Json(envelope))
    .bind(NOTIFY_CHANNEL)
    .execute(&mut *transaction)
    .await?;
    Ok(())
}

/// [`enqueue`] for many events, with one statement.
pub async fn enqueue_many(
    transaction: &mut PgConnection,
    envelopes: &[Envelope],
) -> sqlx::Result<()> {
    if envelopes.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = envelopes.iter().map(|e| e.id).collect();
    let keys: Vec<&str> = envelopes.iter().map(|e| e.kind.as_str()).collect();
    let bodies: Vec<Json<&Envelope>> = envelopes.iter().map(Json).collect();
    // PostgreSQL delivers one notification per transaction for identical ones.
    sqlx::query(
        "INSERT INTO outbox (id, routing_key, envelope)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[])
         RETURNING pg_notify($4, '')",
    )
    .bind(&ids)
    .bind(&keys)
    .bind(&bodies)
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

/// How often the relay counts what waits in the outbox, for the metrics.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The outbox as `/metrics` shows it: `dockyard_outbox_backlog` (rows not yet published) and
/// `dockyard_outbox_oldest_unsent_seconds`; counted by the relay about once a second.
#[derive(Debug, Clone, Default)]
pub struct OutboxGauges {
    backlog: Gauge,
    oldest_unsent: Gauge<f64, AtomicU64>,
}

impl OutboxGauges {
    /// Adds the outbox's metrics to the process's registry.
    pub fn register(&self, metrics: &mut Metrics) {
        metrics.register(
            "outbox_backlog",
            "Events committed to the outbox and not yet published",
            self.backlog.clone(),
        );
        metrics.register(
            "outbox_oldest_unsent_seconds",
            "Age of the oldest event not yet published (0 when none waits)",
            self.oldest_unsent.clone(),
        );
    }

    async fn sample(&self, pool: &PgPool) -> sqlx::Result<()> {
        let (backlog, oldest): (i64, f64) = sqlx::query_as(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
             FROM outbox WHERE published_at IS NULL",
        )
        .fetch_one(pool)
        .await?;
        self.backlog.set(backlog);
        self.oldest_unsent.set(oldest);
        Ok(())
    }
}

/// Publishes committed outbox rows. Run one per process; many processes may share a database.
#[derive(Debug)]
pub struct OutboxRelay {
    pool: PgPool,
    broker: Broker,
    /// Kept between batches; replaced after any broker error.
    channel: Option<Channel>,
    gauges: OutboxGauges,
    sampled: Option<Instant>,
}

impl OutboxRelay {
    pub fn new(pool: PgPool, broker: Broker) -> Self {
        Self {
            pool,
            broker,
            channel: None,
            gauges: OutboxGauges::default(),
            sampled: None,
        }
    }

    /// Keeps `gauges` up to date while relaying.
    #[must_use]
    pub fn with_gauges(mut self, gauges: OutboxGauges) -> Self {
        self.gauges = gauges;
        self
    }

    async fn sample(&mut self) {
        if self.sampled.is_some_and(|at| at.elapsed() < SAMPLE_EVERY) {
            return;
        }
        self.sampled = Some(Instant::now());
        if let Err(error) = self.gauges.sample(&self.pool).await {
            tracing::debug!(%error, "could not count the outbox");
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
            self.sample().await;
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
        // Marking rows sent need not wait for the WAL to reach the disk: if the server loses
        // this commit, the rows are published again, and consumers de-duplicate by event id.
        // It saves a disk flush on every round of the relay, on the saga's critical path.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *transaction)
            .await?;
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
