//! Placing orders in groups: one transaction for the placements that arrive together.
//!
//! Every placement is an idempotency key, an order and its `order.placed` event, written
//! together. Written one request at a time, that is a transaction (and a WAL flush) per order;
//! here concurrent requests hand their placement to one task, which writes whatever has
//! arrived since its last transaction with three statements whatever their number: the keys
//! (skipping taken ones), the orders of the keys it claimed, their events. Under light load a
//! group is one placement, written at once; under heavy load groups grow and the database
//! commits far less often. A group that fails on something other than an outage is written
//! again one placement at a time, so one bad placement cannot fail the others.

use std::collections::HashSet;

use dockyard_messaging::{Envelope, outbox::Handoff};
use serde_json::Value;
use sqlx::{PgPool, types::Json};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{Order, OrderCounts, Placed, StoreError, recall};

/// Placements written in one transaction at most.
const GROUP: usize = 128;
/// Placements waiting for the writer at most; beyond, callers wait to hand theirs over.
pub const QUEUE: usize = 1024;

/// A placement handed to the writer.
#[derive(Debug)]
pub struct Placement {
    pub key: String,
    pub request: Value,
    pub order: Order,
    pub event: Envelope,
    /// Seconds after `created_at` the order is due for the saga's deadline.
    pub timeout_secs: f64,
    pub answer: oneshot::Sender<Result<Placed, StoreError>>,
}

/// Starts the writer on the current runtime; placements go through the returned sender, and
/// the events of the placements it commits to `handoff`.
pub fn start(pool: PgPool, handoff: Handoff, counts: OrderCounts) -> mpsc::Sender<Placement> {
    let (sender, mut receiver) = mpsc::channel::<Placement>(QUEUE);
    tokio::spawn(async move {
        let writer = Writer {
            pool,
            handoff,
            counts,
        };
        let mut group = Vec::with_capacity(GROUP);
        while receiver.recv_many(&mut group, GROUP).await > 0 {
            writer.write(std::mem::take(&mut group)).await;
        }
    });
    sender
}

/// The writer's database, and its relay.
struct Writer {
    pool: PgPool,
    handoff: Handoff,
    counts: OrderCounts,
}

impl Writer {
    /// Writes a group and answers every placement of it.
    async fn write(&self, group: Vec<Placement>) {
        let pool = &self.pool;
        // A key twice in one group: the first is written, the others learn its answer after.
        let mut seen = HashSet::new();
        let (first, again): (Vec<Placement>, Vec<Placement>) = group
            .into_iter()
            .partition(|placement| seen.insert(placement.key.clone()));
        match self.write_group(&first).await {
            Ok(claimed) => {
                for placement in first {
                    if claimed.contains(&placement.order.id) {
                        let order = placement.order;
                        let _ = placement.answer.send(Ok(Placed::Created(order)));
                    } else {
                        answer_from_key(pool, placement).await;
                    }
                }
            }
            Err(error) if dockyard_runtime::database::is_transient(&error) => {
                for placement in first {
                    let _ = placement
                        .answer
                        .send(Err(StoreError::Database(clone_error(&error))));
                }
            }
            Err(error) if first.len() > 1 => {
                tracing::warn!(%error, placements = first.len(), "a group of placements failed; writing them one by one");
                for placement in first {
                    Box::pin(self.write(vec![placement])).await;
                }
            }
            Err(error) => {
                if let Some(placement) = first.into_iter().next() {
                    let _ = placement.answer.send(Err(StoreError::Database(error)));
                }
            }
        }
        for placement in again {
            answer_from_key(pool, placement).await;
        }
    }

    /// The three statements of a group; returns the ids of the orders written (their keys were
    /// free).
    async fn write_group(&self, group: &[Placement]) -> sqlx::Result<HashSet<Uuid>> {
        let keys: Vec<&str> = group.iter().map(|p| p.key.as_str()).collect();
        let requests: Vec<Json<&Value>> = group.iter().map(|p| Json(&p.request)).collect();
        let responses: Vec<Json<&Order>> = group.iter().map(|p| Json(&p.order)).collect();
        let ids: Vec<Uuid> = group.iter().map(|p| p.order.id).collect();
        let customers: Vec<Uuid> = group.iter().map(|p| p.order.customer_id).collect();
        let lines: Vec<Json<&Vec<crate::domain::Line>>> =
            group.iter().map(|p| Json(&p.order.lines)).collect();
        let totals: Vec<Option<i64>> = group
            .iter()
            .map(|p| p.order.total.as_ref().map(|t| t.amount_minor))
            .collect();
        let currencies: Vec<Option<&str>> = group
            .iter()
            .map(|p| p.order.total.as_ref().map(|t| t.currency.as_str()))
            .collect();
        let created: Vec<time::OffsetDateTime> = group.iter().map(|p| p.order.created_at).collect();
        let timeouts: Vec<f64> = group.iter().map(|p| p.timeout_secs).collect();
        let events: Vec<Uuid> = group.iter().map(|p| p.event.id).collect();
        let mut transaction = self.pool.begin().await?;
        let written: Vec<Uuid> = sqlx::query_scalar(
            "WITH claimed AS (
             INSERT INTO idempotency_keys (key, request, status, response)
             SELECT k.key, k.request, 202, k.response
             FROM unnest($1::text[], $2::jsonb[], $3::jsonb[]) AS k(key, request, response)
             ON CONFLICT DO NOTHING RETURNING key)
         INSERT INTO orders (id, customer_id, status, lines, total_minor, currency,
                             created_at, updated_at, due_at, placed_event)
         SELECT o.id, o.customer_id, 'pending', o.lines, o.total, o.currency,
                o.created, o.created, o.created + make_interval(secs => o.timeout), o.event
         FROM unnest($1::text[], $4::uuid[], $5::uuid[], $6::jsonb[], $7::bigint[], $8::text[],
                     $9::timestamptz[], $10::float8[], $11::uuid[])
              AS o(key, id, customer_id, lines, total, currency, created, timeout, event)
         JOIN claimed ON claimed.key = o.key
         RETURNING id",
        )
        .bind(&keys)
        .bind(&requests)
        .bind(&responses)
        .bind(&ids)
        .bind(&customers)
        .bind(&lines)
        .bind(&totals)
        .bind(&currencies)
        .bind(&created)
        .bind(&timeouts)
        .bind(&events)
        .fetch_all(&mut *transaction)
        .await?;
        let written: HashSet<Uuid> = written.into_iter().collect();
        let placed: Vec<Envelope> = group
            .iter()
            .filter(|p| written.contains(&p.order.id))
            .map(|p| p.event.clone())
            .collect();
        let placed = self.handoff.enqueue(&mut transaction, placed).await?;
        transaction.commit().await?;
        self.handoff.committed(placed);
        self.counts.add(None, written.len() as u64);
        Ok(written)
    }
}

/// A placement whose key was taken: the key's earlier answer, or "reused".
async fn answer_from_key(pool: &PgPool, placement: Placement) {
    let answer = async {
        let mut connection = pool.acquire().await?;
        recall(&mut connection, &placement.key, &placement.request).await
    }
    .await
    .map(|earlier| earlier.unwrap_or(Placed::KeyReused))
    .map_err(StoreError::Database);
    let _ = placement.answer.send(answer);
}

/// sqlx errors are not `Clone`; a group's outage is told to each of its callers.
fn clone_error(error: &sqlx::Error) -> sqlx::Error {
    match error {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        other => sqlx::Error::Io(std::io::Error::other(other.to_string())),
    }
}
