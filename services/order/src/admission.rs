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

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use actix_web::http::StatusCode;
use dockyard_runtime::{metrics::Metrics, problem::Problem};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use serde::Deserialize;
use sqlx::{Connection, PgConnection, PgPool, postgres::PgConnectOptions};
use tokio_util::sync::CancellationToken;

/// `ORDER_ADMISSION_BACKLOG`.
#[derive(Debug, Clone, Deserialize)]
pub struct AdmissionConfig {
    /// Orders in progress (pending) at most before new ones are refused (`0`: never refuse).
    #[serde(default = "default_backlog")]
    pub order_admission_backlog: i64,
}

fn default_backlog() -> i64 {
    200
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
    shed: Counter,
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
            shed: Counter::default(),
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
            "order_pending",
            "Orders pending (in the saga), as last counted",
            admission.pending_gauge.clone(),
        );
        admission
    }

    /// Counts the orders in progress until `shutdown`.
    pub async fn run(self: Arc<Self>, pool: PgPool, shutdown: CancellationToken) {
        if self.config.order_admission_backlog == 0 {
            return;
        }
        let mut counter = PendingCounter::new(&pool);
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let counted_from = self.let_in.load(Ordering::Relaxed);
            // Unknown (the database is away): placements will find out for themselves.
            let Ok(pending) = counter.count().await else {
                continue;
            };
            self.observe(pending, counted_from);
        }
        counter.close().await;
    }

    /// A count of `pending`, from a query started when `counted_from` orders had been let in.
    fn observe(&self, pending: i64, counted_from: i64) {
        self.pending.store(pending, Ordering::Relaxed);
        self.let_in.fetch_sub(counted_from, Ordering::Relaxed);
        self.pending_gauge.set(pending);
    }

    /// `Ok` to take a placement; [`Overloaded`] while the saga has its backlog of orders in
    /// progress or this process's writer is full (`queue_full`).
    pub fn admit(&self, queue_full: bool) -> Result<(), Overloaded> {
        let limit = self.config.order_admission_backlog;
        let in_progress =
            self.pending.load(Ordering::Relaxed) + self.let_in.load(Ordering::Relaxed);
        if !queue_full && (limit == 0 || in_progress < limit) {
            self.let_in.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Err(Overloaded {
            may_recall: self.recalls.check().is_ok(),
        })
    }

    /// Refuses a placement [`admit`](Self::admit) did not let in, counting it as shed: `503`
    /// with `Retry-After`.
    pub fn shed(&self, _: Overloaded) -> Problem {
        self.shed.inc();
        Problem::of_kind(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Too many orders in progress",
        )
        .detail(
            "orders are coming in faster than they can be confirmed; retry in a second with the same Idempotency-Key",
        )
        .retry_after(1)
    }
}

/// A placement was not let in; [`Admission::shed`] turns it into the refusal, unless its key
/// may be looked up and names an order let in before, whose answer it gets instead.
#[derive(Debug)]
#[must_use]
pub struct Overloaded {
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
        };
        Admission::new(config, &mut Metrics::new())
    }

    #[test]
    fn orders_are_let_in_up_to_the_backlog_counting_those_let_in_since_the_count() {
        let admission = admission(10);
        admission.observe(8, 0);
        assert!(admission.admit(false).is_ok(), "9 in progress");
        assert!(admission.admit(false).is_ok(), "10 in progress");
        let refused = admission.shed(admission.admit(false).unwrap_err());
        assert_eq!((refused.status, refused.retry_after), (503, Some(1)));
        // A count that started after the two were let in sees them among the pending.
        admission.observe(9, 2);
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
        admission.observe(1, 0);
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
        admission.observe(1_000_000, 0);
        assert!(admission.admit(false).is_ok());
    }
}
