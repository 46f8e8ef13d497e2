//! Orders in PostgreSQL: placing (with its idempotency key and its `order.placed` event in one
//! transaction, grouped with the placements that arrive together: [`placer`]), reading,
//! cancelling, and the saga's transitions (confirm, reject, the deadline). The only writer of
//! `orders` and `idempotency_keys`.

mod placer;

use std::{collections::HashSet, time::Duration};

use anyhow::Context;
use dockyard_contracts::{OrderCancelled, OrderLine, OrderPlaced, SagaEvent};
use dockyard_messaging::{Envelope, outbox};
use dockyard_runtime::database::{self, Database, DatabaseConfig};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, types::Json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::{Line, NewOrder, Status},
    migrators,
};
use prometheus_client::metrics::{counter::Counter, family::Family};

/// An order as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Order {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub status: Status,
    /// Why it was rejected.
    pub reason: Option<String>,
    pub lines: Vec<Line>,
    /// Known once priced: at placement when the catalog answered, else when stock is reserved.
    pub total: Option<Total>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The order's total, in minor units of `currency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Total {
    #[schema(minimum = 0)]
    pub amount_minor: i64,
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    customer_id: Uuid,
    status: Status,
    reason: Option<String>,
    lines: Json<Vec<Line>>,
    total_minor: Option<i64>,
    currency: Option<String>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl From<OrderRow> for Order {
    fn from(row: OrderRow) -> Self {
        Self {
            id: row.id,
            customer_id: row.customer_id,
            status: row.status,
            reason: row.reason,
            lines: row.lines.0,
            total: row
                .total_minor
                .zip(row.currency)
                .map(|(amount_minor, currency)| Total {
                    amount_minor,
                    currency,
                }),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// The outcome of placing with an idempotency key.
#[derive(Debug)]
pub enum Placed {
    /// A new order.
    Created(Order),
    /// The key was used before with the same request: its original response.
    Replayed { status: u16, body: Value },
    /// The key was used before with another request.
    KeyReused,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("order {0} does not exist")]
    NotFound(Uuid),
    #[error("a {} order cannot be cancelled", .0.as_str())]
    IllegalTransition(Status),
    #[error("database failure")]
    Database(#[from] sqlx::Error),
}

/// `dockyard_order_orders_total{status}`: orders that reached each status (`placed` for
/// those accepted), counted by this process as it moves them (a transaction that fails after
/// counting, in a database outage mid-commit, may count its orders twice). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct OrderCounts(Family<StatusLabel, Counter>);

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct StatusLabel {
    status: &'static str,
}

impl OrderCounts {
    /// Registers `dockyard_order_orders_total`.
    pub fn register(&self, metrics: &mut dockyard_runtime::metrics::Metrics) {
        metrics.register(
            "order_orders",
            "Orders that reached each status (placed: accepted), counted by this process",
            self.0.clone(),
        );
    }

    /// `count` more orders reached `status` (`None`: were placed).
    pub fn add(&self, status: Option<Status>, count: u64) {
        if count > 0 {
            let status = status.map_or("placed", Status::as_str);
            self.0.get_or_create(&StatusLabel { status }).inc_by(count);
        }
    }
}

/// Orders in the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct OrderStore {
    database: Database,
    /// A new order is due (for the saga's deadline) this long after its placement.
    pending_timeout: Duration,
    /// The writer of placements.
    placer: tokio::sync::mpsc::Sender<placer::Placement>,
    counts: OrderCounts,
}

impl OrderStore {
    /// Call from the main runtime: the writer of placements runs there, and hands the
    /// `order.placed` events it commits to `handoff` (the process's outbox relay).
    pub fn new(
        database: Database,
        handoff: outbox::Handoff,
        pending_timeout: Duration,
        counts: OrderCounts,
    ) -> Self {
        Self {
            placer: placer::start(database.pool().clone(), handoff, counts.clone()),
            database,
            pending_timeout,
            counts,
        }
    }

    /// Whether this process's writer has more placements waiting than it can write soon
    /// (a quarter of its queue): admission control refuses new ones at once then.
    pub fn queue_full(&self) -> bool {
        self.placer.capacity() < placer::QUEUE * 3 / 4
    }

    /// What an earlier request with this key got, if any.
    pub async fn recall(&self, key: &str, request: &Value) -> Result<Option<Placed>, StoreError> {
        let (key, request) = (key.to_owned(), request.clone());
        Ok(self
            .database
            .run("SELECT idempotency_keys", move |pool| async move {
                let mut connection = pool.acquire().await?;
                recall(&mut connection, &key, &request).await
            })
            .await?)
    }

    /// Places `order` under `key`: the key, the order and its `order.placed` event are written
    /// in one transaction. A concurrent request with the same key waits for this one and then
    /// replays its response, so duplicates create one order.
    #[tracing::instrument(
        name = "INSERT orders",
        skip_all,
        fields(
            otel.kind = "client",
            db.system.name = "postgresql",
            customer_id = %order.customer_id,
            order.id = tracing::field::Empty,
        )
    )]
    pub async fn place(
        &self,
        key: &str,
        request: &Value,
        order: &NewOrder,
        total: Option<Total>,
    ) -> Result<Placed, StoreError> {
        let now = OffsetDateTime::now_utc();
        // PostgreSQL keeps microseconds: the answer must equal what a later GET shows.
        let now = now
            .replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
            .expect("a whole number of microseconds is a valid nanosecond");
        // The order as it is answered and stored, built here: the writer stores it as is.
        let created = Order {
            id: Uuid::now_v7(),
            customer_id: order.customer_id,
            status: Status::Pending,
            reason: None,
            lines: order.lines.clone(),
            total,
            created_at: now,
            updated_at: now,
        };
        tracing::Span::current().record("order.id", tracing::field::display(created.id));
        // In this span's trace: the catalog's handling of it continues the request's trace.
        let event = placed_event(created.id, &created.lines);
        let (answer, answered) = tokio::sync::oneshot::channel();
        let placement = placer::Placement {
            key: key.to_owned(),
            request: request.clone(),
            order: created,
            event,
            timeout_secs: self.pending_timeout.as_secs_f64(),
            answer,
        };
        if self.placer.send(placement).await.is_err() {
            return Err(StoreError::Database(sqlx::Error::PoolClosed));
        }
        answered
            .await
            .unwrap_or(Err(StoreError::Database(sqlx::Error::PoolClosed)))
    }

    pub async fn get(&self, id: Uuid) -> Result<Order, StoreError> {
        self.database
            .run("SELECT orders", move |pool| async move {
                sqlx::query_as::<_, OrderRow>("SELECT * FROM orders WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&pool)
                    .await
            })
            .await?
            .map(Order::from)
            .ok_or(StoreError::NotFound(id))
    }

    /// A customer's orders after `after`, oldest first, at most `limit`.
    pub async fn of_customer(
        &self,
        customer_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<Order>, StoreError> {
        let rows = self
            .database
            .run("SELECT orders", move |pool| async move {
                sqlx::query_as::<_, OrderRow>(
                    "SELECT * FROM orders
                     WHERE customer_id = $1 AND ($2::uuid IS NULL OR id > $2)
                     ORDER BY id LIMIT $3",
                )
                .bind(customer_id)
                .bind(after)
                .bind(limit)
                .fetch_all(&pool)
                .await
            })
            .await?;
        Ok(rows.into_iter().map(Order::from).collect())
    }

    /// Cancels a pending or confirmed order and publishes `order.cancelled` (the catalog
    /// releases the stock).
    #[tracing::instrument(skip(self))]
    pub async fn cancel(&self, id: Uuid) -> Result<Order, StoreError> {
        let cancelled = self
            .database
            .run("UPDATE orders", move |pool| async move {
                let mut transaction = pool.begin().await?;
                let status: Option<Status> =
                    sqlx::query_scalar("SELECT status FROM orders WHERE id = $1 FOR UPDATE")
                        .bind(id)
                        .fetch_optional(&mut *transaction)
                        .await?;
                let status = match status {
                    None => return Ok(Err(StoreError::NotFound(id))),
                    Some(status) if !status.can_cancel() => {
                        return Ok(Err(StoreError::IllegalTransition(status)));
                    }
                    Some(status) => status,
                };
                let row: OrderRow = sqlx::query_as(
                    "UPDATE orders SET status = 'cancelled', updated_at = now() WHERE id = $1 RETURNING *",
                )
                .bind(id)
                .fetch_one(&mut *transaction)
                .await?;
                let cancelled = SagaEvent::OrderCancelled(OrderCancelled { order_id: id, reason: None });
                outbox::enqueue(&mut transaction, &cancelled.envelope()).await?;
                transaction.commit().await?;
                tracing::info!(was = status.as_str(), "order cancelled");
                Ok::<_, sqlx::Error>(Ok(Order::from(row)))
            })
            .await?;
        if cancelled.is_ok() {
            self.counts.add(Some(Status::Cancelled), 1);
        }
        cancelled
    }
}

/// The saga's verdict on pending orders: `stock.reserved` confirms each at the catalog's
/// prices, with one statement; returns how many moved (an order no longer pending is left).
pub async fn confirm_many(
    transaction: &mut PgConnection,
    confirmations: &[(Uuid, Vec<Line>, Total)],
) -> sqlx::Result<u64> {
    if confirmations.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = confirmations.iter().map(|c| c.0).collect();
    let lines: Vec<Json<&Vec<Line>>> = confirmations.iter().map(|c| Json(&c.1)).collect();
    let totals: Vec<i64> = confirmations.iter().map(|c| c.2.amount_minor).collect();
    let currencies: Vec<&str> = confirmations
        .iter()
        .map(|c| c.2.currency.as_str())
        .collect();
    Ok(sqlx::query(
        "UPDATE orders o SET status = 'confirmed', lines = r.lines, total_minor = r.total,
                             currency = r.currency, reason = NULL, updated_at = now()
         FROM unnest($1::uuid[], $2::jsonb[], $3::bigint[], $4::text[])
              AS r(id, lines, total, currency)
         WHERE o.id = r.id AND o.status = 'pending'",
    )
    .bind(&ids)
    .bind(&lines)
    .bind(&totals)
    .bind(&currencies)
    .execute(transaction)
    .await?
    .rows_affected())
}

/// [`reject`] for many orders with one statement; returns how many moved.
pub async fn reject_many(
    transaction: &mut PgConnection,
    rejections: &[(Uuid, String)],
) -> sqlx::Result<u64> {
    if rejections.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rejections.iter().map(|r| r.0).collect();
    let reasons: Vec<&str> = rejections.iter().map(|r| r.1.as_str()).collect();
    Ok(sqlx::query(
        "UPDATE orders o SET status = 'rejected', reason = r.reason, updated_at = now()
         FROM unnest($1::uuid[], $2::text[]) AS r(id, reason)
         WHERE o.id = r.id AND o.status = 'pending'",
    )
    .bind(&ids)
    .bind(&reasons)
    .execute(transaction)
    .await?
    .rows_affected())
}

/// Rejects a pending order with `reason`. `false` when it was no longer pending.
pub async fn reject(
    transaction: &mut PgConnection,
    order_id: Uuid,
    reason: &str,
) -> sqlx::Result<bool> {
    let moved = sqlx::query(
        "UPDATE orders SET status = 'rejected', reason = $2, updated_at = now()
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(order_id)
    .bind(reason)
    .execute(transaction)
    .await?
    .rows_affected();
    Ok(moved == 1)
}

/// Rejects a pending order whose saga step was given up on, and publishes `order.cancelled`
/// so that whatever the catalog reserved for it is released. `false` when it was no longer
/// pending.
pub async fn reject_and_compensate(
    transaction: &mut PgConnection,
    order_id: Uuid,
    reason: &str,
) -> sqlx::Result<bool> {
    if !reject(transaction, order_id, reason).await? {
        return Ok(false);
    }
    let cancelled = SagaEvent::OrderCancelled(OrderCancelled {
        order_id,
        reason: Some(reason.to_owned()),
    });
    outbox::enqueue(transaction, &cancelled.envelope()).await?;
    Ok(true)
}

/// `order.placed` for an order of `lines`.
fn placed_event(order_id: Uuid, lines: &[Line]) -> Envelope {
    let lines = lines
        .iter()
        .map(|line| OrderLine {
            product_id: line.product_id,
            quantity: line.quantity,
        })
        .collect();
    SagaEvent::OrderPlaced(OrderPlaced { order_id, lines }).envelope()
}

/// A due order: id, lines, placements so far, the id of its `order.placed`.
type DueRow = (Uuid, Json<Vec<Line>>, i16, Option<Uuid>);

/// What the deadline did to one due order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// `order.placed` has not left the outbox yet (the broker is away): the deadline starts
    /// again, and the order keeps every re-publication it has left.
    StillInOutbox,
    /// `order.placed` published again, with a new deadline.
    Republished,
    /// Rejected with reason `timeout`, and compensated.
    TimedOut,
}

/// Handles up to `limit` pending orders whose deadline has passed, in one transaction: each
/// gets its placement event published again (the same event, same id) while it has had at most
/// `republish` re-publications, else it is rejected (`timeout`) and compensated — unless its
/// placement event still waits in the outbox: an order the catalog could not have heard of yet
/// (the broker is away) is neither re-published nor rejected, only given a new deadline. Rows
/// are claimed with `SKIP LOCKED`, so every instance may run this at once.
pub async fn sweep_due(
    pool: &sqlx::PgPool,
    limit: i64,
    republish: u32,
    timeout: Duration,
) -> sqlx::Result<Vec<(Uuid, Deadline)>> {
    let mut transaction = pool.begin().await?;
    let due: Vec<DueRow> = sqlx::query_as(
        "SELECT id, lines, placements, placed_event FROM orders
         WHERE status = 'pending' AND due_at <= now()
         ORDER BY due_at LIMIT $1
         FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *transaction)
    .await?;
    let events: Vec<Uuid> = due.iter().filter_map(|row| row.3).collect();
    let unsent: HashSet<Uuid> = sqlx::query_scalar("SELECT id FROM outbox WHERE id = ANY($1)")
        .bind(&events)
        .fetch_all(&mut *transaction)
        .await?
        .into_iter()
        .collect();
    let mut done = Vec::with_capacity(due.len());
    for (order_id, Json(lines), placements, placed_id) in due {
        if placed_id.is_some_and(|id| unsent.contains(&id)) {
            sqlx::query(
                "UPDATE orders SET due_at = now() + make_interval(secs => $2) WHERE id = $1",
            )
            .bind(order_id)
            .bind(timeout.as_secs_f64())
            .execute(&mut *transaction)
            .await?;
            done.push((order_id, Deadline::StillInOutbox));
            continue;
        }
        let republications = u32::try_from(placements).unwrap_or(1).saturating_sub(1);
        if republications < republish {
            sqlx::query(
                "UPDATE orders SET placements = placements + 1,
                                   due_at = now() + make_interval(secs => $2)
                 WHERE id = $1",
            )
            .bind(order_id)
            .bind(timeout.as_secs_f64())
            .execute(&mut *transaction)
            .await?;
            // The same event again (its id kept): a catalog that handled it ignores it (no
            // second answer to load the saga while it is merely slow); one that never got it
            // answers now. Orders placed before their event's id was kept get a new one.
            let mut placed = placed_event(order_id, &lines);
            if let Some(id) = placed_id {
                placed.id = id;
            }
            outbox::publish_again(&mut transaction, &placed).await?;
            done.push((order_id, Deadline::Republished));
        } else {
            reject_and_compensate(&mut transaction, order_id, "timeout").await?;
            done.push((order_id, Deadline::TimedOut));
        }
    }
    transaction.commit().await?;
    Ok(done)
}

/// An idempotency key's row: the request, and the response status and body once answered.
type KeyRow = (Json<Value>, Option<i16>, Option<Json<Value>>);

pub(crate) async fn recall(
    connection: &mut PgConnection,
    key: &str,
    request: &Value,
) -> Result<Option<Placed>, sqlx::Error> {
    let row: Option<KeyRow> =
        sqlx::query_as("SELECT request, status, response FROM idempotency_keys WHERE key = $1")
            .bind(key)
            .fetch_optional(connection)
            .await?;
    Ok(row.map(|(Json(original), status, response)| {
        match (original == *request, status, response) {
            (true, Some(status), Some(Json(body))) => Placed::Replayed {
                status: u16::try_from(status).unwrap_or(202),
                body,
            },
            _ => Placed::KeyReused,
        }
    }))
}

/// `order migrate`: applies the embedded migrations.
pub async fn migrate(config: &DatabaseConfig) -> anyhow::Result<()> {
    let pool = database::connect(config)
        .await
        .with_context(|| format!("connecting to {}", config.database_url))?;
    database::migrate(&pool, &migrators()).await?;
    pool.close().await;
    Ok(())
}
