//! The envelope around every event.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// What travels on the wire: metadata every consumer understands, and a typed payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUIDv7: unique per event, ordered by creation; the inbox de-duplicates on it.
    pub id: Uuid,
    /// The routing key, e.g. `order.placed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Payload schema version; consumers dead-letter versions they do not know.
    pub version: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The business process this event belongs to (the order id, for the order saga).
    pub correlation_id: Uuid,
    /// The event that caused this one, if any.
    pub causation_id: Option<Uuid>,
    /// W3C trace context of the span it was created in (the request that placed an order, the
    /// consumer's span of the event that caused it): its consumer continues that trace.
    pub traceparent: Option<String>,
    pub payload: serde_json::Value,
}

impl Envelope {
    /// A new event of `kind` (version 1) about `correlation_id`, in the trace of the current
    /// span.
    pub fn new(kind: &str, correlation_id: Uuid, payload: &impl Serialize) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind: kind.to_owned(),
            version: 1,
            occurred_at: OffsetDateTime::now_utc(),
            correlation_id,
            causation_id: None,
            traceparent: dockyard_runtime::trace::traceparent(&tracing::Span::current()),
            payload: serde_json::to_value(payload).expect("event payloads serialise"),
        }
    }

    /// Marks this event as caused by `cause`, inheriting its correlation and trace (a consumer
    /// hands its handler events whose `traceparent` is the consumer's own span of them, so an
    /// event caused by one continues the trace under that span).
    #[must_use]
    pub fn caused_by(mut self, cause: &Envelope) -> Self {
        self.causation_id = Some(cause.id);
        self.correlation_id = cause.correlation_id;
        self.traceparent.clone_from(&cause.traceparent);
        self
    }

    /// The payload as `T`.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_round_trips_with_the_documented_field_names() {
        let cause = Envelope::new("order.placed", Uuid::now_v7(), &serde_json::json!({"n": 1}));
        let effect =
            Envelope::new("stock.reserved", Uuid::nil(), &serde_json::json!({})).caused_by(&cause);

        let json = serde_json::to_value(&effect).unwrap();

        for field in [
            "id",
            "type",
            "version",
            "occurred_at",
            "correlation_id",
            "causation_id",
            "traceparent",
            "payload",
        ] {
            assert!(json.get(field).is_some(), "{field} missing in {json}");
        }
        assert_eq!(effect.correlation_id, cause.correlation_id);
        assert_eq!(effect.causation_id, Some(cause.id));
        assert_eq!(serde_json::from_value::<Envelope>(json).unwrap(), effect);
    }

    #[test]
    fn event_ids_are_ordered_by_creation() {
        let first = Envelope::new("a", Uuid::nil(), &());
        let second = Envelope::new("a", Uuid::nil(), &());
        assert!(first.id < second.id);
    }
}
