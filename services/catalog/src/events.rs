//! What the catalog consumes and publishes.
//!
//! Consumes `order.placed`: reserves stock for every line atomically, or for none, and
//! publishes `stock.reserved` (with the authoritative prices and total) or `stock.rejected`
//! (with the reason). The answer is remembered per order: a placement that comes again
//! (re-published by the order service's deadline, or replayed from the dead letters) gets the
//! same answer and reserves nothing more. Consumes `order.cancelled`: releases exactly what was
//! reserved, once, and remembers the cancellation so a late placement reserves nothing.
//! Everything happens in the consumer's transaction, with events written to the outbox.
//!
//! When an event is given up on ([`Handler::compensate`]): a placement is answered
//! `stock.rejected` with the reason, so the order still ends; a cancellation is recorded (with
//! why its stock could not be released) and waits in the dead-letter queue for a replay.

use dockyard_messaging::{Compensation, Envelope, Handler, HandlerError, HandlerFuture, outbox};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::store::saga::{self, Wanted};

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

const RESERVED: &str = "stock.reserved";
const REJECTED: &str = "stock.rejected";

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
    ) -> HandlerFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let invalid = |e: serde_json::Error| HandlerError::Permanent(e.to_string());
            if envelope.kind == "order.placed" {
                let placed: OrderPlaced = envelope.payload().map_err(invalid)?;
                placement(transaction, envelope, &placed).await?;
            } else {
                let cancelled: OrderCancelled = envelope.payload().map_err(invalid)?;
                saga::lock(transaction, cancelled.order_id).await?;
                saga::record_cancellation(transaction, cancelled.order_id, None).await?;
                let released = saga::release(transaction, cancelled.order_id)
                    .await?
                    .map_err(HandlerError::Permanent)?;
                tracing::info!(order_id = %cancelled.order_id, lines = released, "reservation released");
            }
            Ok(())
        })
    }

    fn handle_batch<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        envelopes: &'a [Envelope],
    ) -> HandlerFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let (placements, others): (Vec<&Envelope>, Vec<&Envelope>) = envelopes
                .iter()
                .partition(|envelope| envelope.kind == "order.placed");
            for envelope in others {
                self.handle(transaction, envelope).await?;
            }
            if placements.is_empty() {
                return Ok(());
            }
            let mut parsed = Vec::with_capacity(placements.len());
            for envelope in &placements {
                let placed: OrderPlaced = envelope
                    .payload()
                    .map_err(|e| HandlerError::Permanent(e.to_string()))?;
                parsed.push(saga::Placement {
                    order_id: placed.order_id,
                    lines: placed
                        .lines
                        .iter()
                        .map(|line| Wanted {
                            product_id: line.product_id,
                            quantity: line.quantity,
                        })
                        .collect(),
                });
            }
            let answers = saga::answer_many(transaction, &parsed, &Replies).await?;
            let replies: Vec<Envelope> = placements
                .iter()
                .zip(answers)
                .map(|(cause, (order_id, (kind, payload)))| {
                    Envelope::new(&kind, order_id, &payload).caused_by(cause)
                })
                .collect();
            outbox::enqueue_many(transaction, &replies).await?;
            Ok(())
        })
    }

    fn compensate<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        envelope: &'a Envelope,
        reason: &'a str,
    ) -> HandlerFuture<'a, Result<Compensation, sqlx::Error>> {
        Box::pin(async move {
            // The payload may be what failed: the envelope's correlation id is the order's.
            let order_id = envelope.correlation_id;
            match envelope.kind.as_str() {
                "order.placed" => {
                    let order = saga::lock(transaction, order_id).await?;
                    let reply = if let Some(reply) = order.reply {
                        reply
                    } else {
                        let rejected = StockRejected {
                            order_id,
                            reason: format!("the catalog could not process the order: {reason}"),
                        };
                        let payload = to_value(&rejected);
                        saga::record_reply(transaction, order_id, REJECTED, &payload).await?;
                        (REJECTED.to_owned(), payload)
                    };
                    send(transaction, envelope, order_id, &reply.0, &reply.1).await?;
                    Ok(Compensation::Settled)
                }
                "order.cancelled" => {
                    saga::lock(transaction, order_id).await?;
                    let why = format!("the stock was not released: {reason}");
                    saga::record_cancellation(transaction, order_id, Some(&why)).await?;
                    Ok(Compensation::Replayable)
                }
                _ => Ok(Compensation::Replayable),
            }
        })
    }
}

/// Answers a placement: the answer given before, if any; a refusal if the order was cancelled;
/// else reserves and remembers the answer.
async fn placement(
    transaction: &mut PgConnection,
    envelope: &Envelope,
    placed: &OrderPlaced,
) -> Result<(), sqlx::Error> {
    let order_id = placed.order_id;
    let order = saga::lock(transaction, order_id).await?;
    let (kind, payload) = if let Some(reply) = order.reply {
        tracing::info!(%order_id, kind = reply.0, "placement seen before: the same answer again");
        reply
    } else if order.cancelled {
        let rejected = StockRejected {
            order_id,
            reason: "the order was cancelled".to_owned(),
        };
        (REJECTED.to_owned(), to_value(&rejected))
    } else {
        let lines: Vec<Wanted> = placed
            .lines
            .iter()
            .map(|line| Wanted {
                product_id: line.product_id,
                quantity: line.quantity,
            })
            .collect();
        let reply = match saga::reserve(transaction, order_id, &lines).await? {
            Ok(reservation) => {
                let reserved = StockReserved {
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
                };
                (RESERVED.to_owned(), to_value(&reserved))
            }
            Err(reason) => {
                tracing::info!(%order_id, reason, "stock not reserved");
                (
                    REJECTED.to_owned(),
                    to_value(&StockRejected { order_id, reason }),
                )
            }
        };
        saga::record_reply(transaction, order_id, &reply.0, &reply.1).await?;
        reply
    };
    send(transaction, envelope, order_id, &kind, &payload).await
}

/// How the catalog words its answers, for [`saga::answer_many`].
struct Replies;

impl saga::Answers for Replies {
    fn reserved(&self, order_id: Uuid, reservation: &saga::Reservation) -> saga::Answer {
        let reserved = StockReserved {
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
            currency: reservation.currency.clone(),
        };
        (RESERVED.to_owned(), to_value(&reserved))
    }

    fn rejected(&self, order_id: Uuid, reason: String) -> saga::Answer {
        (
            REJECTED.to_owned(),
            to_value(&StockRejected { order_id, reason }),
        )
    }
}

/// Puts the reply to `cause` in the outbox.
async fn send(
    transaction: &mut PgConnection,
    cause: &Envelope,
    order_id: Uuid,
    kind: &str,
    payload: &Value,
) -> Result<(), sqlx::Error> {
    let reply = Envelope::new(kind, order_id, payload).caused_by(cause);
    outbox::enqueue(transaction, &reply).await
}

fn to_value(payload: &impl Serialize) -> Value {
    serde_json::to_value(payload).expect("event payloads serialise")
}
