//! What the catalog consumes and publishes.
//!
//! Consumes `order.placed`: reserves stock for every line atomically, or for none, and
//! publishes `stock.reserved` (with the authoritative prices and total) or `stock.rejected`
//! (with the reason). Consumes `order.cancelled`: releases exactly what was reserved.
//! Everything happens in the consumer's transaction, with events written to the outbox.

use std::{collections::BTreeMap, future::Future, pin::Pin};

use dockyard_messaging::{Envelope, Handler, HandlerError, outbox};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
pub struct OrderPlaced {
    pub order_id: Uuid,
    pub lines: Vec<OrderLine>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
pub struct OrderLine {
    pub product_id: Uuid,
    pub quantity: i32,
}

#[derive(Debug, Deserialize)]
pub struct OrderCancelled {
    pub order_id: Uuid,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StockReserved {
    pub order_id: Uuid,
    pub lines: Vec<PricedLine>,
    pub total_minor: i64,
    pub currency: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PricedLine {
    pub product_id: Uuid,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StockRejected {
    pub order_id: Uuid,
    pub reason: String,
}

/// The catalog's handler of order events.
#[derive(Debug, Clone, Copy)]
pub struct OrderEvents;

impl Handler for OrderEvents {
    fn understands(&self, envelope: &Envelope) -> bool {
        envelope.version == 1
            && matches!(envelope.kind.as_str(), "order.placed" | "order.cancelled")
    }

    fn handle<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        envelope: &'a Envelope,
    ) -> Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>> {
        Box::pin(async move {
            let invalid = |e: serde_json::Error| HandlerError::Permanent(e.to_string());
            if envelope.kind == "order.placed" {
                let placed: OrderPlaced = envelope.payload().map_err(invalid)?;
                let reply = match reserve(transaction, &placed).await? {
                    Ok(reserved) => Envelope::new("stock.reserved", placed.order_id, &reserved),
                    Err(reason) => {
                        tracing::info!(order_id = %placed.order_id, reason, "stock not reserved");
                        let rejected = StockRejected {
                            order_id: placed.order_id,
                            reason,
                        };
                        Envelope::new("stock.rejected", placed.order_id, &rejected)
                    }
                };
                outbox::enqueue(transaction, &reply.caused_by(envelope)).await?;
            } else {
                let cancelled: OrderCancelled = envelope.payload().map_err(invalid)?;
                release(transaction, cancelled.order_id).await?;
            }
            Ok(())
        })
    }
}

/// Reserves every line or none. Rows are locked in id order, so concurrent reservations
/// serialise per product without deadlocks and stock can never be oversold.
/// `Ok(Err(reason))` is a business refusal; `Err` a database failure.
async fn reserve(
    transaction: &mut PgConnection,
    order: &OrderPlaced,
) -> Result<Result<StockReserved, String>, sqlx::Error> {
    let cancelled: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM cancelled_orders WHERE order_id = $1)")
            .bind(order.order_id)
            .fetch_one(&mut *transaction)
            .await?;
    if cancelled {
        return Ok(Err("the order was cancelled".to_owned()));
    }
    let mut wanted: BTreeMap<Uuid, i32> = BTreeMap::new();
    for line in &order.lines {
        if line.quantity <= 0 {
            return Ok(Err(format!(
                "quantity for product {} must be positive",
                line.product_id
            )));
        }
        let total = wanted.entry(line.product_id).or_default();
        *total = total.saturating_add(line.quantity);
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
    let mut lines = Vec::with_capacity(rows.len());
    let mut currency: Option<String> = None;
    for (&product_id, &quantity) in &wanted {
        let Some((_, price, product_currency, stock)) = rows.iter().find(|row| row.0 == product_id)
        else {
            return Ok(Err(format!("product {product_id} does not exist")));
        };
        if *stock < quantity {
            return Ok(Err(format!(
                "insufficient stock for product {product_id}: {quantity} requested, {stock} available"
            )));
        }
        if currency.get_or_insert_with(|| product_currency.clone()) != product_currency {
            return Ok(Err("the order mixes currencies".to_owned()));
        }
        lines.push(PricedLine {
            product_id,
            quantity,
            unit_price_minor: *price,
        });
    }
    let mut total_minor: i64 = 0;
    for line in &lines {
        sqlx::query(
            "UPDATE products SET stock = stock - $2, version = version + 1, updated_at = now()
             WHERE id = $1",
        )
        .bind(line.product_id)
        .bind(line.quantity)
        .execute(&mut *transaction)
        .await?;
        sqlx::query(
            "INSERT INTO reservations (order_id, product_id, quantity) VALUES ($1, $2, $3)",
        )
        .bind(order.order_id)
        .bind(line.product_id)
        .bind(line.quantity)
        .execute(&mut *transaction)
        .await?;
        total_minor = total_minor.saturating_add(
            line.unit_price_minor
                .saturating_mul(i64::from(line.quantity)),
        );
    }
    Ok(Ok(StockReserved {
        order_id: order.order_id,
        lines,
        total_minor,
        currency: currency.unwrap_or_default(),
    }))
}

/// Releases what `order_id` reserved (nothing, if it reserved nothing) and remembers the
/// cancellation so a late `order.placed` reserves nothing.
async fn release(transaction: &mut PgConnection, order_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO cancelled_orders (order_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(order_id)
        .execute(&mut *transaction)
        .await?;
    let released: Vec<(Uuid, i32)> = sqlx::query_as(
        "DELETE FROM reservations WHERE order_id = $1 RETURNING product_id, quantity",
    )
    .bind(order_id)
    .fetch_all(&mut *transaction)
    .await?;
    for (product_id, quantity) in &released {
        sqlx::query(
            "UPDATE products SET stock = stock + $2, version = version + 1, updated_at = now()
             WHERE id = $1",
        )
        .bind(product_id)
        .bind(quantity)
        .execute(&mut *transaction)
        .await?;
    }
    tracing::info!(%order_id, lines = released.len(), "reservation released");
    Ok(())
}
