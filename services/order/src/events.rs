//! What the order service publishes (`order.placed`, `order.cancelled`, through the outbox in
//! [`crate::store`]) and how it moves orders on when the catalog answers.
//!
//! `stock.reserved` confirms a pending order with the catalog's authoritative prices and
//! total; `stock.rejected` rejects it with the reason. An order that is no longer pending
//! (cancelled, or rejected by the deadline, meanwhile) is left as it is: its `order.cancelled`
//! makes the catalog release whatever it reserved.
//!
//! A stock event given up on ([`Handler::compensate`]) rejects the order with the reason and
//! publishes `order.cancelled`, so a reservation the order will never use is released: the
//! order still ends, and the stock with it.
//!
//! [`Deadline`] is the saga's clock: an order still pending `ORDER_PENDING_TIMEOUT` after its
//! placement has `order.placed` published again (the catalog answers a placement it saw before
//! with the same answer), up to `ORDER_PENDING_REPUBLISH` times; then it is rejected with
//! reason `timeout` and compensated the same way. So every accepted order reaches a final
//! state, even when its events were dead-lettered.

use std::time::Duration;

use dockyard_contracts::SagaEvent;
use dockyard_messaging::{
    Compensation, Envelope, Handler, HandlerError, HandlerFuture, consumer::Caused,
};
use dockyard_runtime::metrics::Metrics;
use prometheus_client::metrics::counter::Counter;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    config::SagaConfig,
    domain::{Line, Status},
    store::{self, Total},
};

/// The order service's handler of stock events; counts the orders it moves.
#[derive(Debug, Clone)]
pub struct StockEvents {
    pub counts: store::OrderCounts,
}

/// What a stock event asks of the orders table.
enum Verdict {
    Confirm(Uuid, Vec<Line>, Total),
    Reject(Uuid, String),
}

/// Reads an envelope into its verdict: the payload is parsed here, once, into the contract.
fn verdict(envelope: &Envelope) -> Result<Verdict, HandlerError> {
    match SagaEvent::try_from(envelope) {
        Ok(SagaEvent::StockReserved(reserved)) => {
            let lines = reserved
                .lines
                .iter()
                .map(|line| Line {
                    product_id: line.product_id,
                    quantity: line.quantity,
                    unit_price_minor: Some(line.unit_price_minor),
                })
                .collect();
            let total = Total {
                amount_minor: reserved.total_minor,
                currency: reserved.currency,
            };
            Ok(Verdict::Confirm(reserved.order_id, lines, total))
        }
        Ok(SagaEvent::StockRejected(rejected)) => {
            Ok(Verdict::Reject(rejected.order_id, rejected.reason))
        }
        Ok(other) => Err(HandlerError::Permanent(format!(
            "{} is not an event for the order service",
            other.routing_key()
        ))),
        Err(error) => Err(HandlerError::Permanent(error.to_string())),
    }
}

impl Handler for StockEvents {
    fn understands(&self, envelope: &Envelope) -> bool {
        dockyard_contracts::understands(envelope, dockyard_contracts::ORDER)
    }

    fn handle<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        envelope: &'a Envelope,
    ) -> HandlerFuture<'a, Result<Caused, HandlerError>> {
        self.handle_batch(transaction, std::slice::from_ref(envelope))
    }

    /// Stock events of many orders: confirmed with one statement, rejected with another. An
    /// order no longer pending (cancelled, or rejected by the deadline, meanwhile) is left as
    /// it is.
    fn handle_batch<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        envelopes: &'a [Envelope],
    ) -> HandlerFuture<'a, Result<Caused, HandlerError>> {
        Box::pin(async move {
            let (mut confirmations, mut rejections) = (Vec::new(), Vec::new());
            for envelope in envelopes {
                match verdict(envelope)? {
                    Verdict::Confirm(order_id, lines, total) => {
                        confirmations.push((order_id, lines, total));
                    }
                    Verdict::Reject(order_id, reason) => rejections.push((order_id, reason)),
                }
            }
            let confirmed = store::confirm_many(transaction, &confirmations).await?;
            let rejected = store::reject_many(transaction, &rejections).await?;
            self.counts.add(Some(Status::Confirmed), confirmed);
            self.counts.add(Some(Status::Rejected), rejected);
            let moved = confirmed + rejected;
            let left = (confirmations.len() + rejections.len()) as u64 - moved;
            if left > 0 {
                tracing::info!(
                    left,
                    "stock events for orders no longer pending; left as they are"
                );
            }
            Ok(Vec::new())
        })
    }

    fn compensate<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        envelope: &'a Envelope,
        reason: &'a str,
    ) -> HandlerFuture<'a, Result<Compensation, sqlx::Error>> {
        Box::pin(async move {
            let order_id = envelope.correlation_id;
            let why = format!("the catalog's answer could not be applied: {reason}");
            if store::reject_and_compensate(transaction, order_id, &why).await? {
                self.counts.add(Some(Status::Rejected), 1);
                tracing::warn!(%order_id, reason, "order rejected and compensated");
            }
            Ok(Compensation::Settled)
        })
    }
}

/// The saga's deadline, run by every instance (rows are claimed with `SKIP LOCKED`).
#[derive(Debug, Clone)]
pub struct Deadline {
    pool: PgPool,
    config: SagaConfig,
    republished: Counter,
    timed_out: Counter,
    counts: store::OrderCounts,
}

/// Due orders handled per transaction.
const SWEEP_BATCH: i64 = 100;

impl Deadline {
    /// Registers its metrics: `dockyard_order_saga_republished_total`,
    /// `dockyard_order_saga_timeouts_total`.
    pub fn new(
        pool: PgPool,
        config: SagaConfig,
        counts: store::OrderCounts,
        metrics: &mut Metrics,
    ) -> Self {
        let (republished, timed_out) = (Counter::default(), Counter::default());
        metrics.register(
            "order_saga_republished",
            "Placements published again because the saga did not answer in time",
            republished.clone(),
        );
        metrics.register(
            "order_saga_timeouts",
            "Orders rejected with reason timeout after their last re-publication",
            timed_out.clone(),
        );
        Self {
            pool,
            config,
            republished,
            timed_out,
            counts,
        }
    }

    /// How often due orders are looked for: a fifth of the timeout, within 50 ms to 5 s.
    fn interval(&self) -> Duration {
        (self.config.order_pending_timeout / 5)
            .clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    /// Sweeps until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => self.sweep().await,
            }
        }
        tracing::info!("saga deadline stopped");
    }

    async fn sweep(&self) {
        loop {
            let swept = store::sweep_due(
                &self.pool,
                SWEEP_BATCH,
                self.config.order_pending_republish,
                self.config.order_pending_timeout,
            )
            .await;
            match swept {
                Ok(done) => {
                    for (order_id, what) in &done {
                        match what {
                            store::Deadline::StillInOutbox => {
                                tracing::debug!(%order_id, "order still pending at its deadline, its placement still in the outbox; deadline renewed");
                            }
                            store::Deadline::Republished => {
                                self.republished.inc();
                                tracing::warn!(%order_id, "order still pending at its deadline; placement published again");
                            }
                            store::Deadline::TimedOut => {
                                self.timed_out.inc();
                                self.counts.add(Some(Status::Rejected), 1);
                                tracing::warn!(%order_id, "order still pending after its last deadline; rejected (timeout)");
                            }
                        }
                    }
                    if done.len() < usize::try_from(SWEEP_BATCH).unwrap_or(usize::MAX) {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "saga deadline sweep failed; retried on the next tick");
                    return;
                }
            }
        }
    }
}
