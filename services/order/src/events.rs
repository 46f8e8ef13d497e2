//! What the order service publishes (`order.placed`, `order.cancelled`, through the outbox in
//! [`crate::store`]) and how it moves orders on when the catalog answers.
//!
//! `stock.reserved` confirms a pending order with the catalog's authoritative prices and
//! total; `stock.rejected` rejects it with the reason. An order that is no longer pending
//! (cancelled meanwhile) is left as it is: its `order.cancelled` makes the catalog release
//! whatever it reserved.

use std::{future::Future, pin::Pin};

use dockyard_messaging::{Envelope, Handler, HandlerError};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, types::Json};
use uuid::Uuid;

use crate::domain::Line;

#[derive(Debug, Serialize)]
pub struct OrderPlaced {
    pub order_id: Uuid,
    pub lines: Vec<Line>,
}

#[derive(Debug, Serialize)]
pub struct OrderCancelled {
    pub order_id: Uuid,
}

#[derive(Debug, Deserialize)]
struct StockReserved {
    order_id: Uuid,
    lines: Vec<PricedLine>,
    total_minor: i64,
    currency: String,
}

#[derive(Debug, Deserialize)]
struct PricedLine {
    product_id: Uuid,
    quantity: i32,
    unit_price_minor: i64,
}

#[derive(Debug, Deserialize)]
struct StockRejected {
    order_id: Uuid,
    reason: String,
}

/// The order service's handler of stock events.
#[derive(Debug, Clone, Copy)]
pub struct StockEvents;

impl Handler for StockEvents {
    fn understands(&self, envelope: &Envelope) -> bool {
        envelope.version == 1
            && matches!(envelope.kind.as_str(), "stock.reserved" | "stock.rejected")
    }

    fn handle<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        envelope: &'a Envelope,
    ) -> Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>> {
        Box::pin(async move {
            let invalid = |e: serde_json::Error| HandlerError::Permanent(e.to_string());
            let (order_id, moved) = if envelope.kind == "stock.reserved" {
                let reserved: StockReserved = envelope.payload().map_err(invalid)?;
                let lines: Vec<Line> = reserved
                    .lines
                    .iter()
                    .map(|l| Line {
                        product_id: l.product_id,
                        quantity: l.quantity,
                        unit_price_minor: Some(l.unit_price_minor),
                    })
                    .collect();
                let moved = sqlx::query(
                    "UPDATE orders SET status = 'confirmed', lines = $2, total_minor = $3, currency = $4,
                                       reason = NULL, updated_at = now()
                     WHERE id = $1 AND status = 'pending'",
                )
                .bind(reserved.order_id)
                .bind(Json(&lines))
                .bind(reserved.total_minor)
                .bind(&reserved.currency)
                .execute(&mut *transaction)
                .await?
                .rows_affected();
                (reserved.order_id, moved)
            } else {
                let rejected: StockRejected = envelope.payload().map_err(invalid)?;
                let moved = sqlx::query(
                    "UPDATE orders SET status = 'rejected', reason = $2, updated_at = now()
                     WHERE id = $1 AND status = 'pending'",
                )
                .bind(rejected.order_id)
                .bind(&rejected.reason)
                .execute(&mut *transaction)
                .await?
                .rows_affected();
                (rejected.order_id, moved)
            };
            if moved == 0 {
                tracing::info!(%order_id, kind = envelope.kind, "order no longer pending; left as it is");
            }
            Ok(())
        })
    }
}
