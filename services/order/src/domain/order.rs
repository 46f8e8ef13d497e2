use dockyard_runtime::problem::FieldError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Lines per order, and units per line: generous bounds that stop absurd requests.
pub const MAX_LINES: usize = 100;
const MAX_QUANTITY: i64 = 10_000;

/// Where an order is in its life.
///
/// `pending → confirmed | rejected` (by the stock saga); `pending | confirmed → cancelled`.
// Stored as its lowercase name in `orders.status` (text); a name this release does not know
// is a decoding error, never taken for another status.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Status {
    Pending,
    Confirmed,
    Rejected,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn can_cancel(self) -> bool {
        matches!(self, Self::Pending | Self::Confirmed)
    }
}

/// One line: a product, a quantity and, once known, the catalog's unit price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Line {
    pub product_id: Uuid,
    #[schema(minimum = 1, maximum = 10_000)]
    pub quantity: i32,
    #[schema(minimum = 0)]
    pub unit_price_minor: Option<i64>,
}

/// A validated order request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub customer_id: Uuid,
    pub lines: Vec<Line>,
}

impl NewOrder {
    /// Validates the lines (1 to [`MAX_LINES`], quantities 1 to 10 000); errors name each field.
    pub fn parse(customer_id: Uuid, lines: &[(Uuid, i64)]) -> Result<Self, Vec<FieldError>> {
        if lines.is_empty() || lines.len() > MAX_LINES {
            return Err(vec![FieldError::new(
                "lines",
                format!("an order has 1 to {MAX_LINES} lines"),
            )]);
        }
        let mut errors = Vec::new();
        let mut parsed = Vec::with_capacity(lines.len());
        for (index, &(product_id, quantity)) in lines.iter().enumerate() {
            match i32::try_from(quantity) {
                Ok(quantity) if (1..=MAX_QUANTITY).contains(&i64::from(quantity)) => {
                    parsed.push(Line {
                        product_id,
                        quantity,
                        unit_price_minor: None,
                    });
                }
                _ => errors.push(FieldError::new(
                    format!("lines[{index}].quantity"),
                    format!("must be between 1 and {MAX_QUANTITY}"),
                )),
            }
        }
        if errors.is_empty() {
            Ok(Self {
                customer_id,
                lines: parsed,
            })
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pending_and_confirmed_orders_can_be_cancelled() {
        assert!(Status::Pending.can_cancel());
        assert!(Status::Confirmed.can_cancel());
        assert!(!Status::Rejected.can_cancel());
        assert!(!Status::Cancelled.can_cancel());
    }

    #[test]
    fn statuses_are_named_the_same_in_json_and_in_logs() {
        for status in [
            Status::Pending,
            Status::Confirmed,
            Status::Rejected,
            Status::Cancelled,
        ] {
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json, status.as_str());
        }
    }

    #[test]
    fn every_bad_quantity_is_named() {
        let product = Uuid::now_v7();
        let errors = NewOrder::parse(
            Uuid::now_v7(),
            &[(product, 0), (product, 2), (product, 10_001)],
        )
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["lines[0].quantity", "lines[2].quantity"]);
    }

    #[test]
    fn an_order_needs_lines() {
        assert!(NewOrder::parse(Uuid::now_v7(), &[]).is_err());
    }
}
