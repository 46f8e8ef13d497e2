//! The catalog's side of the order saga in SQL: reservations, releases, and what it answered
//! to each order (`order_sagas`). Every function runs in the event handler's transaction; with
//! [`super::ProductStore`] these are the only writers of `products`, `reservations` and
//! `order_sagas`.
//!
//! Rows of one order are serialised by locking its `order_sagas` row first ([`lock`]); rows of
//! products are locked in id order, so concurrent reservations never deadlock and stock is
//! never oversold.

use std::collections::BTreeMap;

use dockyard_contracts::{PricedLine, SagaEvent, StockRejected, StockReserved};
use serde_json::Value;
use sqlx::{PgConnection, types::Json};
use uuid::Uuid;

use crate::domain::Stock;

/// A line of an order to reserve.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    pub product_id: Uuid,
    pub quantity: i32,
}

/// A reserved line at the catalog's price.
#[derive(Debug, Clone, Copy)]
pub struct Taken {
    pub product_id: Uuid,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

/// What a successful reservation took.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub lines: Vec<Taken>,
    pub total_minor: i64,
    pub currency: String,
}

/// What the catalog knows of an order: its earlier answer, and whether it was cancelled.
#[derive(Debug, Clone)]
pub struct OrderSaga {
    /// The reply already given to its placement.
    pub reply: Option<SagaEvent>,
    pub cancelled: bool,
}

/// A stored reply, read back into its event: a row this release cannot read is an error, not
/// an order without an answer.
fn stored_reply(
    kind: Option<String>,
    payload: Option<Json<Value>>,
) -> sqlx::Result<Option<SagaEvent>> {
    let Some((kind, Json(payload))) = kind.zip(payload) else {
        return Ok(None);
    };
    SagaEvent::from_parts(&kind, payload)
        .map(Some)
        .map_err(|error| sqlx::Error::Decode(Box::new(error)))
}

/// Locks the order's row (creating it if need be) and reads it. Every handler of the order's
/// events calls this first, so they apply one at a time.
pub async fn lock(transaction: &mut PgConnection, order_id: Uuid) -> sqlx::Result<OrderSaga> {
    // One statement: the row is created, or updated in place (which locks it), and read.
    let (reply_type, reply, cancelled): (Option<String>, Option<Json<Value>>, bool) =
        sqlx::query_as(
            "INSERT INTO order_sagas (order_id) VALUES ($1)
             ON CONFLICT (order_id) DO UPDATE SET order_id = EXCLUDED.order_id
             RETURNING reply_type, reply, cancelled_at IS NOT NULL",
        )
        .bind(order_id)
        .fetch_one(&mut *transaction)
        .await?;
    Ok(OrderSaga {
        reply: stored_reply(reply_type, reply)?,
        cancelled,
    })
}

/// Remembers `reply` as the answer given to its order's placement.
pub async fn record_reply(transaction: &mut PgConnection, reply: &SagaEvent) -> sqlx::Result<()> {
    sqlx::query("UPDATE order_sagas SET reply_type = $2, reply = $3 WHERE order_id = $1")
        .bind(reply.order_id())
        .bind(reply.routing_key())
        .bind(Json(reply.payload()))
        .execute(transaction)
        .await
        .map(drop)
}

/// Marks the order cancelled (keeping the first time and reason), so that a placement arriving
/// later reserves nothing. `reason` says why its stock could not be released, if so.
pub async fn record_cancellation(
    transaction: &mut PgConnection,
    order_id: Uuid,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE order_sagas SET cancelled_at = COALESCE(cancelled_at, now()),
                                cancel_reason = COALESCE($2, cancel_reason)
         WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(reason)
    .execute(transaction)
    .await
    .map(drop)
}

/// A product as a reservation sees it: its price and what is left of its stock, locked.
#[derive(Debug, Clone)]
struct Shelf {
    price_minor: i64,
    currency: String,
    stock: i32,
}

/// Locks the products of `ids`, in id order (so concurrent reservations never deadlock), and
/// reads their prices and stock.
async fn lock_shelves(
    transaction: &mut PgConnection,
    ids: &[Uuid],
) -> sqlx::Result<BTreeMap<Uuid, Shelf>> {
    let rows: Vec<(Uuid, i64, String, i32)> = sqlx::query_as(
        "SELECT id, price_minor, currency, stock FROM products
         WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(transaction)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, price_minor, currency, stock)| {
            (
                id,
                Shelf {
                    price_minor,
                    currency,
                    stock,
                },
            )
        })
        .collect())
}

/// The units of each product an order wants; `Err` for an order that cannot be reserved.
fn wanted(lines: &[Wanted]) -> Result<BTreeMap<Uuid, i32>, String> {
    let mut wanted: BTreeMap<Uuid, i32> = BTreeMap::new();
    for line in lines {
        if line.quantity <= 0 {
            return Err(format!(
                "quantity for product {} must be positive",
                line.product_id
            ));
        }
        let total = wanted.entry(line.product_id).or_default();
        *total = total
            .checked_add(line.quantity)
            .ok_or_else(|| format!("too many units of product {}", line.product_id))?;
    }
    if wanted.is_empty() {
        return Err("the order has no lines".to_owned());
    }
    Ok(wanted)
}

/// Takes an order's units from `shelves` (all or none): the reservation, or why not. Pure: the
/// caller writes what was taken.
fn take(
    wanted: &BTreeMap<Uuid, i32>,
    shelves: &mut BTreeMap<Uuid, Shelf>,
) -> Result<Reservation, String> {
    let mut lines = Vec::with_capacity(wanted.len());
    let mut currency: Option<&str> = None;
    let mut total_minor: i64 = 0;
    for (&product_id, &quantity) in wanted {
        let Some(shelf) = shelves.get(&product_id) else {
            return Err(format!("product {product_id} does not exist"));
        };
        if Stock::from_stored(shelf.stock)
            .and_then(|s| s.take(quantity))
            .is_none()
        {
            return Err(format!(
                "insufficient stock for product {product_id}: {quantity} requested, {} available",
                shelf.stock
            ));
        }
        if *currency.get_or_insert(&shelf.currency) != shelf.currency {
            return Err("the order mixes currencies".to_owned());
        }
        total_minor = shelf
            .price_minor
            .checked_mul(i64::from(quantity))
            .and_then(|line| total_minor.checked_add(line))
            .ok_or("the order's total is too large")?;
        lines.push(Taken {
            product_id,
            quantity,
            unit_price_minor: shelf.price_minor,
        });
    }
    let currency = currency.unwrap_or_default().to_owned();
    for line in &lines {
        if let Some(shelf) = shelves.get_mut(&line.product_id) {
            shelf.stock -= line.quantity;
        }
    }
    Ok(Reservation {
        lines,
        total_minor,
        currency,
    })
}

/// Writes what [`take`] took: every product's new stock, and every reservation, in one
/// statement.
async fn write_reservations(
    transaction: &mut PgConnection,
    shelves: &BTreeMap<Uuid, Shelf>,
    reservations: &[(Uuid, &Reservation)],
) -> sqlx::Result<()> {
    let touched: Vec<Uuid> = reservations
        .iter()
        .flat_map(|(_, reservation)| reservation.lines.iter().map(|line| line.product_id))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if touched.is_empty() {
        return Ok(());
    }
    let stocks: Vec<i32> = touched.iter().map(|id| shelves[id].stock).collect();
    let (mut orders, mut products, mut quantities) = (Vec::new(), Vec::new(), Vec::new());
    for (order_id, reservation) in reservations {
        for line in &reservation.lines {
            orders.push(*order_id);
            products.push(line.product_id);
            quantities.push(line.quantity);
        }
    }
    sqlx::query(
        "WITH taken AS (
             UPDATE products p SET stock = w.stock, version = p.version + 1, updated_at = now()
             FROM unnest($1::uuid[], $2::int[]) AS w(id, stock)
             WHERE p.id = w.id)
         INSERT INTO reservations (order_id, product_id, quantity)
         SELECT * FROM unnest($3::uuid[], $4::uuid[], $5::int[])",
    )
    .bind(&touched)
    .bind(&stocks)
    .bind(&orders)
    .bind(&products)
    .bind(&quantities)
    .execute(transaction)
    .await
    .map(drop)
}

/// A placement to answer, as [`answer_many`] takes it.
#[derive(Debug, Clone)]
pub struct Placement {
    pub order_id: Uuid,
    pub lines: Vec<Wanted>,
}

/// `stock.reserved` for what `reservation` took.
fn reserved_answer(order_id: Uuid, reservation: Reservation) -> SagaEvent {
    SagaEvent::StockReserved(StockReserved {
        order_id,
        lines: reservation
            .lines
            .iter()
            .map(|line| PricedLine {
                product_id: line.product_id,
                quantity: line.quantity,
                unit_price_minor: line.unit_price_minor,
            })
            .collect(),
        total_minor: reservation.total_minor,
        currency: reservation.currency,
    })
}

/// `stock.rejected`, saying why.
pub fn rejected_answer(order_id: Uuid, reason: String) -> SagaEvent {
    SagaEvent::StockRejected(StockRejected { order_id, reason })
}

/// An order's saga as `answer_many` reads it.
#[derive(sqlx::FromRow)]
struct SagaRow {
    order_id: Uuid,
    reply_type: Option<String>,
    reply: Option<Json<Value>>,
    cancelled: bool,
}

/// Answers many placements (of distinct orders) with a handful of statements whatever their
/// number: the orders' rows are locked and read in one, their products in one, the stock and
/// reservations written in one, the new answers remembered in one. Each order gets the answer
/// it got before if it had one, a refusal if it was cancelled, else is reserved in turn against
/// what the orders before it in `placements` left.
pub async fn answer_many(
    transaction: &mut PgConnection,
    placements: &[Placement],
) -> sqlx::Result<Vec<SagaEvent>> {
    let mut ids: Vec<Uuid> = placements.iter().map(|p| p.order_id).collect();
    ids.sort_unstable();
    let rows: Vec<SagaRow> = sqlx::query_as(
        "INSERT INTO order_sagas (order_id) SELECT unnest($1::uuid[])
         ON CONFLICT (order_id) DO UPDATE SET order_id = EXCLUDED.order_id
         RETURNING order_id, reply_type, reply, cancelled_at IS NOT NULL AS cancelled",
    )
    .bind(&ids)
    .fetch_all(&mut *transaction)
    .await?;
    let mut known: BTreeMap<Uuid, OrderSaga> = BTreeMap::new();
    for row in rows {
        let saga = OrderSaga {
            reply: stored_reply(row.reply_type, row.reply)?,
            cancelled: row.cancelled,
        };
        known.insert(row.order_id, saga);
    }
    let mut to_reserve = Vec::new();
    let mut products = std::collections::BTreeSet::new();
    for placement in placements {
        let saga = known.get(&placement.order_id);
        if saga.is_some_and(|s| s.reply.is_none() && !s.cancelled) {
            if let Ok(wanted) = wanted(&placement.lines) {
                products.extend(wanted.keys().copied());
            }
            to_reserve.push(placement);
        }
    }
    let products: Vec<Uuid> = products.into_iter().collect();
    let mut shelves = lock_shelves(transaction, &products).await?;
    let mut decided: BTreeMap<Uuid, Result<Reservation, String>> = BTreeMap::new();
    for placement in &to_reserve {
        let outcome = wanted(&placement.lines).and_then(|wanted| take(&wanted, &mut shelves));
        decided.insert(placement.order_id, outcome);
    }
    let reserved: Vec<(Uuid, &Reservation)> = decided
        .iter()
        .filter_map(|(id, outcome)| outcome.as_ref().ok().map(|r| (*id, r)))
        .collect();
    write_reservations(transaction, &shelves, &reserved).await?;
    let mut out = Vec::with_capacity(placements.len());
    let (mut new_ids, mut new_kinds, mut new_payloads) = (Vec::new(), Vec::new(), Vec::new());
    for placement in placements {
        let id = placement.order_id;
        let answer = match (known.get(&id), decided.remove(&id)) {
            (_, Some(Ok(reservation))) => reserved_answer(id, reservation),
            (_, Some(Err(reason))) => {
                tracing::info!(order_id = %id, reason, "stock not reserved");
                rejected_answer(id, reason)
            }
            (
                Some(OrderSaga {
                    reply: Some(reply), ..
                }),
                None,
            ) => {
                tracing::info!(order_id = %id, kind = reply.routing_key(), "placement seen before: the same answer again");
                reply.clone()
            }
            _ => rejected_answer(id, "the order was cancelled".to_owned()),
        };
        if known
            .get(&id)
            .is_some_and(|s| s.reply.is_none() && !s.cancelled)
        {
            new_ids.push(id);
            new_kinds.push(answer.routing_key());
            new_payloads.push(Json(answer.payload()));
        }
        out.push(answer);
    }
    if !new_ids.is_empty() {
        sqlx::query(
            "UPDATE order_sagas s SET reply_type = r.kind, reply = r.reply
             FROM unnest($1::uuid[], $2::text[], $3::jsonb[]) AS r(id, kind, reply)
             WHERE s.order_id = r.id",
        )
        .bind(&new_ids)
        .bind(&new_kinds)
        .bind(&new_payloads)
        .execute(&mut *transaction)
        .await?;
    }
    Ok(out)
}

/// Gives back everything the order reserved, once: the reservation rows go with it. Returns
/// the number of lines released; `Ok(Err(reason))` when a product's stock would pass
/// [`Stock::MAX`] (the caller rolls back: nothing is released).
pub async fn release(
    transaction: &mut PgConnection,
    order_id: Uuid,
) -> Result<Result<usize, String>, sqlx::Error> {
    let mut released: Vec<(Uuid, i32)> = sqlx::query_as(
        "DELETE FROM reservations WHERE order_id = $1 RETURNING product_id, quantity",
    )
    .bind(order_id)
    .fetch_all(&mut *transaction)
    .await?;
    released.sort_unstable();
    for (product_id, quantity) in &released {
        let stock: Option<i32> =
            sqlx::query_scalar("SELECT stock FROM products WHERE id = $1 FOR UPDATE")
                .bind(product_id)
                .fetch_optional(&mut *transaction)
                .await?;
        let Some(stock) = stock else {
            continue; // the product was deleted: nothing to give back to
        };
        let Some(restored) = Stock::from_stored(stock).and_then(|s| s.give_back(*quantity)) else {
            return Ok(Err(format!(
                "releasing {quantity} unit(s) of product {product_id} would take its stock \
                 ({stock}) past the maximum of {}",
                Stock::MAX
            )));
        };
        set_stock(transaction, *product_id, restored).await?;
    }
    Ok(Ok(released.len()))
}

async fn set_stock(
    transaction: &mut PgConnection,
    product_id: Uuid,
    stock: Stock,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE products SET stock = $2, version = version + 1, updated_at = now() WHERE id = $1",
    )
    .bind(product_id)
    .bind(stock.value())
    .execute(transaction)
    .await
    .map(drop)
}
