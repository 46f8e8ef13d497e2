//! The transactional outbox and its relay.
//!
//! An event is written to the `outbox` table in the transaction of the change it describes and
//! published after the commit, by a relay in each process. It gets there one of two ways:
//! - **Handed off** (the saga's hot paths, [`Handoff`]): the writer leases the rows to its own
//!   process's relay (`relay_after` = now + [`LEASE`], no notification) and, once the
//!   transaction has committed, hands the events over in memory. The relay publishes them at
//!   once, several rounds awaiting their confirms together, and deletes their rows on a
//!   connection of its own (asynchronous commit: a lost delete only means a second copy). The
//!   database does one insert and one delete per batch of events, and no relay is woken for them.
//! - **Claimed** (every other event, and the fallback): relays woken by `LISTEN/NOTIFY` (or
//!   every [`POLL_INTERVAL`]) claim rows whose lease is over with `FOR UPDATE SKIP LOCKED`,
//!   publish them with confirms and delete them. A hand-off that was lost (the process died
//!   between commit and publish, the broker was away, the relay's queue was full) is claimed
//!   this way when its lease ends, by any instance.
//!
//! Either way nothing committed is lost and nothing uncommitted is published; an event published
//! twice is ignored by the consumers' inbox. The table holds only what waits to be published.
//! (During a rolling update, relays of the previous release mark the rows they publish with
//! `published_at` instead; claims leave those alone, and the next release's migration removes
//! the column and them.)

use std::{sync::atomic::AtomicU64, time::Duration};

use dockyard_runtime::{
    health::{ReadinessCheck, Verdict},
    metrics::Metrics,
};
use futures_util::{StreamExt, future::join_all, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Channel, Confirmation, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use prometheus_client::metrics::gauge::Gauge;
use sqlx::{
    Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgListener},
    types::Json,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Broker, envelope::Envelope};

/// `NOTIFY` channel that wakes relays when an event is committed for any relay to claim.
const NOTIFY_CHANNEL: &str = "dockyard_outbox";
/// Rows claimed and published per transaction.
const BATCH: i64 = 100;
/// How often relays look for events when no notification arrives (or `LISTEN` is down).
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long the broker may take to confirm a batch; past it the batch is published again later
/// (consumers ignore the copies they already handled).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a handed-off event is its own relay's to publish; then any relay may claim it.
pub const LEASE: Duration = Duration::from_secs(5);
/// Hand-offs (one per committed transaction) waiting for the relay at most; past it, events
/// are left to be claimed when their lease ends.
const HANDOFF_QUEUE: usize = 1024;
/// Hand-offs published together in one round at most.
const HANDOFF_ROUND: usize = 64;
/// Rounds of handed-off events awaiting their confirms at once.
const ROUNDS_IN_FLIGHT: usize = 8;
/// How long the relay waits for the broker to confirm its channel's close when stopping.
const CHANNEL_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the relay's own connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Adds `envelope` to the outbox inside the caller's transaction, for any relay to claim. It is
/// published only if that transaction commits; the notification, too, is delivered only then.
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
    let (ids, keys, bodies) = columns(envelopes);
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

fn columns(envelopes: &[Envelope]) -> (Vec<Uuid>, Vec<&str>, Vec<Json<&Envelope>>) {
    let ids = envelopes.iter().map(|e| e.id).collect();
    let keys = envelopes.iter().map(|e| e.kind.as_str()).collect();
    let bodies = envelopes.iter().map(Json).collect();
    (ids, keys, bodies)
}

/// Publishes `envelope`, an event published before, once more with the same id, so a consumer
/// that handled it already ignores it (its inbox has the id) and only one that never got it
/// acts. `false` when it is still waiting in the outbox (it goes out once, as it is).
pub async fn publish_again(
    transaction: &mut PgConnection,
    envelope: &Envelope,
) -> sqlx::Result<bool> {
    let added = sqlx::query(
        "INSERT INTO outbox (id, routing_key, envelope) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO NOTHING
         RETURNING pg_notify($4, '')",
    )
    .bind(envelope.id)
    .bind(&envelope.kind)
    .bind(Json(envelope))
    .bind(NOTIFY_CHANNEL)
    .execute(&mut *transaction)
    .await?
    .rows_affected();
    Ok(added == 1)
}

/// The way to this process's relay: events written with [`Handoff::enqueue`] are leased to it
/// and handed over with [`Handoff::committed`] once their transaction has committed, so they are
/// published without a notification or a claim. Cheap to clone. A hand-off to no relay
/// ([`Handoff::none`]) writes events for any relay to claim, as [`enqueue_many`] does; so does
/// a hand-off while this process is not connected to the broker: its relay could not publish
/// them, and another instance's relay, or its own once the connection is back, claims them at
/// once instead of when a lease ends.
#[derive(Debug, Clone, Default)]
pub struct Handoff {
    relay: Option<(mpsc::Sender<Vec<Envelope>>, Broker)>,
}

/// Events [`Handoff::enqueue`] wrote in a transaction: hand them over once it has committed.
#[must_use = "hand the events over with Handoff::committed after the commit, or they wait for their lease"]
#[derive(Debug, Default)]
pub struct Written(Vec<Envelope>);

impl Handoff {
    /// No relay in this process: events are written for any relay to claim.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds `envelopes` to the outbox inside the caller's transaction, leased to this process's
    /// relay for [`LEASE`].
    pub async fn enqueue(
        &self,
        transaction: &mut PgConnection,
        envelopes: Vec<Envelope>,
    ) -> sqlx::Result<Written> {
        if envelopes.is_empty() {
            return Ok(Written::default());
        }
        if !self
            .relay
            .as_ref()
            .is_some_and(|(_, broker)| broker.is_connected())
        {
            enqueue_many(transaction, &envelopes).await?;
            return Ok(Written::default());
        }
        let (ids, keys, bodies) = columns(&envelopes);
        sqlx::query(
            "INSERT INTO outbox (id, routing_key, envelope, relay_after)
             SELECT e.id, e.key, e.body, now() + make_interval(secs => $4)
             FROM unnest($1::uuid[], $2::text[], $3::jsonb[]) AS e(id, key, body)",
        )
        .bind(&ids)
        .bind(&keys)
        .bind(&bodies)
        .bind(LEASE.as_secs_f64())
        .execute(&mut *transaction)
        .await?;
        Ok(Written(envelopes))
    }

    /// Hands events over to the relay; call it once their transaction has committed. A relay
    /// that is not keeping up leaves them to be claimed when their lease ends.
    pub fn committed(&self, written: Written) {
        let (Some((relay, _)), false) = (&self.relay, written.0.is_empty()) else {
            return;
        };
        if relay.try_send(written.0).is_err() {
            tracing::debug!("the relay's queue is full; the events go out when their lease ends");
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker did not confirm {0} event(s)")]
    NotConfirmed(usize),
    #[error("not connected to the broker")]
    Disconnected,
}

/// How often the relay counts what waits in the outbox, for the metrics.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The outbox as `/metrics` shows it: `dockyard_outbox_backlog` (rows not yet published) and
/// `dockyard_outbox_oldest_unsent_seconds`; counted by the relay about once a second.
#[derive(Debug, Clone, Default)]
pub struct OutboxGauges {
    backlog: Gauge,
    oldest_unsent: Gauge<f64, AtomicU64>,
    /// When the broker last confirmed something this relay published (milliseconds on
    /// [`progress_clock`]; 0: never).
    last_confirm: std::sync::Arc<AtomicU64>,
}

/// Milliseconds since the first call (never 0): the relay's progress clock.
fn progress_clock() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
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

    /// Events not yet published, as last counted.
    pub fn backlog(&self) -> i64 {
        self.backlog.get()
    }

    /// Age of the oldest event not yet published, as last counted (0 when none waits).
    pub fn oldest_unsent_seconds(&self) -> f64 {
        self.oldest_unsent.get()
    }

    /// The broker confirmed events this relay published.
    fn confirmed(&self) {
        self.last_confirm
            .store(progress_clock(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether publishing has stalled: an event has waited over `after` and the broker has
    /// confirmed nothing for as long. A relay that is merely behind (under load) still gets
    /// confirms; one whose way to the broker is blocked — disconnected, or a partition that
    /// drops packets while the connection still looks alive — gets none.
    pub fn stalled(&self, after: Duration) -> bool {
        let since_confirm = progress_clock()
            .saturating_sub(self.last_confirm.load(std::sync::atomic::Ordering::Relaxed));
        let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.oldest_unsent_seconds() > after.as_secs_f64() && since_confirm > after_ms
    }

    async fn sample(&self, connection: &mut PgConnection) -> sqlx::Result<()> {
        let (backlog, oldest): (i64, f64) = sqlx::query_as(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
             FROM outbox WHERE published_at IS NULL",
        )
        .fetch_one(connection)
        .await?;
        self.backlog.set(backlog);
        self.oldest_unsent.set(oldest);
        Ok(())
    }
}

/// Readiness of the outbox: `degraded` while an event has waited to be published for over
/// [`OutboxCheck::WAITING_FOR`] (the broker is away or the relay is behind), with the backlog;
/// never `down`, for the reason [`crate::BrokerCheck`] gives.
#[derive(Debug, Clone)]
pub struct OutboxCheck(pub OutboxGauges);

impl OutboxCheck {
    pub const WAITING_FOR: Duration = Duration::from_secs(5);

    fn verdict(backlog: i64, oldest_seconds: f64) -> Verdict {
        if backlog > 0 && oldest_seconds > Self::WAITING_FOR.as_secs_f64() {
            Verdict::Degraded(format!(
                "{backlog} event(s) wait to be published, the oldest for {oldest_seconds:.0} s"
            ))
        } else {
            Verdict::Up
        }
    }
}

impl ReadinessCheck for OutboxCheck {
    fn name(&self) -> &'static str {
        "outbox"
    }

    fn check(&self) -> std::pin::Pin<Box<dyn Future<Output = Verdict> + Send + '_>> {
        let verdict = Self::verdict(self.0.backlog(), self.0.oldest_unsent_seconds());
        Box::pin(std::future::ready(verdict))
    }
}

/// A round of published events awaiting its confirms: their ids once all are confirmed.
type Round = std::pin::Pin<Box<dyn Future<Output = Result<Vec<Uuid>, RelayError>> + Send>>;

/// Publishes committed outbox rows. Run one per process; many processes may share a database.
#[derive(Debug)]
pub struct OutboxRelay {
    pool: PgPool,
    broker: Broker,
    /// Kept between batches; replaced after any broker error.
    channel: Option<Channel>,
    gauges: OutboxGauges,
    handed: mpsc::Receiver<Vec<Envelope>>,
    handoff: mpsc::Sender<Vec<Envelope>>,
}

impl OutboxRelay {
    pub fn new(pool: PgPool, broker: Broker) -> Self {
        let (handoff, handed) = mpsc::channel(HANDOFF_QUEUE);
        Self {
            pool,
            broker,
            channel: None,
            gauges: OutboxGauges::default(),
            handed,
            handoff,
        }
    }

    /// Keeps `gauges` up to date while relaying.
    #[must_use]
    pub fn with_gauges(mut self, gauges: OutboxGauges) -> Self {
        self.gauges = gauges;
        self
    }

    /// The way to this relay, for the process's writers of events.
    pub fn handoff(&self) -> Handoff {
        Handoff {
            relay: Some((self.handoff.clone(), self.broker.clone())),
        }
    }

    /// Relays until `shutdown`; then publishes what was handed over and what is pending once
    /// more, and returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let (published, books) = mpsc::unbounded_channel();
        let bookkeeper = tokio::spawn(keep_books(self.pool.clone(), self.gauges.clone(), books));
        let mut rounds: FuturesUnordered<Round> = FuturesUnordered::new();
        let mut listener = None;
        let mut claim = true;
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut handed = Vec::with_capacity(HANDOFF_ROUND);
        loop {
            if listener.is_none() {
                listener = self.listen().await;
            }
            if claim {
                claim = false;
                self.drain(&shutdown, Leases::Respected).await;
            }
            let woken = async {
                match listener.as_mut() {
                    Some(listener) => listener.recv().await.map(drop),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(round) = rounds.next(), if !rounds.is_empty() => self.confirmed(round, &published),
                received = self.handed.recv_many(&mut handed, HANDOFF_ROUND),
                    if rounds.len() < ROUNDS_IN_FLIGHT =>
                {
                    if received > 0 {
                        let events: Vec<Envelope> = handed.drain(..).flatten().collect();
                        if let Some(round) = self.publish_round(events).await {
                            rounds.push(round);
                        }
                    }
                }
                result = woken => {
                    if result.is_err() {
                        listener = None;
                    }
                    claim = true;
                }
                _ = poll.tick() => claim = true,
            }
        }
        // Flush: what was handed over goes out now if the broker is there, then whatever else
        // was committed — leases ignored: this process's own lost hand-offs are among them.
        self.handed.close();
        let mut last = Vec::new();
        while let Ok(events) = self.handed.try_recv() {
            last.extend(events);
        }
        if let Some(round) = self.publish_round(last).await {
            rounds.push(round);
        }
        while let Some(round) = rounds.next().await {
            self.confirmed(round, &published);
        }
        self.drain(&CancellationToken::new(), Leases::Ignored).await;
        // Closed before the broker connection is: a channel still open when the connection
        // closes gets frames after lapin has let it go, which it logs as errors.
        if let Some(channel) = self.channel.take().filter(|c| c.status().connected()) {
            let closing = channel.close(200, "relay stopping".into());
            let _ = tokio::time::timeout(CHANNEL_CLOSE_TIMEOUT, closing).await;
        }
        drop(published);
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, bookkeeper).await;
        tracing::info!("outbox relay stopped");
    }

    /// A round's confirms came back: its events leave the outbox, or, if the broker did not
    /// confirm them all, are left to be claimed when their lease ends.
    fn confirmed(
        &mut self,
        round: Result<Vec<Uuid>, RelayError>,
        published: &mpsc::UnboundedSender<Vec<Uuid>>,
    ) {
        match round {
            Ok(ids) => {
                self.gauges.confirmed();
                let _ = published.send(ids);
            }
            Err(error) => {
                tracing::warn!(%error, "handed-off events not confirmed; they are claimed again when their lease ends");
                self.channel = None;
            }
        }
    }

    /// Publishes handed-over events at once; the round resolves when the broker has confirmed
    /// them. `None` when there is nothing to publish or it could not be (the events wait for
    /// their lease).
    async fn publish_round(&mut self, events: Vec<Envelope>) -> Option<Round> {
        if events.is_empty() {
            return None;
        }
        if !self.broker.is_connected() {
            tracing::debug!(
                events = events.len(),
                "broker away: the events go out when it is back"
            );
            return None;
        }
        match self.publish(&events).await {
            Ok(confirms) => {
                let ids = events.iter().map(|e| e.id).collect();
                Some(Box::pin(async move {
                    confirmed(confirms).await?;
                    Ok(ids)
                }))
            }
            Err(error) => {
                tracing::warn!(%error, events = events.len(), "could not publish handed-off events; they are claimed again when their lease ends");
                self.channel = None;
                None
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen(NOTIFY_CHANNEL).await.ok()?;
        Some(listener)
    }

    /// Claims and publishes batches until none is left or something fails (retried on the
    /// next wake).
    async fn drain(&mut self, shutdown: &CancellationToken, leases: Leases) {
        loop {
            if !self.broker.is_connected() || shutdown.is_cancelled() {
                return;
            }
            match self.claim_batch(leases).await {
                Ok(published) => {
                    if published > 0 {
                        self.gauges.confirmed();
                    }
                    tracing::debug!(published, "outbox batch published");
                    if published < usize::try_from(BATCH).unwrap_or(usize::MAX) {
                        return;
                    }
                }
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
        let session = tokio::time::timeout(CONFIRM_TIMEOUT, self.broker.session(&never))
            .await
            .ok()
            .flatten()
            .ok_or(RelayError::Disconnected)?;
        let channel = session.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    /// Publishes `events` on the confirm channel; the confirms are awaited by the caller. All
    /// are handed to lapin at once: each publish waits for its I/O loop to send the frames, so
    /// one after the other they cost a round trip between threads each.
    async fn publish(&mut self, events: &[Envelope]) -> Result<Vec<PublisherConfirm>, RelayError> {
        let channel = self.confirm_channel().await?;
        let exchange = self.broker.config().amqp_exchange.as_str();
        let bodies: Vec<Vec<u8>> = events
            .iter()
            .map(|envelope| serde_json::to_vec(envelope).expect("an envelope serialises"))
            .collect();
        let published = join_all(events.iter().zip(&bodies).map(|(envelope, body)| {
            channel.basic_publish(
                exchange.into(),
                envelope.kind.as_str().into(),
                BasicPublishOptions::default(),
                body,
                event_properties(envelope),
            )
        }))
        .await;
        Ok(published.into_iter().collect::<Result<_, _>>()?)
    }

    /// Claims up to [`BATCH`] rows, publishes them with confirms, deletes them.
    async fn claim_batch(&mut self, leases: Leases) -> Result<usize, RelayError> {
        // Connect first: a claim must not hold its rows while waiting for the broker.
        self.confirm_channel().await?;
        let mut transaction = self.pool.begin().await?;
        // Deleting the rows need not wait for the WAL to reach the disk: if the server loses
        // this commit, the rows are published again, and consumers de-duplicate by event id.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *transaction)
            .await?;
        let rows: Vec<Json<Envelope>> = sqlx::query_scalar(
            "SELECT envelope FROM outbox
             WHERE published_at IS NULL AND ($2 OR relay_after <= now())
             ORDER BY id
             LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH)
        .bind(leases == Leases::Ignored)
        .fetch_all(&mut *transaction)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let events: Vec<Envelope> = rows.into_iter().map(|Json(envelope)| envelope).collect();
        let confirms = self.publish(&events).await?;
        confirmed(confirms).await?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(events.len())
    }
}

/// Whether a claim leaves rows leased to a relay alone (until their lease ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leases {
    Respected,
    /// At shutdown: this process's own lost hand-offs go out too.
    Ignored,
}

/// Waits for every confirm (at most [`CONFIRM_TIMEOUT`]); an error unless all are acks.
async fn confirmed(confirms: Vec<PublisherConfirm>) -> Result<(), RelayError> {
    let count = confirms.len();
    let confirmations = tokio::time::timeout(CONFIRM_TIMEOUT, join_all(confirms))
        .await
        .map_err(|_| RelayError::NotConfirmed(count))?;
    let mut unconfirmed = 0;
    for confirmation in confirmations {
        if !matches!(confirmation?, Confirmation::Ack(_)) {
            unconfirmed += 1;
        }
    }
    if unconfirmed > 0 {
        return Err(RelayError::NotConfirmed(unconfirmed));
    }
    Ok(())
}

/// The relay's bookkeeping, on a connection of its own: deletes the rows of published
/// handed-off events (asynchronous commit, batched) and counts the outbox for the gauges. Its
/// statements are plain index scans (no bitmap or sequential scans on this connection): deleted
/// rows leave dead entries in the indexes until a vacuum, and only a plain index scan marks such
/// entries dead as it passes them, so each statement skips what the last one saw. (Measured
/// under the saga benchmark with autovacuum off: with the planner's own choice, a count scanned
/// the whole table, 16 ms, and a mark 1,200 pages.)
async fn keep_books(
    pool: PgPool,
    gauges: OutboxGauges,
    mut published: mpsc::UnboundedReceiver<Vec<Uuid>>,
) {
    let options = pool.connect_options().as_ref().clone().options([
        ("synchronous_commit", "off"),
        ("enable_bitmapscan", "off"),
        ("enable_seqscan", "off"),
    ]);
    let mut connection: Option<PgConnection> = None;
    let mut sample = tokio::time::interval(SAMPLE_EVERY);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut received = Vec::new();
    loop {
        tokio::select! {
            count = published.recv_many(&mut received, 64) => {
                if count == 0 {
                    break;
                }
                let ids: Vec<Uuid> = received.drain(..).flatten().collect();
                let deleted = match open(&mut connection, &options).await {
                    Ok(connection) => delete_published(connection, &ids).await,
                    Err(error) => Err(error),
                };
                if let Err(error) = deleted {
                    connection = None;
                    tracing::debug!(%error, events = ids.len(), "could not delete published events; they are published again when their lease ends");
                }
            }
            _ = sample.tick() => {
                let sampled = match open(&mut connection, &options).await {
                    Ok(connection) => gauges.sample(connection).await,
                    Err(error) => Err(error),
                };
                if let Err(error) = sampled {
                    connection = None;
                    tracing::debug!(%error, "could not count the outbox");
                }
            }
        }
    }
    if let Some(connection) = connection {
        let _ = connection.close().await;
    }
}

/// The bookkeeper's connection, opened if need be.
async fn open<'a>(
    slot: &'a mut Option<PgConnection>,
    options: &PgConnectOptions,
) -> sqlx::Result<&'a mut PgConnection> {
    if slot.is_none() {
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        *slot = Some(connection);
    }
    Ok(slot.as_mut().expect("just opened"))
}

async fn delete_published(connection: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(connection)
        .await
        .map(drop)
}

/// The properties a relay gives an event (also for copies published outside the relay).
pub fn event_properties(envelope: &Envelope) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(envelope.id.to_string().into())
        .with_type(envelope.kind.as_str().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2) // persistent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishing_has_stalled_only_when_events_wait_and_no_confirm_comes() {
        let gauges = OutboxGauges::default();
        let after = Duration::from_millis(50);
        assert!(!gauges.stalled(after), "nothing waits");
        gauges.oldest_unsent.set(0.2);
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            gauges.stalled(after),
            "an event waits and nothing was ever confirmed"
        );
        gauges.confirmed();
        assert!(
            !gauges.stalled(after),
            "behind, but the broker confirms: not stalled"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(gauges.stalled(after), "no confirm since");
        gauges.oldest_unsent.set(0.0);
        assert!(!gauges.stalled(after), "and nothing waits any more");
    }

    #[test]
    fn the_outbox_is_degraded_only_while_an_event_has_waited_long() {
        assert_eq!(OutboxCheck::verdict(0, 0.0), Verdict::Up);
        assert_eq!(OutboxCheck::verdict(40, 1.0), Verdict::Up, "normal traffic");
        let waiting = OutboxCheck::verdict(800, 12.4);
        assert!(
            matches!(&waiting, Verdict::Degraded(reason) if reason.contains("800 event(s)") && reason.contains("12 s")),
            "{waiting:?}"
        );
    }
}
