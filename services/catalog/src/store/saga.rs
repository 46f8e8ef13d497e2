//! The catalog's side of the order saga in SQL: reservations, releases, and what it answered
//! to each order (`order_sagas`). Every function runs in the event handler's transaction; with
//! [`super::ProductStore`] these are the only writers of `products`, `reservations` and
//! `order_sagas`.
//!
//! Rows of one order are serialised by locking its `order_sagas` row first ([`lock`]); rows of
//! products are locked in id order, so concurrent reservations never deadlock and stock is
//! never oversold.

use std::collections::BTreeMap;

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
    /// The reply already given to its placement: event type and payload.
    pub reply: Option<(String, Value)>,
    pub cancelled: bool,
}

/// Locks the order's row (creating it if need be) and reads it. Every handler of the order's
/// events calls this first, so they apply one at a time.
pub async fn lock(transaction: &mut PgConnection, order_id: Uuid) -> sqlx::Result<OrderSaga> {
    sqlx::query("INSERT INTO order_sagas (order_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(order_id)
        .execute(&mut *transaction)
        .await?;
    let (reply_type, reply, cancelled): (Option<String>, Option<Json<Value>>, bool) =
        sqlx::query_as(
            "SELECT reply_type, reply, cancelled_at IS NOT NULL FROM order_sagas
             WHERE order_id = $1 FOR UPDATE",
        )
        .bind(order_id)
        .fetch_one(&mut *transaction)
        .await?;
    Ok(OrderSaga {
        reply: reply_type.zip(reply.map(|Json(value)| value)),
        cancelled,
    })
}

/// Remembers the answer given to the order's placement.
pub async fn record_reply(
    transaction: &mut PgConnection,
    order_id: Uuid,
    kind: &str,
    payload: &Value,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE order_sagas SET reply_type = $2, reply = $3 WHERE order_id = $1")
        .bind(order_id)
        .bind(kind)
        .bind(Json(payload))
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

/// Reserves every line or none. `Ok(Err(reason))` is a business refusal (not enough stock, an
/// unknown product, mixed currencies); `Err` a database failure.
pub async fn reserve(
    transaction: &mut PgConnection,
    order_id: Uuid,
    lines: &[Wanted],
) -> Result<Result<Reservation, String>, sqlx::Error> {
    let mut wanted: BTreeMap<Uuid, i32> = BTreeMap::new();
    for line in lines {
        if line.quantity <= 0 {
            return Ok(Err(format!(
                "quantity for product {} must be positive",
                line.product_id
            )));
        }
        let total = wanted.entry(line.product_id).or_default();
        let Some(sum) = total.checked_add(line.quantity) else {
            return Ok(Err(format!(
                "too many units of product {}",
                line.product_id
            )));
        };
        *total = sum;
    }
    if wanted.is_empty() {
        return Ok(Err("the order has no lines".to_owned()));
    }
    let ids: Vec<Uuid> = wanted.keys().copied().collect();
    let rows: Vec<(Uuid, i64, String, i32)> = sqlx::query_as(
        "SELECT id, price_minor, currency, stock FROM products
         WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *transaction)
    .await?;
    let mut taken = Vec::with_capacity(rows.len());
    let mut currency: Option<&str> = None;
    let mut total_minor: i64 = 0;
    for (&product_id, &quantity) in &wanted {
        let Some((_, price, product_currency, stock)) = rows.iter().find(|row| row.0 == product_id)
        else {
            return Ok(Err(format!("product {product_id} does not exist")));
        };
        let Some(left) = Stock::from_stored(*stock).and_then(|s| s.take(quantity)) else {
            return Ok(Err(format!(
                "insufficient stock for product {product_id}: {quantity} requested, {stock} available"
            )));
        };
        if *currency.get_or_insert(product_currency) != product_currency {
            return Ok(Err("the order mixes currencies".to_owned()));
        }
        let Some(total) = price
            .checked_mul(i64::from(quantity))
            .and_then(|line| total_minor.checked_add(line))
        else {
            return Ok(Err("the order's total is too large".to_owned()));
        };
        total_minor = total;
        taken.push((
            Taken {
                product_id,
                quantity,
                unit_price_minor: *price,
            },
            left,
        ));
    }
    for (line, left) in &taken {
        set_stock(transaction, line.product_id, *left).await?;
        sqlx::query(
            "INSERT INTO reservations (order_id, product_id, quantity) VALUES ($1, $2, $3)",
        )
        .bind(order_id)
        .bind(line.product_id)
        .bind(line.quantity)
        .execute(&mut *transaction)
        .await?;
    }
    Ok(Ok(Reservation {
        lines: taken.into_iter().map(|(line, _)| line).collect(),
        total_minor,
        currency: currency.unwrap_or_default().to_owned(),
    }))
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
