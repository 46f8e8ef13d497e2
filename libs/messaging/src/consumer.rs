//! Consuming events: the loop around a service's [`Handler`].
//!
//! For each delivery: parse the envelope, open a transaction, claim the message id in the
//! inbox (a redelivery is acked and skipped), run the handler, commit, then ack. So an effect
//! and its acknowledgement can never disagree: a crash before the commit redelivers the
//! message; a crash after it finds the inbox row.
//!
//! Failures are told apart by what they say about the event:
//! - **The database is unavailable** (connection lost, server restarting, a deadlock or
//!   serialization failure: [`dockyard_runtime::database::is_transient`]): it says nothing about
//!   the event, so the same delivery is retried with back-off for as long as the outage lasts.
//!   If the database answers again and the same event still fails this way, it counts as a
//!   failure of the event (below).
//! - **The event can never be applied**: malformed, an unknown type or version, refused by the
//!   handler, or refused by the database (a data exception, a constraint violation). It is given
//!   up on at once: the handler *compensates* in a transaction of its own, so the business
//!   process still ends (the order is rejected, the cancellation recorded), then the message
//!   goes to the dead-letter queue with the reason in its headers, for `dlq list` / `replay`.
//! - **Anything else** (a handler error, a panic): the event is re-queued at the tail of the
//!   queue with its failure count in a header, so it never blocks the events behind it, and
//!   given up on after `AMQP_FAILURE_LIMIT` failures. Counting in the message means the deaths
//!   of consumers that merely held it cost nothing; the broker's own `x-delivery-limit` only
//!   backs up the case of an event that kills its process.
//!
//! A consumer handles up to `AMQP_PREFETCH` events at once, in lanes by correlation id (the
//! events of one order, one after the other, in order). It starts each connection with a
//! prefetch of one and widens it after its first handled event, so a process that crashes at
//! start-up returns one event, not a window.

use std::{
    collections::VecDeque,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use dockyard_runtime::trace;
use futures_util::{FutureExt, Stream, StreamExt, future::join_all, stream::FuturesUnordered};
use lapin::{
    Channel, Confirmation,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    Broker, broker::Session, envelope::Envelope, inbox, outbox::Handoff, status::ConsumerStatus,
    topology,
};

/// Header: how many times handlers failed on this event (absent: never).
pub const FAILURES_HEADER: &str = "x-dockyard-failures";
/// Header on a dead letter: why it was given up on.
pub const REASON_HEADER: &str = "x-dockyard-reason";
/// Header on a dead letter: when it was given up on (RFC 3339).
pub const DEAD_AT_HEADER: &str = "x-dockyard-dead-lettered-at";

/// What a handler reports when it cannot apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event can never be applied (invalid content): compensate and dead-letter it now.
    #[error("permanently invalid: {0}")]
    Permanent(String),
    /// A statement failed: retried while the database is unavailable, given up on when the
    /// database refused it (see the module documentation).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Anything else: re-queued and counted; given up on after `AMQP_FAILURE_LIMIT` failures.
    #[error("{0}")]
    Failed(String),
}

/// What a delivery came to, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    Applied,
    Duplicate,
    /// Failed; re-queued at the tail with its failure count.
    Requeued,
    /// Given up on: compensated and dead-lettered.
    DeadLettered,
}

impl Handled {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Requeued => "requeued",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// What a compensation leaves for a replay of the dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compensation {
    /// The event's step is closed for good: it is recorded as handled (in the inbox), so a
    /// replay from the dead-letter queue does nothing.
    Settled,
    /// Nothing was done that would stop a replay from applying the event later, once an
    /// operator has fixed what made it fail.
    Replayable,
}

/// A boxed future borrowing the handler, its transaction and the envelope.
pub type HandlerFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The events a handler's effects cause: the consumer writes them to the outbox in the
/// handler's transaction and hands them to the process's relay once it commits.
pub type Caused = Vec<Envelope>;

/// A service's reaction to events. It runs inside the transaction that also records the
/// message in the inbox; write effects through `transaction` and return the events they cause.
pub trait Handler: Send + Sync + 'static {
    /// Payload versions this handler understands, per event type; others are given up on.
    fn understands(&self, envelope: &Envelope) -> bool;

    fn handle<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        envelope: &'a Envelope,
    ) -> HandlerFuture<'a, Result<Caused, HandlerError>>;

    /// Several events of different business processes (different correlation ids), in one
    /// transaction. The default handles them one after the other; a handler overrides it to
    /// apply them with a few set-based statements. If it fails, each event is handled again on
    /// its own, so a failure is pinned on the event that causes it.
    fn handle_batch<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        envelopes: &'a [Envelope],
    ) -> HandlerFuture<'a, Result<Caused, HandlerError>> {
        Box::pin(async move {
            let mut caused = Vec::new();
            for envelope in envelopes {
                caused.extend(self.handle(transaction, envelope).await?);
            }
            Ok(caused)
        })
    }

    /// The event is given up on (`reason` says why): close its step of the business process
    /// in `transaction` (a transaction of its own, committed before the message is
    /// dead-lettered) so that the process still reaches an end; events it causes are written
    /// with [`crate::outbox::enqueue`]. The default does nothing.
    fn compensate<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        envelope: &'a Envelope,
        reason: &'a str,
    ) -> HandlerFuture<'a, Result<Compensation, sqlx::Error>> {
        let _ = (transaction, envelope, reason);
        Box::pin(async { Ok(Compensation::Replayable) })
    }
}

/// One consumer: its name (which selects its queue and inbox rows), its handler, and the
/// status it keeps for readiness and metrics.
#[derive(Clone)]
pub struct Subscription {
    consumer: &'static str,
    handler: Arc<dyn Handler>,
    status: Arc<ConsumerStatus>,
    handoff: Handoff,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

/// Back-off while the database is unavailable.
const DATABASE_RETRY_MIN: Duration = Duration::from_millis(100);
const DATABASE_RETRY_MAX: Duration = Duration::from_secs(5);
/// Transient failures of one event after which the database is asked whether it is up: if it
/// is, the event itself is failing, and the failure is counted against it.
const TRANSIENT_BEFORE_PING: u32 = 5;
/// How often the dead-letter queue's depth is read, and how long that may take.
const DEAD_LETTER_POLL: Duration = Duration::from_secs(5);
const DEAD_LETTER_COUNT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the broker may take to confirm a re-queued or dead-lettered copy; past it the
/// channel is given up (the original, unacked, comes back).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Why consuming on a session stopped.
enum Stop {
    /// Shutdown: the current event is finished or left unacked for another consumer.
    Shutdown,
    /// The connection or channel broke: resume on the next session.
    Broken(lapin::Error),
}

impl From<lapin::Error> for Stop {
    fn from(error: lapin::Error) -> Self {
        Self::Broken(error)
    }
}

impl Subscription {
    pub fn new(consumer: &'static str, handler: Arc<dyn Handler>) -> Self {
        Self {
            consumer,
            handler,
            status: Arc::new(ConsumerStatus::new(consumer)),
            handoff: Handoff::none(),
        }
    }

    /// Hands the events its handler causes to this relay (see [`crate::outbox`]); without it
    /// they are written for any relay to claim.
    #[must_use]
    pub fn with_handoff(mut self, handoff: Handoff) -> Self {
        self.handoff = handoff;
        self
    }

    pub fn consumer(&self) -> &'static str {
        self.consumer
    }

    /// Its status, for a readiness check and metrics ([`crate::status::ConsumerCheck`]).
    pub fn status(&self) -> Arc<ConsumerStatus> {
        Arc::clone(&self.status)
    }

    /// Consumes until `shutdown`: the message being handled then is finished and acked first.
    pub async fn run(self, pool: PgPool, broker: Broker, shutdown: CancellationToken) {
        while let Some(session) = broker.session(&shutdown).await {
            match self.consume(&pool, &broker, &session, &shutdown).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(consumer = self.consumer, %error, "consuming stopped; resuming on the next connection");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
        self.status.finish();
        tracing::info!(consumer = self.consumer, "consumer stopped");
    }

    async fn consume(
        &self,
        pool: &PgPool,
        broker: &Broker,
        session: &Session,
        shutdown: &CancellationToken,
    ) -> lapin::Result<()> {
        let config = broker.config();
        let queue = topology::queue_name(&config.amqp_exchange, self.consumer);
        let channel = session.channel().await?;
        let publisher = session.channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consumer = Consumer {
            subscription: self,
            pool,
            session,
            publisher: &publisher,
            queue: &queue,
            dead_letter_exchange: topology::dead_letter_exchange(&config.amqp_exchange),
            failure_limit: config.amqp_failure_limit,
            shutdown,
        };
        // Slow start: one event in hand until one was handled on this connection.
        let mut prefetch = 1;
        let result = loop {
            match consumer
                .consume_with(&channel, prefetch, config.amqp_prefetch)
                .await
            {
                Ok(Widen) if prefetch < config.amqp_prefetch => prefetch = config.amqp_prefetch,
                Ok(Widen) => {}
                Err(Stop::Shutdown) => break Ok(()),
                Err(Stop::Broken(error)) => break Err(error),
            }
        };
        // Unacked prefetched messages return to the queue when the channel closes.
        let _ = channel.close(200, "consumer stopping".into()).await;
        let _ = publisher.close(200, "consumer stopping".into()).await;
        result
    }
}

/// [`Consumer::consume_with`] returned to re-subscribe with the full prefetch.
struct Widen;

/// One session's consuming state.
struct Consumer<'a> {
    subscription: &'a Subscription,
    pool: &'a PgPool,
    session: &'a Session,
    /// A confirm-mode channel for re-queued and dead-lettered copies.
    publisher: &'a Channel,
    queue: &'a str,
    dead_letter_exchange: String,
    failure_limit: u32,
    shutdown: &'a CancellationToken,
}

impl Consumer<'_> {
    fn name(&self) -> &'static str {
        self.subscription.consumer
    }

    /// Subscribes with `prefetch`; returns [`Widen`] after the first handled event when the
    /// prefetch is below `full`, else consumes until shutdown or a broken channel.
    ///
    /// Events wait in lanes by correlation id: the events of one business process (one order)
    /// are handled one after the other, in the order they came, so a cancellation is never
    /// applied before its order's placement. The heads of idle lanes are handled together, as
    /// a batch in one transaction ([`Handler::handle_batch`]), up to [`BATCHES_IN_FLIGHT`]
    /// batches at once: under load a batch takes whatever has arrived, with one commit for all.
    #[allow(clippy::too_many_lines)] // one select loop: deliveries in, batches out
    async fn consume_with(
        &self,
        channel: &Channel,
        prefetch: u16,
        full: u16,
    ) -> Result<Widen, Stop> {
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!("{}-{}", self.name(), uuid::Uuid::new_v4().simple());
        let mut deliveries = channel
            .basic_consume(
                self.queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(
            consumer = self.name(),
            queue = self.queue,
            prefetch,
            "consuming"
        );
        let mut poll = tokio::time::interval(DEAD_LETTER_POLL);
        let mut lanes = Lanes::new(usize::from(prefetch.max(1)));
        let mut running: FuturesUnordered<BatchFuture<'_>> = FuturesUnordered::new();
        // Set once the subscription is cancelled to widen the prefetch: the deliveries already
        // sent to it are still handled, then the stream ends.
        let mut widening = false;
        let mut ended = false;
        loop {
            // Deliveries lapin already holds join the next batch: taking them costs no wait,
            // and a batch of one pays a whole transaction for its one event.
            if !ended {
                ended = take_ready(&mut deliveries, |delivery| {
                    accept(delivery, widening, channel, &mut lanes)
                })?;
            }
            while running.len() < BATCHES_IN_FLIGHT {
                let Some((taken, batch)) = lanes.take_batch() else {
                    break;
                };
                running.push(Box::pin(
                    async move { (taken, self.process_batch(batch).await) },
                ));
            }
            if ended && running.is_empty() {
                return Ok(Widen);
            }
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    // Events in hand are finished (or left unacked if they wait on an outage);
                    // those still waiting in their lane go back with the channel.
                    while running.next().await.is_some() {}
                    return Err(Stop::Shutdown);
                }
                Some((taken, handled)) = running.next(), if !running.is_empty() => {
                    lanes.release(&taken);
                    let handled = handled?;
                    let progressed = handled.iter().any(|h| *h != Handled::Requeued);
                    if progressed && prefetch < full && !widening {
                        widening = true;
                        channel
                            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                            .await?;
                    }
                }
                _ = poll.tick() => {
                    let _ = tokio::time::timeout(DEAD_LETTER_COUNT_TIMEOUT, self.count_dead_letters()).await;
                }
                delivery = deliveries.next(), if !ended => {
                    ended = accept(delivery, widening, channel, &mut lanes)?;
                }
            }
        }
    }

    /// Handles a batch (events of distinct lanes): together in one transaction when it can,
    /// else each on its own.
    async fn process_batch(&self, batch: Vec<Incoming>) -> Result<Vec<Handled>, Stop> {
        let (together, alone): (Vec<Incoming>, Vec<Incoming>) =
            batch.into_iter().partition(|incoming| {
                incoming.envelope.as_ref().is_ok_and(|envelope| {
                    self.subscription.handler.understands(envelope)
                        && failures_of(&incoming.delivery) == 0
                })
            });
        let mut handled = Vec::with_capacity(together.len() + alone.len());
        for incoming in alone {
            handled.push(self.process(incoming).await?);
        }
        if together.len() == 1 {
            let incoming = together.into_iter().next().expect("one event");
            handled.push(self.process(incoming).await?);
            return Ok(handled);
        }
        if together.is_empty() {
            return Ok(handled);
        }
        // One consumer span per event, each in its own trace, for the time of the batch; the
        // handler gets each event with its span as `traceparent`, so what it causes continues
        // that event's trace.
        let (mut envelopes, mut spans) = (Vec::new(), Vec::new());
        for incoming in &together {
            if let Ok(envelope) = &incoming.envelope {
                let span = self.consume_span(envelope);
                let mut envelope = envelope.clone();
                envelope.traceparent = trace::traceparent(&span);
                envelopes.push(envelope);
                spans.push(span);
            }
        }
        let status = &self.subscription.status;
        let now = Instant::now();
        for envelope in &envelopes {
            status.started(envelope.id, now);
        }
        // The batch's transaction, in each event's trace.
        let transactions: Vec<tracing::Span> = spans
            .iter()
            .map(|span| span.in_scope(transaction_span))
            .collect();
        let outcome = self.attempt_batch(&envelopes).await;
        drop(transactions);
        for envelope in &envelopes {
            status.ended(envelope.id);
        }
        match outcome {
            BatchAttempt::Applied(claimed) => {
                // All the acks at once: each waits for lapin's I/O loop to send it, and one
                // after the other they kept the batch's lanes busy for a round trip each.
                for acked in join_all(
                    together
                        .iter()
                        .map(|incoming| incoming.delivery.ack(BasicAckOptions::default())),
                )
                .await
                {
                    acked?;
                }
                for incoming in &together {
                    let id = incoming.envelope.as_ref().map(|e| e.id).ok();
                    let result = if id.is_some_and(|id| claimed.contains(&id)) {
                        Handled::Applied
                    } else {
                        Handled::Duplicate
                    };
                    handled.push(self.done(result));
                }
                tracing::info!(
                    consumer = self.name(),
                    events = together.len(),
                    "batch handled"
                );
            }
            BatchAttempt::Shutdown => return Err(Stop::Shutdown),
            BatchAttempt::Failed(error) => {
                for span in &spans {
                    trace::failed(span);
                }
                drop(spans);
                // Find the culprit: each event on its own, with its own failure count.
                tracing::info!(
                    consumer = self.name(),
                    events = together.len(),
                    error,
                    "batch failed; handling its events one by one"
                );
                for incoming in together {
                    handled.push(self.process(incoming).await?);
                }
            }
        }
        Ok(handled)
    }

    /// Applies a batch in one transaction, waiting out database outages.
    async fn attempt_batch(&self, envelopes: &[Envelope]) -> BatchAttempt {
        let mut pause = DATABASE_RETRY_MIN;
        let mut transient = 0;
        loop {
            let result = AssertUnwindSafe(self.apply_batch(envelopes))
                .catch_unwind()
                .await;
            let error = match result {
                Ok(Ok(claimed)) => return BatchAttempt::Applied(claimed),
                Ok(Err(HandlerError::Database(error)))
                    if dockyard_runtime::database::is_transient(&error) =>
                {
                    error
                }
                Ok(Err(error)) => return BatchAttempt::Failed(error.to_string()),
                Err(panic) => {
                    return BatchAttempt::Failed(format!(
                        "the handler panicked: {}",
                        panic_text(&*panic)
                    ));
                }
            };
            if self.shutdown.is_cancelled() {
                return BatchAttempt::Shutdown;
            }
            transient += 1;
            if transient >= TRANSIENT_BEFORE_PING && self.database_answers().await {
                return BatchAttempt::Failed(format!("{error} (the database is up)"));
            }
            tracing::warn!(consumer = self.name(), %error, retry_in_ms = pause.as_millis(), "database unavailable; retrying the batch");
            tokio::select! {
                () = self.shutdown.cancelled() => return BatchAttempt::Shutdown,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(DATABASE_RETRY_MAX);
        }
    }

    async fn apply_batch(&self, envelopes: &[Envelope]) -> Result<Vec<Uuid>, HandlerError> {
        let mut transaction = self.pool.begin().await?;
        let ids: Vec<Uuid> = envelopes.iter().map(|e| e.id).collect();
        let claimed = inbox::claim_many(&mut transaction, self.name(), &ids).await?;
        let fresh: Vec<Envelope> = envelopes
            .iter()
            .filter(|e| claimed.contains(&e.id))
            .cloned()
            .collect();
        let caused = if fresh.is_empty() {
            Vec::new()
        } else {
            self.subscription
                .handler
                .handle_batch(&mut transaction, &fresh)
                .await?
        };
        let handoff = &self.subscription.handoff;
        let written = handoff.enqueue(&mut transaction, caused).await?;
        transaction.commit().await?;
        handoff.committed(written);
        Ok(claimed)
    }

    async fn count_dead_letters(&self) {
        let dead_letter_queue = format!("{}.dlq", self.queue);
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        // A channel of its own: a failed passive declare closes the channel it ran on.
        let Ok(channel) = self.session.channel().await else {
            return;
        };
        if let Ok(queue) = channel
            .queue_declare(
                dead_letter_queue.as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await
        {
            self.subscription
                .status
                .dead_letters_seen(queue.message_count(), Instant::now());
        }
        let _ = channel.close(200, "counted".into()).await;
    }

    /// [`Consumer::handle_one`] in the event's consumer span.
    async fn process(&self, incoming: Incoming) -> Result<Handled, Stop> {
        let span = match &incoming.envelope {
            Ok(envelope) => self.consume_span(envelope),
            Err(_) => tracing::Span::none(),
        };
        self.handle_one(incoming).instrument(span).await
    }

    /// The span of handling `envelope`: a consumer span continuing the trace the event was
    /// published in (`traceparent`).
    fn consume_span(&self, envelope: &Envelope) -> tracing::Span {
        let span = tracing::info_span!(
            "consume",
            otel.name = %format_args!("{} process", envelope.kind),
            otel.kind = "consumer",
            messaging.system = "rabbitmq",
            messaging.operation.type = "process",
            messaging.destination.name = %self.queue,
            messaging.message.id = %envelope.id,
            messaging.message.conversation_id = %envelope.correlation_id,
        );
        trace::continue_from(&span, || {
            trace::parent_from_traceparent(envelope.traceparent.as_deref())
        });
        span
    }

    /// Handles one delivery to its end: acked, re-queued or dead-lettered.
    async fn handle_one(&self, incoming: Incoming) -> Result<Handled, Stop> {
        let Incoming { delivery, envelope } = incoming;
        let mut envelope = match envelope {
            Ok(envelope) => envelope,
            Err(error) => {
                let reason = format!("malformed message: {error}");
                tracing::error!(consumer = self.name(), reason, "dead-lettering");
                self.dead_letter(&delivery, &reason, 0).await?;
                return Ok(self.done(Handled::DeadLettered));
            }
        };
        if !self.subscription.handler.understands(&envelope) {
            let reason = format!(
                "unknown event: {} version {}",
                envelope.kind, envelope.version
            );
            return self.give_up(&delivery, &envelope, &reason, 0).await;
        }
        let failures = failures_of(&delivery);
        // What the handler causes continues the trace under this consumer's span.
        envelope.traceparent = trace::traceparent(&tracing::Span::current());
        let status = &self.subscription.status;
        status.started(envelope.id, Instant::now());
        let outcome = self.attempt(&envelope).await;
        status.ended(envelope.id);
        let handled = match outcome {
            Attempt::Applied(handled) => {
                tracing::info!(consumer = self.name(), kind = envelope.kind, id = %envelope.id, correlation_id = %envelope.correlation_id, handled = handled.as_str(), "event handled");
                delivery.ack(BasicAckOptions::default()).await?;
                handled
            }
            Attempt::Shutdown => return Err(Stop::Shutdown),
            Attempt::Refused(reason) => {
                return self.give_up(&delivery, &envelope, &reason, failures).await;
            }
            Attempt::Failed(error) if failures + 1 >= self.failure_limit => {
                let reason = format!("failed {} times, last: {error}", failures + 1);
                return self
                    .give_up(&delivery, &envelope, &reason, failures + 1)
                    .await;
            }
            Attempt::Failed(error) => {
                tracing::warn!(consumer = self.name(), kind = envelope.kind, id = %envelope.id, failures = failures + 1, error, "event failed; re-queued at the tail");
                self.requeue(&delivery, failures + 1).await?;
                Handled::Requeued
            }
        };
        Ok(self.done(handled))
    }

    fn done(&self, handled: Handled) -> Handled {
        self.subscription.status.handled(handled, Instant::now());
        handled
    }

    /// Applies the event, waiting out database outages.
    async fn attempt(&self, envelope: &Envelope) -> Attempt {
        let mut pause = DATABASE_RETRY_MIN;
        let mut transient = 0;
        loop {
            let result = AssertUnwindSafe(self.apply(envelope).instrument(transaction_span()))
                .catch_unwind()
                .await;
            let error = match result {
                Ok(Ok(handled)) => return Attempt::Applied(handled),
                Ok(Err(HandlerError::Permanent(reason))) => return Attempt::Refused(reason),
                Ok(Err(HandlerError::Failed(reason))) => return Attempt::Failed(reason),
                Err(panic) => {
                    return Attempt::Failed(format!(
                        "the handler panicked: {}",
                        panic_text(&*panic)
                    ));
                }
                Ok(Err(HandlerError::Database(error))) => error,
            };
            if !dockyard_runtime::database::is_transient(&error) {
                return Attempt::Refused(format!("the database refused it: {error}"));
            }
            if self.shutdown.is_cancelled() {
                return Attempt::Shutdown;
            }
            transient += 1;
            if transient >= TRANSIENT_BEFORE_PING && self.database_answers().await {
                return Attempt::Failed(format!("{error} (the database is up)"));
            }
            tracing::warn!(consumer = self.name(), id = %envelope.id, %error, retry_in_ms = pause.as_millis(), "database unavailable; retrying the event");
            tokio::select! {
                () = self.shutdown.cancelled() => return Attempt::Shutdown,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(DATABASE_RETRY_MAX);
        }
    }

    async fn database_answers(&self) -> bool {
        sqlx::query("SELECT 1").execute(self.pool).await.is_ok()
    }

    async fn apply(&self, envelope: &Envelope) -> Result<Handled, HandlerError> {
        let mut transaction = self.pool.begin().await?;
        if !inbox::claim(&mut transaction, self.name(), envelope.id).await? {
            return Ok(Handled::Duplicate);
        }
        let caused = self
            .subscription
            .handler
            .handle(&mut transaction, envelope)
            .await?;
        let handoff = &self.subscription.handoff;
        let written = handoff.enqueue(&mut transaction, caused).await?;
        transaction.commit().await?;
        handoff.committed(written);
        Ok(Handled::Applied)
    }

    /// Compensates (retrying while the database is unavailable), then dead-letters.
    async fn give_up(
        &self,
        delivery: &Delivery,
        envelope: &Envelope,
        reason: &str,
        failures: u32,
    ) -> Result<Handled, Stop> {
        tracing::error!(consumer = self.name(), kind = envelope.kind, id = %envelope.id, correlation_id = %envelope.correlation_id, reason, "giving up on the event: compensating and dead-lettering");
        let mut pause = DATABASE_RETRY_MIN;
        loop {
            match self.compensate(envelope, reason).await {
                Ok(compensation) => {
                    tracing::info!(consumer = self.name(), id = %envelope.id, ?compensation, "compensated");
                    break;
                }
                Err(error) if dockyard_runtime::database::is_transient(&error) => {
                    if self.shutdown.is_cancelled() {
                        return Err(Stop::Shutdown);
                    }
                    tracing::warn!(consumer = self.name(), id = %envelope.id, %error, "database unavailable; retrying the compensation");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(DATABASE_RETRY_MAX);
                }
                Err(error) => {
                    tracing::error!(consumer = self.name(), id = %envelope.id, %error, "the compensation failed; the dead letter needs an operator");
                    break;
                }
            }
        }
        self.dead_letter(delivery, reason, failures).await?;
        Ok(self.done(Handled::DeadLettered))
    }

    async fn compensate(
        &self,
        envelope: &Envelope,
        reason: &str,
    ) -> Result<Compensation, sqlx::Error> {
        let mut transaction = self.pool.begin().await?;
        let compensation = self
            .subscription
            .handler
            .compensate(&mut transaction, envelope, reason)
            .await?;
        if compensation == Compensation::Settled {
            inbox::claim(&mut transaction, self.name(), envelope.id).await?;
        }
        transaction.commit().await?;
        Ok(compensation)
    }

    /// Publishes a copy to the dead-letter queue, with the reason and the failure count, then
    /// acks the original.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        reason: &str,
        failures: u32,
    ) -> Result<(), Stop> {
        let now = OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut headers = headers_of(delivery);
        headers.insert(REASON_HEADER.into(), long_string(reason));
        headers.insert(DEAD_AT_HEADER.into(), long_string(&now));
        headers.insert(FAILURES_HEADER.into(), AMQPValue::LongUInt(failures));
        self.republish(delivery, &self.dead_letter_exchange, headers)
            .await
    }

    /// Publishes a copy at the tail of the queue with `failures`, then acks the original.
    async fn requeue(&self, delivery: &Delivery, failures: u32) -> Result<(), Stop> {
        let mut headers = headers_of(delivery);
        headers.insert(FAILURES_HEADER.into(), AMQPValue::LongUInt(failures));
        self.republish(delivery, "", headers).await
    }

    /// `exchange` routes by the queue's name: the default exchange delivers to the queue
    /// itself, the dead-letter exchange to its dead-letter queue. The original is acked only
    /// once the copy is confirmed, so a crash in between leaves a duplicate, never a loss
    /// (the inbox makes the duplicate harmless).
    async fn republish(
        &self,
        delivery: &Delivery,
        exchange: &str,
        headers: FieldTable,
    ) -> Result<(), Stop> {
        let properties = delivery
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        let confirmed = tokio::time::timeout(CONFIRM_TIMEOUT, async {
            self.publisher
                .basic_publish(
                    exchange.into(),
                    self.queue.into(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    properties,
                )
                .await?
                .await
        })
        .await;
        if !matches!(confirmed, Ok(Ok(Confirmation::Ack(_)))) {
            return Err(Stop::Broken(match confirmed {
                Ok(Err(error)) => error,
                _ => closed(),
            }));
        }
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }
}

/// The client span of an event's transaction (its inbox row, the handler's statements, the
/// events it causes), in the current span's trace.
fn transaction_span() -> tracing::Span {
    tracing::info_span!(
        "query",
        otel.name = "transaction",
        otel.kind = "client",
        db.system.name = "postgresql",
    )
}

/// A delivery and its envelope, parsed once.
struct Incoming {
    delivery: Delivery,
    envelope: Result<Envelope, serde_json::Error>,
}

impl Incoming {
    fn parse(delivery: Delivery) -> Self {
        let envelope = serde_json::from_slice(&delivery.data);
        Self { delivery, envelope }
    }

    /// The lane of its business process; a message that is not an envelope goes to lane 0.
    fn lane(&self, lanes: usize) -> usize {
        let Ok(envelope) = &self.envelope else {
            return 0;
        };
        let bits = envelope.correlation_id.as_u128();
        usize::try_from((bits ^ (bits >> 64)) % lanes as u128).unwrap_or(0)
    }
}

/// A batch in hand: the lanes it took its events from, and how each event ended.
type BatchFuture<'a> =
    Pin<Box<dyn Future<Output = (Vec<usize>, Result<Vec<Handled>, Stop>)> + Send + 'a>>;

/// Batches handled at once by one consumer.
pub const BATCHES_IN_FLIGHT: usize = 2;

/// Deliveries waiting, by lane (correlation id); a lane with an event in hand is busy.
struct Lanes {
    waiting: Vec<VecDeque<Incoming>>,
    busy: Vec<bool>,
    /// Where the next batch starts looking, so no lane waits behind the others.
    next: usize,
}

impl Lanes {
    fn new(lanes: usize) -> Self {
        Self {
            waiting: (0..lanes).map(|_| VecDeque::new()).collect(),
            busy: vec![false; lanes],
            next: 0,
        }
    }

    fn push(&mut self, incoming: Incoming) {
        let lane = incoming.lane(self.waiting.len());
        self.waiting[lane].push_back(incoming);
    }

    /// The head of every idle lane that has one; those lanes become busy.
    fn take_batch(&mut self) -> Option<(Vec<usize>, Vec<Incoming>)> {
        let lanes = self.waiting.len();
        let mut taken = Vec::new();
        let mut batch = Vec::new();
        for offset in 0..lanes {
            let lane = (self.next + offset) % lanes;
            if self.busy[lane] {
                continue;
            }
            if let Some(incoming) = self.waiting[lane].pop_front() {
                self.busy[lane] = true;
                taken.push(lane);
                batch.push(incoming);
            }
        }
        self.next = (self.next + 1) % lanes;
        (!batch.is_empty()).then_some((taken, batch))
    }

    fn release(&mut self, lanes: &[usize]) {
        for lane in lanes {
            self.busy[*lane] = false;
        }
    }
}

/// How applying a batch ended.
enum BatchAttempt {
    /// Committed: the ids claimed now (the others were duplicates).
    Applied(Vec<Uuid>),
    /// Something in it failed: its events are handled one by one.
    Failed(String),
    Shutdown,
}

/// Hands `take` every item `stream` already holds, without waiting for one (and `None` if the
/// stream has ended); stops when `take` says the stream has ended, and returns whether it has.
fn take_ready<S: Stream + Unpin, E>(
    stream: &mut S,
    mut take: impl FnMut(Option<S::Item>) -> Result<bool, E>,
) -> Result<bool, E> {
    while let Some(item) = stream.next().now_or_never() {
        if take(item)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Puts a delivery in its lane; returns whether the subscription has ended (it was cancelled
/// to widen the prefetch and has handed out all it held).
fn accept(
    delivery: Option<lapin::Result<Delivery>>,
    widening: bool,
    channel: &Channel,
    lanes: &mut Lanes,
) -> Result<bool, Stop> {
    let delivery = match delivery {
        Some(Ok(delivery)) => delivery,
        Some(Err(error)) => return Err(Stop::Broken(error)),
        None if widening => return Ok(true),
        None => return Err(Stop::Broken(closed())),
    };
    // lapin may still hand out deliveries buffered before the channel broke; their acks would
    // be lost and the broker has taken them back already.
    if !channel.status().connected() {
        return Err(Stop::Broken(closed()));
    }
    lanes.push(Incoming::parse(delivery));
    Ok(false)
}

/// The error for a channel or connection that is gone.
fn closed() -> lapin::Error {
    lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed).into()
}

/// How applying an event ended.
enum Attempt {
    Applied(Handled),
    /// It can never be applied: give up now.
    Refused(String),
    /// It failed; count it.
    Failed(String),
    /// Shutdown came while waiting out an outage: leave it for another consumer.
    Shutdown,
}

fn headers_of(delivery: &Delivery) -> FieldTable {
    delivery.properties.headers().clone().unwrap_or_default()
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(text.into())
}

/// The failure count a previous consumer wrote into the message.
pub fn failures_of(delivery: &Delivery) -> u32 {
    header_u32(delivery.properties.headers().as_ref(), FAILURES_HEADER)
}

/// A numeric header, whatever integer type it travelled as.
pub fn header_u32(headers: Option<&FieldTable>, name: &str) -> u32 {
    let Some(value) = headers.and_then(|h| h.inner().get(&ShortString::from(name))) else {
        return 0;
    };
    let number = match value {
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        _ => 0,
    };
    u32::try_from(number).unwrap_or(0)
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic")
}

#[cfg(test)]
mod tests {
    use futures_util::{StreamExt, stream};

    use super::take_ready;

    #[test]
    fn what_a_stream_already_holds_is_taken_without_waiting_for_more() {
        let mut deliveries = stream::iter([1, 2, 3]).chain(stream::pending());
        let mut taken = Vec::new();

        let ended = take_ready(&mut deliveries, |item| {
            taken.push(item);
            Ok::<_, ()>(false)
        });

        assert_eq!(
            ended,
            Ok(false),
            "the stream has not ended, it has nothing yet"
        );
        assert_eq!(taken, [Some(1), Some(2), Some(3)]);
    }

    #[test]
    fn an_ended_stream_is_reported_once_and_taking_stops_there() {
        let mut deliveries = stream::iter([1, 2]);
        let mut taken = Vec::new();

        let ended = take_ready(&mut deliveries, |item| {
            let end = item.is_none();
            taken.push(item);
            Ok::<_, ()>(end)
        });

        assert_eq!(ended, Ok(true));
        assert_eq!(taken, [Some(1), Some(2), None]);
    }

    #[test]
    fn an_error_stops_taking_at_once() {
        let mut deliveries = stream::iter([1, 2, 3]);
        let mut taken = Vec::new();

        let ended = take_ready(&mut deliveries, |item| {
            taken.push(item);
            if item == Some(2) {
                Err("broken")
            } else {
                Ok(false)
            }
        });

        assert_eq!(ended, Err("broken"));
        assert_eq!(taken, [Some(1), Some(2)]);
    }
}
