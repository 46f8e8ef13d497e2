//! Admission control: refuse new orders early, with `503` and `Retry-After`, while the saga has
//! as many orders in progress as it can finish in time, instead of queueing work it cannot.
//!
//! The signal is the number of orders in progress: those pending in the database (counted
//! every 25 ms with one query on a partial index, shared by every instance since they share
//! the database), plus those this process let in since that count. The count runs on a
//! connection of its own that uses only plain index scans: a confirmed order leaves a dead entry in
//! the partial index until a vacuum, and only a plain index scan marks such entries dead as it
//! passes them, so each count skips what the last one saw. A bitmap scan visits every dead
//! entry's heap tuple each time: measured under the saga benchmark (autovacuum off), the count
//! grew to 5.6 ms a call, a tenth of the machine at 40 counts a second. Past
//! `ORDER_ADMISSION_BACKLOG` of them, new placements are refused: by Little's law the time an
//! order takes is at most that many divided by the rate the saga confirms them, so the backlog
//! bounds the latency of the orders that are let in. Placements already queued for the
//! database in this process count too: beyond a quarter of the writer's queue, new ones are
//! refused at once.
//!
//! **A broker outage is not an overload.** While this process is not connected to the broker
//! (or its outbox has stalled: an event unpublished for over [`OUTBOX_STALLED_AFTER`], as
//! when a partition drops packets and the connection still looks alive),
//! every order it takes waits in the outbox and stays pending: the saga is not behind, it is
//! not running for them. So pending orders do not count while the broker is away, nor, once it
//! is back, those that were pending when it returned (they are *excused*; the excuse shrinks
//! as they end and lapses [`EXCUSED_FOR`] after the return: a backlog that has not drained by
//! then is an overload like any other). What bounds placements during an outage is the outbox
//! itself: past `ORDER_OUTBOX_LIMIT` events waiting to be published (the relay's count, about
//! once a second), new placements are refused. Both refusals are load shedding
//! ([`Problem::shed`]): a healthy instance refusing by choice, which the gateway relays without
//! holding it against the instance.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use dockyard_messaging::{Broker, outbox::OutboxGauges};
use dockyard_runtime::{metrics::Metrics, problem::Problem};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use serde::Deserialize;
use sqlx::{Connection, PgConnection, PgPool, postgres::PgConnectOptions};
use tokio_util::sync::CancellationToken;

/// `ORDER_ADMISSION_BACKLOG`, `ORDER_OUTBOX_LIMIT`.
#[derive(Debug, Clone, Deserialize)]
pub struct AdmissionConfig {
    /// Orders in progress (pending) at most before new ones are refused (`0`: never refuse).
    #[serde(default = "default_backlog")]
    pub order_admission_backlog: i64,
    /// Events waiting in the outbox at most (the broker is away) before new placements are
    /// refused (`0`: never refuse). The default holds about a minute of placements at the
    /// saga's measured capacity on the reference machine (3,000 a second).
    #[serde(default = "default_outbox_limit")]
    pub order_outbox_limit: i64,
}

fn default_backlog() -> i64 {
    200
}

fn default_outbox_limit() -> i64 {
    200_000
}

/// Once the broker is back, the orders that were pending when it returned stop counting
/// against the backlog after this long at most.
pub const EXCUSED_FOR: Duration = Duration::from_secs(10);

/// What admission control watches besides the pending orders: this process's broker
/// connection and its outbox.
#[derive(Debug, Clone)]
pub struct Signals {
    pub broker: Broker,
    pub outbox: OutboxGauges,
}

/// An event unpublished for this long with no confirm from the broker for as long means the
/// way to the broker is blocked, connected or not: a partition that drops packets leaves the
/// connection looking alive until its heartbeat fails, while nothing gets through. (Normally
/// an event waits milliseconds, and a relay that is merely behind still gets confirms.)
pub const OUTBOX_STALLED_AFTER: Duration = Duration::from_secs(2);

impl Signals {
    /// Whether the broker is away for this process: disconnected, or its outbox stalled.
    pub fn broker_away(&self) -> bool {
        !self.broker.is_connected() || self.outbox.stalled(OUTBOX_STALLED_AFTER)
    }
}

const SAMPLE_EVERY: Duration = Duration::from_millis(25);

/// Refused placements per second whose key may be looked up, to answer a retry of an order let
/// in before with that order rather than a 503. Bounded, so that a storm of refusals does not
/// turn into a storm of queries on the database the saga needs (unbounded, one lookup per
/// refusal cost a quarter of the throughput at 2× capacity: `saga-bench --rates 3600`). A retry
/// past the budget gets the 503 and, retrying, its answer once there is room.
const RECALLS_PER_SECOND: u32 = 50;

/// How long a refused placement waits for its key's lookup at most: a refusal stays early.
pub const RECALL_WITHIN: Duration = Duration::from_millis(250);

/// Whether new orders are let in now.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    /// Pending orders at the last count.
    pending: AtomicI64,
    /// Orders let in by this process since the query of the last count started.
    let_in: AtomicI64,
    /// Events waiting in the outbox, as the relay last counted them.
    outbox_backlog: AtomicI64,
    shed: Counter,
    outbox_full: Counter,
    pending_gauge: Gauge,
    recalls: governor::DefaultDirectRateLimiter,
}

impl Admission {
    /// Registers its metrics (`dockyard_order_shed_total`, `dockyard_order_pending`).
    pub fn new(config: AdmissionConfig, metrics: &mut Metrics) -> Arc<Self> {
        let admission = Arc::new(Self {
            config,
            pending: AtomicI64::new(0),
            let_in: AtomicI64::new(0),
            outbox_backlog: AtomicI64::new(0),
            shed: Counter::default(),
            outbox_full: Counter::default(),
            pending_gauge: Gauge::default(),
            recalls: governor::RateLimiter::direct(governor::Quota::per_second(
                std::num::NonZeroU32::new(RECALLS_PER_SECOND).expect("not zero"),
            )),
        });
        metrics.register(
            "order_shed",
            "Placements refused with 503 because too many orders were in progress",
            admission.shed.clone(),
        );
        metrics.register(
            "order_outbox_full",
            "Placements refused with 503 because the outbox held ORDER_OUTBOX_LIMIT events",
            admission.outbox_full.clone(),
        );
        metrics.register(
            "order_pending",
            "Orders pending (in the saga), as last counted",
            admission.pending_gauge.clone(),
        );
        admission
    }

    /// Counts the orders in progress until `shutdown`.
    pub async fn run(self: Arc<Self>, pool: PgPool, signals: Signals, shutdown: CancellationToken) {
        let mut counter = PendingCounter::new(&pool);
        let mut excuse = Excuse::default();
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.outbox_backlog
                .store(signals.outbox.backlog(), Ordering::Relaxed);
            if self.config.order_admission_backlog == 0 {
                continue;
            }
            let counted_from = self.let_in.load(Ordering::Relaxed);
            if signals.broker_away() {
                // Nothing pending is the saga's doing: no count needed.
                excuse.broker_away();
                self.observe(0, 0, counted_from);
                continue;
            }
            // Unknown (the database is away): placements will find out for themselves.
            let Ok(pending) = counter.count().await else {
                continue;
            };
            let excused = excuse.counted(pending, Instant::now());
            self.observe(pending, excused, counted_from);
        }
        counter.close().await;
    }

    /// A count of `pending`, `excused` of them by a broker outage, from a query started when
    /// `counted_from` orders had been let in.
    fn observe(&self, pending: i64, excused: i64, counted_from: i64) {
        self.pending.store(pending - excused, Ordering::Relaxed);
        self.let_in.fetch_sub(counted_from, Ordering::Relaxed);
        self.pending_gauge.set(pending);
    }

    /// `Ok` to take a placement; [`Overloaded`] while the saga has its backlog of orders in
    /// progress, the outbox is full, or this process's writer is full (`queue_full`).
    pub fn admit(&self, queue_full: bool) -> Result<(), Overloaded> {
        let outbox_limit = self.config.order_outbox_limit;
        let outbox_full =
            outbox_limit > 0 && self.outbox_backlog.load(Ordering::Relaxed) >= outbox_limit;
        let limit = self.config.order_admission_backlog;
        let in_progress =
            self.pending.load(Ordering::Relaxed) + self.let_in.load(Ordering::Relaxed);
        if !queue_full && !outbox_full && (limit == 0 || in_progress < limit) {
            self.let_in.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Err(Overloaded {
            outbox_full,
            may_recall: self.recalls.check().is_ok(),
        })
    }

    /// Refuses a placement [`admit`](Self::admit) did not let in, counting it: `503` with
    /// `Retry-After`, marked as load shedding.
    pub fn shed(&self, overloaded: Overloaded) -> Problem {
        if overloaded.outbox_full {
            self.outbox_full.inc();
            return Problem::shed("outbox-full", "The broker is away and the outbox is full", 5)
                .detail(
                    "the events of accepted orders cannot be published now and no more can wait; retry later with the same Idempotency-Key",
                );
        }
        self.shed.inc();
        Problem::shed("overloaded", "Too many orders in progress", 1).detail(
            "orders are coming in faster than they can be confirmed; retry in a second with the same Idempotency-Key",
        )
    }
}

/// Which pending orders a broker outage excuses: those pending when the broker came back,
/// fewer as they end (never more than are pending), none [`EXCUSED_FOR`] after its return.
#[derive(Debug, Default)]
struct Excuse {
    away: bool,
    /// Orders excused, and until when.
    excused: Option<(i64, Instant)>,
}

impl Excuse {
    fn broker_away(&mut self) {
        self.away = true;
    }

    /// Pending orders were counted (`pending`) with the broker connected: how many of them are
    /// excused.
    fn counted(&mut self, pending: i64, now: Instant) -> i64 {
        if std::mem::take(&mut self.away) {
            self.excused = Some((pending, now + EXCUSED_FOR));
        }
        match &mut self.excused {
            Some((excused, until)) if now < *until => {
                *excused = (*excused).min(pending);
                *excused
            }
            _ => {
                self.excused = None;
                0
            }
        }
    }
}

/// A placement was not let in; [`Admission::shed`] turns it into the refusal, unless its key
/// may be looked up and names an order let in before, whose answer it gets instead.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct Overloaded {
    outbox_full: bool,
    may_recall: bool,
}

impl Overloaded {
    /// Whether the refused request's key may be looked up ([`RECALLS_PER_SECOND`]).
    pub fn may_recall(&self) -> bool {
        self.may_recall
    }
}

/// The query admission control runs every [`SAMPLE_EVERY`].
pub const COUNT_PENDING: &str = "SELECT count(*) FROM orders WHERE status = 'pending'";

/// Counts pending orders on a connection of its own, on which the planner uses neither bitmap
/// nor sequential scans (see the module documentation); reopened after a failure.
#[derive(Debug)]
pub struct PendingCounter {
    options: PgConnectOptions,
    connection: Option<PgConnection>,
}

impl PendingCounter {
    pub fn new(pool: &PgPool) -> Self {
        let options = pool
            .connect_options()
            .as_ref()
            .clone()
            .options([("enable_bitmapscan", "off"), ("enable_seqscan", "off")]);
        Self {
            options,
            connection: None,
        }
    }

    /// The connection, opened if need be.
    pub async fn connection(&mut self) -> sqlx::Result<&mut PgConnection> {
        if self.connection.is_none() {
            self.connection = Some(PgConnection::connect_with(&self.options).await?);
        }
        Ok(self.connection.as_mut().expect("just opened"))
    }

    pub async fn count(&mut self) -> sqlx::Result<i64> {
        let result = sqlx::query_scalar(COUNT_PENDING)
            .fetch_one(self.connection().await?)
            .await;
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    pub async fn close(self) {
        if let Some(connection) = self.connection {
            let _ = connection.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(backlog: i64) -> Arc<Admission> {
        let config = AdmissionConfig {
            order_admission_backlog: backlog,
            order_outbox_limit: 1_000,
        };
        Admission::new(config, &mut Metrics::new())
    }

    #[test]
    fn orders_are_let_in_up_to_the_backlog_counting_those_let_in_since_the_count() {
        let admission = admission(10);
        admission.observe(8, 0, 0);
        assert!(admission.admit(false).is_ok(), "9 in progress");
        assert!(admission.admit(false).is_ok(), "10 in progress");
        let refused = admission.shed(admission.admit(false).unwrap_err());
        assert_eq!((refused.status, refused.retry_after), (503, Some(1)));
        assert!(refused.shed, "load shedding, not a broken instance");
        // A count that started after the two were let in sees them among the pending.
        admission.observe(9, 0, 2);
        assert!(admission.admit(false).is_ok(), "one confirmed meanwhile");
        assert!(admission.admit(false).is_err());
        assert!(
            admission.admit(true).is_err(),
            "a full writer refuses at once"
        );
    }

    #[test]
    fn refused_keys_are_looked_up_within_a_budget_only() {
        let admission = admission(1);
        admission.observe(1, 0, 0);
        let refusals: Vec<bool> = (0..=RECALLS_PER_SECOND)
            .map(|_| admission.admit(false).unwrap_err().may_recall())
            .collect();
        assert!(
            refusals[..RECALLS_PER_SECOND as usize]
                .iter()
                .all(|may| *may)
        );
        assert!(!refusals[RECALLS_PER_SECOND as usize], "past the budget");
    }

    #[test]
    fn a_backlog_of_zero_never_refuses() {
        let admission = admission(0);
        admission.observe(1_000_000, 0, 0);
        assert!(admission.admit(false).is_ok());
    }

    #[test]
    fn orders_pending_since_a_broker_outage_are_excused_until_they_end_or_the_excuse_lapses() {
        let (mut excuse, start) = (Excuse::default(), Instant::now());
        assert_eq!(excuse.counted(150, start), 0, "no outage: all count");
        excuse.broker_away();
        excuse.broker_away();
        let back = start + Duration::from_secs(20);
        assert_eq!(excuse.counted(800, back), 800, "pending when it returned");
        let later = back + Duration::from_millis(300);
        assert_eq!(excuse.counted(900, later), 800, "100 new ones count");
        assert_eq!(excuse.counted(120, later), 120, "the excused ones ended");
        assert_eq!(excuse.counted(300, later), 120, "it never grows back");
        assert_eq!(excuse.counted(300, back + EXCUSED_FOR), 0, "and lapses");
    }

    #[test]
    fn a_full_outbox_refuses_placements_as_load_shedding() {
        let admission = admission(0);
        admission.outbox_backlog.store(999, Ordering::Relaxed);
        assert!(admission.admit(false).is_ok());
        admission.outbox_backlog.store(1_000, Ordering::Relaxed);
        let refused = admission.shed(admission.admit(false).unwrap_err());
        assert_eq!((refused.status, refused.retry_after), (503, Some(5)));
        assert!(refused.shed);
        assert!(refused.kind.ends_with("outbox-full"), "{refused:?}");
    }
}
