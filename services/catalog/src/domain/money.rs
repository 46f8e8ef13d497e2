//! Money: an integer amount of the currency's minor unit (cents) and an ISO 4217 currency.
//! Never floats.

use std::fmt;

use dockyard_runtime::problem::FieldError;
use serde::{Serialize, Serializer};

/// An ISO 4217 currency that has a minor unit (so `XAU` or `XXX` are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, String> {
        iso_currency::Currency::from_code(code)
            .filter(|currency| currency.exponent().is_some())
            .map(Self)
            .ok_or_else(|| format!("`{code}` is not an ISO 4217 currency code such as EUR or USD"))
    }

    pub fn code(self) -> &'static str {
        self.0.code()
    }

    /// Every code [`Currency::parse`] accepts, sorted (for the API's schema).
    pub fn codes() -> Vec<&'static str> {
        let letters = b'A'..=b'Z';
        let mut codes = Vec::new();
        for a in letters.clone() {
            for b in letters.clone() {
                for c in letters.clone() {
                    let code = [a, b, c];
                    let code = std::str::from_utf8(&code).expect("ASCII letters");
                    if let Ok(currency) = Self::parse(code) {
                        codes.push(currency.code());
                    }
                }
            }
        }
        codes
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

/// A price from 0 to [`Money::MAX_AMOUNT_MINOR`]: with at most 100 lines of 10 000 units an
/// order's total stays below `i64::MAX`, so totals never overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Money {
    /// Amount in the currency's minor unit: 1299 with EUR is €12.99.
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    /// 10¹² minor units (ten billion euros).
    pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;

    /// Validates a price; errors name `{field}.amount_minor` / `{field}.currency`.
    pub fn parse(field: &str, amount_minor: i64, currency: &str) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        if amount_minor < 0 {
            errors.push(FieldError::new(
                format!("{field}.amount_minor"),
                "must not be negative",
            ));
        } else if amount_minor > Self::MAX_AMOUNT_MINOR {
            errors.push(FieldError::new(
                format!("{field}.amount_minor"),
                format!("must be at most {}", Self::MAX_AMOUNT_MINOR),
            ));
        }
        let currency = Currency::parse(currency)
            .map_err(|message| errors.push(FieldError::new(format!("{field}.currency"), message)));
        match currency {
            Ok(currency) if errors.is_empty() => Ok(Self {
                amount_minor,
                currency,
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_price_parses() {
        let price = Money::parse("price", 1299, "EUR").unwrap();
        assert_eq!(price.amount_minor, 1299);
        assert_eq!(price.currency.code(), "EUR");
    }

    #[test]
    fn negative_amounts_and_unknown_currencies_are_both_reported() {
        let errors = Money::parse("price", -1, "EURO").unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["price.amount_minor", "price.currency"]);
    }

    #[test]
    fn the_listed_codes_are_exactly_the_accepted_ones() {
        let codes = Currency::codes();
        assert!(codes.contains(&"EUR") && codes.contains(&"JPY"));
        assert!(!codes.contains(&"XAU"));
        assert!(codes.iter().all(|code| Currency::parse(code).is_ok()));
    }

    #[test]
    fn currencies_without_a_minor_unit_are_refused() {
        assert!(Currency::parse("XAU").is_err());
        assert!(Currency::parse("eur").is_err(), "codes are upper case");
        assert!(Currency::parse("JPY").is_ok());
    }
}
