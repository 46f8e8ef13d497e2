//! Consuming events: the loop around a service's [`Handler`].
//!
//! For each delivery: parse the envelope, open a transaction, claim the message id in the
//! inbox (a redelivery is acked and skipped), run the handler, commit, then ack. So an effect
//! and its acknowledgement can never disagree: a crash before the commit redelivers the
//! message; a crash after it finds the inbox row.
//!
//! Failures: a database outage is waited out (the message stays unacked, retried with
//! back-off) because it says nothing about the message. A message that cannot be understood
//! (malformed, unknown version) or that the handler rejects as permanently invalid goes to the
//! dead-letter queue at once. Any other handler error requeues it; the quorum queue's delivery
//! limit dead-letters it after `AMQP_DELIVERY_LIMIT` attempts.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    types::FieldTable,
};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::{Broker, envelope::Envelope, inbox, topology};

/// What a handler reports when it cannot apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event can never be applied (invalid content): dead-letter it now.
    #[error("permanently invalid: {0}")]
    Permanent(String),
    /// The database failed: retry the same delivery after a pause.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Anything else: requeue; the delivery limit dead-letters a message that keeps failing.
    #[error("{0}")]
    Failed(String),
}

/// What happened to a delivery, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    Applied,
    Duplicate,
}

/// A service's reaction to events. It runs inside the transaction that also records the
/// message in the inbox; write effects (and outbox events) through `transaction`.
pub trait Handler: Send + Sync + 'static {
    /// Payload versions this handler understands, per event type; others are dead-lettered.
    fn understands(&self, envelope: &Envelope) -> bool;

    fn handle<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        envelope: &'a Envelope,
    ) -> Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>;
}

/// One consumer: its name (which selects its queue and inbox rows) and its handler.
#[derive(Clone)]
pub struct Subscription {
    pub consumer: &'static str,
    pub handler: Arc<dyn Handler>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

const DATABASE_RETRY_MAX: Duration = Duration::from_secs(5);

impl Subscription {
    /// Consumes until `shutdown`: the message being handled then is finished and acked first.
    pub async fn run(self, pool: PgPool, broker: Broker, shutdown: CancellationToken) {
        while let Some(session) = broker.session(&shutdown).await {
            match self.consume(&pool, &broker, &session, &shutdown).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(consumer = self.consumer, %error, "consuming stopped; resuming on the next connection");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        tracing::info!(consumer = self.consumer, "consumer stopped");
    }

    async fn consume(
        &self,
        pool: &PgPool,
        broker: &Broker,
        session: &crate::broker::Session,
        shutdown: &CancellationToken,
    ) -> lapin::Result<()> {
        let config = broker.config();
        let queue = topology::queue_name(&config.amqp_exchange, self.consumer);
        let channel = session.channel().await?;
        channel
            .basic_qos(config.amqp_prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!("{}-{}", self.consumer, uuid::Uuid::new_v4().simple());
        let mut deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(consumer = self.consumer, queue, "consuming");
        loop {
            let delivery = tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    // Unacked prefetched messages return to the queue when the channel closes.
                    let _ = channel.close(200, "consumer stopping".into()).await;
                    return Ok(());
                }
                delivery = deliveries.next() => delivery,
            };
            match delivery {
                Some(Ok(delivery)) => self.process(pool, delivery, shutdown).await?,
                Some(Err(error)) => return Err(error),
                None => {
                    return Err(lapin::ErrorKind::InvalidConnectionState(
                        lapin::ConnectionState::Closed,
                    )
                    .into());
                }
            }
        }
    }

    async fn process(
        &self,
        pool: &PgPool,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) -> lapin::Result<()> {
        let envelope = match serde_json::from_slice::<Envelope>(&delivery.data) {
            Ok(envelope) if self.handler.understands(&envelope) => envelope,
            Ok(envelope) => {
                tracing::error!(consumer = self.consumer, kind = envelope.kind, version = envelope.version, id = %envelope.id, "unknown event version; dead-lettering");
                return dead_letter(&delivery).await;
            }
            Err(error) => {
                tracing::error!(consumer = self.consumer, %error, "malformed message; dead-lettering");
                return dead_letter(&delivery).await;
            }
        };
        let mut pause = Duration::from_millis(100);
        loop {
            match self.apply(pool, &envelope).await {
                Ok(handled) => {
                    tracing::info!(consumer = self.consumer, kind = envelope.kind, id = %envelope.id, correlation_id = %envelope.correlation_id, ?handled, "event handled");
                    return delivery.ack(BasicAckOptions::default()).await.map(drop);
                }
                Err(HandlerError::Permanent(reason)) => {
                    tracing::error!(consumer = self.consumer, kind = envelope.kind, id = %envelope.id, reason, "event rejected; dead-lettering");
                    return dead_letter(&delivery).await;
                }
                Err(HandlerError::Database(error)) if !shutdown.is_cancelled() => {
                    tracing::warn!(consumer = self.consumer, id = %envelope.id, %error, "database unavailable; retrying the event");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(DATABASE_RETRY_MAX);
                }
                Err(error) => {
                    tracing::warn!(consumer = self.consumer, kind = envelope.kind, id = %envelope.id, %error, "event failed; requeued");
                    return delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        })
                        .await
                        .map(drop);
                }
            }
        }
    }

    async fn apply(&self, pool: &PgPool, envelope: &Envelope) -> Result<Handled, HandlerError> {
        let mut transaction = pool.begin().await?;
        if !inbox::claim(&mut transaction, self.consumer, envelope.id).await? {
            return Ok(Handled::Duplicate);
        }
        self.handler.handle(&mut transaction, envelope).await?;
        transaction.commit().await?;
        Ok(Handled::Applied)
    }
}

async fn dead_letter(delivery: &Delivery) -> lapin::Result<()> {
    delivery
        .nack(BasicNackOptions {
            requeue: false,
            ..BasicNackOptions::default()
        })
        .await
        .map(drop)
}
