//! The order saga's contract: every event the catalog and the order service exchange, as one
//! enum, with its routing key, its schema version, and the queues that carry it.
//!
//! On the wire an event is a [`dockyard_messaging::Envelope`]: `type` is the routing key,
//! `version` the schema version ([`VERSION`]) and `payload` the variant's fields. The enum is
//! serde-tagged the same way (`{"type": "order.placed", "payload": {...}}`), so the routing key
//! is the serde tag and a payload is read into its variant's struct in one step, at the edge:
//! handlers `match` on [`SagaEvent`] and never see JSON.
//!
//! | routing key | published by | consumed by | payload |
//! |---|---|---|---|
//! | `order.placed` | order | catalog | [`OrderPlaced`] |
//! | `order.cancelled` | order | catalog | [`OrderCancelled`] |
//! | `stock.reserved` | catalog | order | [`StockReserved`] |
//! | `stock.rejected` | catalog | order | [`StockRejected`] |

use dockyard_messaging::{Envelope, Topology};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The schema version of every payload here. A consumer dead-letters an event of another
/// version rather than guess (a new version ships with consumers that read both first).
pub const VERSION: u32 = 1;

/// The catalog's consumer (and queue `{exchange}.catalog`).
pub const CATALOG: &str = "catalog";
/// The order service's consumer (and queue `{exchange}.order`).
pub const ORDER: &str = "order";

/// Routing keys, one per [`SagaEvent`] variant (the same strings as the serde tags).
pub mod keys {
    pub const ORDER_PLACED: &str = "order.placed";
    pub const ORDER_CANCELLED: &str = "order.cancelled";
    pub const STOCK_RESERVED: &str = "stock.reserved";
    pub const STOCK_REJECTED: &str = "stock.rejected";
}

/// The saga's queues: the catalog consumes what the order service publishes, and back.
pub fn topology() -> Topology {
    Topology::default()
        .queue(CATALOG, &[keys::ORDER_PLACED, keys::ORDER_CANCELLED])
        .queue(ORDER, &[keys::STOCK_RESERVED, keys::STOCK_REJECTED])
}

/// Every event of the order saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload")]
pub enum SagaEvent {
    /// An order was accepted: the catalog reserves its lines, all or none.
    #[serde(rename = "order.placed")]
    OrderPlaced(OrderPlaced),
    /// An order was cancelled (or compensated): the catalog releases what it reserved.
    #[serde(rename = "order.cancelled")]
    OrderCancelled(OrderCancelled),
    /// The catalog reserved every line, at these prices.
    #[serde(rename = "stock.reserved")]
    StockReserved(StockReserved),
    /// The catalog reserved nothing, for this reason.
    #[serde(rename = "stock.rejected")]
    StockRejected(StockRejected),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order_id: Uuid,
    pub lines: Vec<OrderLine>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub product_id: Uuid,
    pub quantity: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_id: Uuid,
    /// Why, when it is a compensation rather than the customer's cancellation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReserved {
    pub order_id: Uuid,
    pub lines: Vec<PricedLine>,
    pub total_minor: i64,
    pub currency: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    pub product_id: Uuid,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockRejected {
    pub order_id: Uuid,
    pub reason: String,
}

/// An envelope that is not a saga event this release understands.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("{kind} v{version} is not a version this release reads (v{VERSION})")]
    Version { kind: String, version: u32 },
    #[error("{kind} does not fit its schema: {source}")]
    Payload {
        kind: String,
        source: serde_json::Error,
    },
}

impl SagaEvent {
    /// The routing key (and envelope `type`) of this event.
    pub fn routing_key(&self) -> &'static str {
        match self {
            Self::OrderPlaced(_) => keys::ORDER_PLACED,
            Self::OrderCancelled(_) => keys::ORDER_CANCELLED,
            Self::StockReserved(_) => keys::STOCK_RESERVED,
            Self::StockRejected(_) => keys::STOCK_REJECTED,
        }
    }

    /// The order the event is about: the saga's correlation id.
    pub fn order_id(&self) -> Uuid {
        match self {
            Self::OrderPlaced(e) => e.order_id,
            Self::OrderCancelled(e) => e.order_id,
            Self::StockReserved(e) => e.order_id,
            Self::StockRejected(e) => e.order_id,
        }
    }

    /// The payload alone, as stored (the catalog remembers its answers this way).
    pub fn payload(&self) -> serde_json::Value {
        match serde_json::to_value(self).expect("saga events serialise") {
            serde_json::Value::Object(mut tagged) => tagged.remove("payload").unwrap_or_default(),
            _ => unreachable!("an adjacently tagged enum serialises to an object"),
        }
    }

    /// The event of routing key `kind` with `payload` (as stored, or as received).
    pub fn from_parts(kind: &str, payload: serde_json::Value) -> Result<Self, ContractError> {
        let tagged = serde_json::Value::Object(serde_json::Map::from_iter([
            ("type".to_owned(), serde_json::Value::from(kind)),
            ("payload".to_owned(), payload),
        ]));
        serde_json::from_value(tagged).map_err(|source| ContractError::Payload {
            kind: kind.to_owned(),
            source,
        })
    }

    /// A new envelope carrying this event, correlated by its order.
    pub fn envelope(&self) -> Envelope {
        let mut envelope = Envelope::new(self.routing_key(), self.order_id(), &self.payload());
        envelope.version = VERSION;
        envelope
    }

    /// A new envelope carrying this event in answer to `cause`.
    pub fn reply_to(&self, cause: &Envelope) -> Envelope {
        self.envelope().caused_by(cause)
    }
}

impl TryFrom<&Envelope> for SagaEvent {
    type Error = ContractError;

    fn try_from(envelope: &Envelope) -> Result<Self, Self::Error> {
        if envelope.version != VERSION {
            return Err(ContractError::Version {
                kind: envelope.kind.clone(),
                version: envelope.version,
            });
        }
        Self::from_parts(&envelope.kind, envelope.payload.clone())
    }
}

/// Whether `envelope` is an event of this contract at a version this release reads (what a
/// consumer of it should dead-letter at once otherwise).
pub fn understands(envelope: &Envelope, consumer: &str) -> bool {
    envelope.version == VERSION
        && topology()
            .queues
            .iter()
            .any(|q| q.consumer == consumer && q.bindings.contains(&envelope.kind.as_str()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn every_event() -> Vec<SagaEvent> {
        let order_id = Uuid::now_v7();
        let product_id = Uuid::now_v7();
        vec![
            SagaEvent::OrderPlaced(OrderPlaced {
                order_id,
                lines: vec![OrderLine {
                    product_id,
                    quantity: 2,
                }],
            }),
            SagaEvent::OrderCancelled(OrderCancelled {
                order_id,
                reason: None,
            }),
            SagaEvent::StockReserved(StockReserved {
                order_id,
                lines: vec![PricedLine {
                    product_id,
                    quantity: 2,
                    unit_price_minor: 1299,
                }],
                total_minor: 2598,
                currency: "EUR".to_owned(),
            }),
            SagaEvent::StockRejected(StockRejected {
                order_id,
                reason: "not enough stock".to_owned(),
            }),
        ]
    }

    #[test]
    fn every_event_round_trips_through_an_envelope_with_its_key_as_type() {
        for event in every_event() {
            let envelope = event.envelope();
            assert_eq!(envelope.kind, event.routing_key());
            assert_eq!(envelope.version, VERSION);
            assert_eq!(envelope.correlation_id, event.order_id());
            let tag = serde_json::to_value(&event).unwrap()["type"].clone();
            assert_eq!(tag, json!(event.routing_key()), "the serde tag is the key");
            assert_eq!(SagaEvent::try_from(&envelope).unwrap(), event);
        }
    }

    #[test]
    fn the_wire_format_is_the_documented_one() {
        let order_id = Uuid::nil();
        let event = SagaEvent::OrderCancelled(OrderCancelled {
            order_id,
            reason: Some("timeout".to_owned()),
        });
        assert_eq!(
            event.payload(),
            json!({"order_id": order_id, "reason": "timeout"})
        );
        // What an older order service published (its lines carried a price): still read.
        let placed = SagaEvent::from_parts(
            keys::ORDER_PLACED,
            json!({"order_id": order_id, "lines": [{"product_id": order_id, "quantity": 1, "unit_price_minor": null}]}),
        )
        .unwrap();
        assert_eq!(placed.order_id(), order_id);
    }

    #[test]
    fn another_version_an_unknown_type_or_a_bad_payload_is_refused_with_why() {
        let mut envelope = every_event()[0].envelope();
        envelope.version = 2;
        assert!(matches!(
            SagaEvent::try_from(&envelope),
            Err(ContractError::Version { version: 2, .. })
        ));
        assert!(!understands(&envelope, CATALOG));
        let unknown = Envelope::new("order.shipped", Uuid::nil(), &json!({}));
        assert!(SagaEvent::try_from(&unknown).is_err());
        let bad = Envelope::new(keys::STOCK_REJECTED, Uuid::nil(), &json!({"order_id": 5}));
        let error = SagaEvent::try_from(&bad).unwrap_err().to_string();
        assert!(error.starts_with("stock.rejected does not fit"), "{error}");
    }

    #[test]
    fn each_consumer_is_bound_to_the_keys_it_handles() {
        let placed = every_event()[0].envelope();
        let reserved = every_event()[2].envelope();
        assert!(understands(&placed, CATALOG) && !understands(&placed, ORDER));
        assert!(understands(&reserved, ORDER) && !understands(&reserved, CATALOG));
    }
}
