//! The catalog's side of the order saga in SQL: reservations, releases, and what it answered
//! to each order (`order_sagas`). Every function runs in the event handler's transaction; with
//! [`super::ProductStore`] these are the only writers of `products`, `reservations` and
//! `order_sagas`.
//!
//! Rows of one order are serialised by locking its `order_sagas` row first ([`lock`]); rows of
//! products are locked in id order, so concurrent reservations never deadlock and stock is
//! never oversold. A batch of placements is answered with two statements ([`answer_many`]).

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

/// Locks, for a batch that cancels orders besides anything else, every row it will touch in the
/// global order: the `order_sagas` rows of `orders` (created if missing) in id order, then, in
/// id order, the products of `placed_products` and those `cancelled` orders hold reservations
/// of. Handled one after the other, a cancellation would lock a product before the next
/// order's saga row, and two catalogs' batches could wait on each other (PostgreSQL's deadlock
/// detector breaks such a cycle after `deadlock_timeout`, 1 s, a second lost per batch: under
/// the fault suite, the saga slowed to a crawl and orders timed out).
pub async fn lock_rows(
    transaction: &mut PgConnection,
    orders: &[Uuid],
    placed_products: &[Uuid],
    cancelled: &[Uuid],
) -> sqlx::Result<()> {
    let mut orders = orders.to_vec();
    orders.sort_unstable();
    orders.dedup();
    sqlx::query(
        "INSERT INTO order_sagas (order_id) SELECT unnest($1::uuid[])
         ON CONFLICT (order_id) DO UPDATE SET order_id = EXCLUDED.order_id",
    )
    .bind(&orders)
    .execute(&mut *transaction)
    .await?;
    // The sagas are locked: no reservation of these orders can appear or go meanwhile.
    sqlx::query(
        "SELECT id FROM products
         WHERE id = ANY($1) OR id IN (SELECT product_id FROM reservations WHERE order_id = ANY($2))
         ORDER BY id FOR UPDATE",
    )
    .bind(placed_products)
    .bind(cancelled)
    .execute(&mut *transaction)
    .await
    .map(drop)
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

/// What a batch of placements writes, as columns: every touched product's new stock, every
/// reserved line, and every new answer.
#[derive(Debug, Default)]
struct Writes {
    products: Vec<Uuid>,
    stocks: Vec<i32>,
    reserved_orders: Vec<Uuid>,
    reserved_products: Vec<Uuid>,
    reserved_quantities: Vec<i32>,
    answered: Vec<Uuid>,
    kinds: Vec<&'static str>,
    answers: Vec<Json<Value>>,
}

impl Writes {
    /// The stock [`take`] left on the touched products, and the lines it reserved.
    fn reservations(
        shelves: &BTreeMap<Uuid, Shelf>,
        reservations: &[(Uuid, &Reservation)],
    ) -> Self {
        let touched: std::collections::BTreeSet<Uuid> = reservations
            .iter()
            .flat_map(|(_, reservation)| reservation.lines.iter().map(|line| line.product_id))
            .collect();
        let mut writes = Self {
            stocks: touched.iter().map(|id| shelves[id].stock).collect(),
            products: touched.into_iter().collect(),
            ..Self::default()
        };
        for (order_id, reservation) in reservations {
            for line in &reservation.lines {
                writes.reserved_orders.push(*order_id);
                writes.reserved_products.push(line.product_id);
                writes.reserved_quantities.push(line.quantity);
            }
        }
        writes
    }

    fn answer(&mut self, answer: &SagaEvent) {
        self.answered.push(answer.order_id());
        self.kinds.push(answer.routing_key());
        self.answers.push(Json(answer.payload()));
    }

    /// Writes it all with one statement: the products' stock, the reservations and the
    /// answers. The answers are written as an upsert of rows [`lock_batch`] created: its
    /// unique index finds them whatever the table's size. (An `UPDATE … FROM unnest(…)` here
    /// kept, on some connections, a cached plan chosen while `order_sagas` was small, and
    /// then scanned the whole table for every batch: this machine's PostgreSQL never
    /// analyses, autovacuum being off.)
    async fn write(self, transaction: &mut PgConnection) -> sqlx::Result<()> {
        if self.products.is_empty() && self.answered.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "WITH taken AS (
                 UPDATE products p SET stock = w.stock, version = p.version + 1, updated_at = now()
                 FROM unnest($1::uuid[], $2::int[]) AS w(id, stock)
                 WHERE p.id = w.id),
             booked AS (
                 INSERT INTO reservations (order_id, product_id, quantity)
                 SELECT * FROM unnest($3::uuid[], $4::uuid[], $5::int[]))
             INSERT INTO order_sagas (order_id, reply_type, reply)
             SELECT * FROM unnest($6::uuid[], $7::text[], $8::jsonb[])
             ON CONFLICT (order_id)
             DO UPDATE SET reply_type = EXCLUDED.reply_type, reply = EXCLUDED.reply",
        )
        .bind(&self.products)
        .bind(&self.stocks)
        .bind(&self.reserved_orders)
        .bind(&self.reserved_products)
        .bind(&self.reserved_quantities)
        .bind(&self.answered)
        .bind(&self.kinds)
        .bind(&self.answers)
        .execute(transaction)
        .await
        .map(drop)
    }
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

/// A row of [`lock_batch`]: an order's saga (`order_id` set) or a product (`product_id` set).
#[derive(sqlx::FromRow)]
struct LockedRow {
    order_id: Option<Uuid>,
    reply_type: Option<String>,
    reply: Option<Json<Value>>,
    cancelled: Option<bool>,
    product_id: Option<Uuid>,
    price_minor: Option<i64>,
    currency: Option<String>,
    stock: Option<i32>,
}

/// Locks the orders' rows (creating those missing), then the products they want in id order,
/// and reads both, with one statement. The lock order is [`lock`]'s then the products', as
/// everywhere else, so concurrent batches and cancellations never deadlock.
async fn lock_batch(
    transaction: &mut PgConnection,
    orders: &[Uuid],
    products: &[Uuid],
) -> sqlx::Result<(BTreeMap<Uuid, OrderSaga>, BTreeMap<Uuid, Shelf>)> {
    // The two halves of the UNION ALL are read in turn: every saga row (locked as the insert
    // returns it), then the products, locked as the sort hands them out.
    let rows: Vec<LockedRow> = sqlx::query_as(
        "WITH sagas AS (
             INSERT INTO order_sagas (order_id) SELECT unnest($1::uuid[])
             ON CONFLICT (order_id) DO UPDATE SET order_id = EXCLUDED.order_id
             RETURNING order_id, reply_type, reply, cancelled_at IS NOT NULL AS cancelled)
         SELECT order_id, reply_type, reply, cancelled,
                NULL::uuid AS product_id, NULL::bigint AS price_minor, NULL::text AS currency,
                NULL::int AS stock
         FROM sagas
         UNION ALL
         SELECT * FROM (
             SELECT NULL::uuid, NULL::text, NULL::jsonb, NULL::bool,
                    id, price_minor, currency, stock
             FROM products WHERE id = ANY($2) ORDER BY id FOR UPDATE) AS shelves",
    )
    .bind(orders)
    .bind(products)
    .fetch_all(&mut *transaction)
    .await?;
    let (mut sagas, mut shelves) = (BTreeMap::new(), BTreeMap::new());
    for row in rows {
        if let Some(order_id) = row.order_id {
            let saga = OrderSaga {
                reply: stored_reply(row.reply_type, row.reply)?,
                cancelled: row.cancelled.unwrap_or_default(),
            };
            sagas.insert(order_id, saga);
        } else if let (Some(id), Some(price_minor), Some(currency), Some(stock)) =
            (row.product_id, row.price_minor, row.currency, row.stock)
        {
            let shelf = Shelf {
                price_minor,
                currency,
                stock,
            };
            shelves.insert(id, shelf);
        }
    }
    Ok((sagas, shelves))
}

/// Answers many placements (of distinct orders) with two statements whatever their number:
/// the orders' rows and their products are locked and read in one ([`lock_batch`]); the
/// stock, the reservations and the new answers are written in the other ([`Writes::write`]).
/// Each order gets the answer it got before if it had one, a refusal if it was cancelled,
/// else is reserved in turn against what the orders before it in `placements` left.
pub async fn answer_many(
    transaction: &mut PgConnection,
    placements: &[Placement],
) -> sqlx::Result<Vec<SagaEvent>> {
    let mut ids: Vec<Uuid> = placements.iter().map(|p| p.order_id).collect();
    ids.sort_unstable();
    // The products of every placement: those of an order answered before are locked for
    // nothing, a rare case (a placement published again) that costs no round trip.
    let products: Vec<Uuid> = placements
        .iter()
        .flat_map(|p| p.lines.iter().map(|line| line.product_id))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let (known, mut shelves) = lock_batch(transaction, &ids, &products).await?;
    let open = |id: &Uuid| {
        known
            .get(id)
            .is_some_and(|s| s.reply.is_none() && !s.cancelled)
    };
    let mut decided: BTreeMap<Uuid, Result<Reservation, String>> = BTreeMap::new();
    for placement in placements.iter().filter(|p| open(&p.order_id)) {
        let outcome = wanted(&placement.lines).and_then(|wanted| take(&wanted, &mut shelves));
        decided.insert(placement.order_id, outcome);
    }
    let reserved: Vec<(Uuid, &Reservation)> = decided
        .iter()
        .filter_map(|(id, outcome)| outcome.as_ref().ok().map(|r| (*id, r)))
        .collect();
    let mut writes = Writes::reservations(&shelves, &reserved);
    let mut out = Vec::with_capacity(placements.len());
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
        if open(&id) {
            writes.answer(&answer);
        }
        out.push(answer);
    }
    writes.write(transaction).await?;
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
