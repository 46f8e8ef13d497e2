//! What the catalog consumes and publishes.
//!
//! Consumes `order.placed`: reserves stock for every line atomically, or for none, and
//! publishes `stock.reserved` (with the authoritative prices and total) or `stock.rejected`
//! (with the reason). The answer is remembered per order: a placement that comes again
//! (re-published by the order service's deadline, or replayed from the dead letters) gets the
//! same answer and reserves nothing more. Consumes `order.cancelled`: releases exactly what was
//! reserved, once, and remembers the cancellation so a late placement reserves nothing.
//! Everything happens in the consumer's transaction; the answers are the events the handler
//! returns, which the consumer writes to the outbox in it and hands to the relay.
//!
//! When an event is given up on ([`Handler::compensate`]): a placement is answered
//! `stock.rejected` with the reason, so the order still ends; a cancellation is recorded (with
//! why its stock could not be released) and waits in the dead-letter queue for a replay.

use dockyard_contracts::{OrderPlaced, SagaEvent};
use dockyard_messaging::{
    Compensation, Envelope, Handler, HandlerError, HandlerFuture, consumer::Caused, outbox,
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::store::saga::{self, Wanted};

/// The catalog's handler of order events.
#[derive(Debug, Clone, Copy)]
pub struct OrderEvents;

/// Reads an envelope into the contract's event, once, at the edge.
fn event(envelope: &Envelope) -> Result<SagaEvent, HandlerError> {
    SagaEvent::try_from(envelope).map_err(|error| HandlerError::Permanent(error.to_string()))
}

fn placement(placed: &OrderPlaced) -> saga::Placement {
    saga::Placement {
        order_id: placed.order_id,
        lines: placed
            .lines
            .iter()
            .map(|line| Wanted {
                product_id: line.product_id,
                quantity: line.quantity,
            })
            .collect(),
    }
}

impl Handler for OrderEvents {
    fn understands(&self, envelope: &Envelope) -> bool {
        dockyard_contracts::understands(envelope, dockyard_contracts::CATALOG)
    }

    fn handle<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        envelope: &'a Envelope,
    ) -> HandlerFuture<'a, Result<Caused, HandlerError>> {
        self.handle_batch(transaction, std::slice::from_ref(envelope))
    }

    /// Placements of many orders are answered together ([`saga::answer_many`]);
    /// cancellations one by one.
    fn handle_batch<'a>(
        &'a self,
        transaction: &'a mut PgConnection,
        envelopes: &'a [Envelope],
    ) -> HandlerFuture<'a, Result<Caused, HandlerError>> {
        Box::pin(async move {
            let events = envelopes
                .iter()
                .map(|envelope| Ok((envelope, event(envelope)?)))
                .collect::<Result<Vec<_>, HandlerError>>()?;
            let cancelled: Vec<Uuid> = events
                .iter()
                .filter_map(|(_, event)| match event {
                    SagaEvent::OrderCancelled(cancelled) => Some(cancelled.order_id),
                    _ => None,
                })
                .collect();
            if !cancelled.is_empty() && events.len() > 1 {
                // Every saga row, then every product, each in id order (see `lock_rows`).
                let orders: Vec<Uuid> = events.iter().map(|(_, e)| e.order_id()).collect();
                let products: Vec<Uuid> = events
                    .iter()
                    .filter_map(|(_, event)| match event {
                        SagaEvent::OrderPlaced(placed) => Some(placed),
                        _ => None,
                    })
                    .flat_map(|placed| placed.lines.iter().map(|line| line.product_id))
                    .collect();
                saga::lock_rows(transaction, &orders, &products, &cancelled).await?;
            }
            let (mut placements, mut causes) = (Vec::new(), Vec::new());
            for (envelope, event) in events {
                match event {
                    SagaEvent::OrderPlaced(placed) => {
                        placements.push(placement(&placed));
                        causes.push(envelope);
                    }
                    SagaEvent::OrderCancelled(cancelled) => {
                        let order_id = cancelled.order_id;
                        saga::lock(transaction, order_id).await?;
                        saga::record_cancellation(transaction, order_id, None).await?;
                        let released = saga::release(transaction, order_id)
                            .await?
                            .map_err(HandlerError::Permanent)?;
                        tracing::info!(%order_id, lines = released, "reservation released");
                    }
                    other => {
                        return Err(HandlerError::Permanent(format!(
                            "{} is not an event for the catalog",
                            other.routing_key()
                        )));
                    }
                }
            }
            if placements.is_empty() {
                return Ok(Vec::new());
            }
            let answers = saga::answer_many(transaction, &placements).await?;
            Ok(answers
                .iter()
                .zip(causes)
                .map(|(answer, cause)| answer.reply_to(cause))
                .collect())
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
            let order_id: Uuid = envelope.correlation_id;
            match envelope.kind.as_str() {
                dockyard_contracts::keys::ORDER_PLACED => {
                    let order = saga::lock(transaction, order_id).await?;
                    let reply = if let Some(reply) = order.reply {
                        reply
                    } else {
                        let why = format!("the catalog could not process the order: {reason}");
                        let rejected = saga::rejected_answer(order_id, why);
                        saga::record_reply(transaction, &rejected).await?;
                        rejected
                    };
                    outbox::enqueue(transaction, &reply.reply_to(envelope)).await?;
                    Ok(Compensation::Settled)
                }
                dockyard_contracts::keys::ORDER_CANCELLED => {
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
