//! A product's validated fields, for creation and for changes.

use dockyard_runtime::problem::FieldError;
use serde::Serialize;

use super::Money;

/// Stock-keeping unit: 1–64 characters of `A-Z a-z 0-9 - _ .`; unique in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sku(String);

impl Sku {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if raw.is_empty() || raw.len() > 64 || !raw.chars().all(valid_char) {
            return Err("must be 1-64 characters of letters, digits, '-', '_' or '.'".to_owned());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A product name: at most 200 characters, not blank, no control characters; stored trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductName(String);

impl ProductName {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        if raw.chars().any(char::is_control) {
            return Err("must not contain control characters".to_owned());
        }
        let name = raw.trim();
        if name.is_empty() {
            return Err("must not be empty".to_owned());
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Units in stock: 0 to [`Stock::MAX`]. Reserving takes units, releasing gives them back; both
/// are checked, so stock arithmetic never overflows (the schema enforces the same bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Stock(i32);

impl Stock {
    /// A billion units: far beyond any real shelf, far below `integer`'s 2 147 483 647.
    pub const MAX: i32 = 1_000_000_000;

    pub fn parse(raw: i64) -> Result<Self, String> {
        if raw < 0 {
            return Err("must not be negative".to_owned());
        }
        i32::try_from(raw)
            .ok()
            .filter(|units| *units <= Self::MAX)
            .map(Self)
            .ok_or_else(|| format!("must be at most {}", Self::MAX))
    }

    /// A stock as stored; `None` if the row breaks the bounds (written before they existed).
    pub fn from_stored(units: i32) -> Option<Self> {
        (0..=Self::MAX).contains(&units).then_some(Self(units))
    }

    pub fn value(self) -> i32 {
        self.0
    }

    /// What is left after taking `units`; `None` if there are not that many.
    pub fn take(self, units: i32) -> Option<Self> {
        self.0
            .checked_sub(units)
            .filter(|left| *left >= 0 && units >= 0)
            .map(Self)
    }

    /// The stock after giving back `units`; `None` if it would pass [`Stock::MAX`].
    pub fn give_back(self, units: i32) -> Option<Self> {
        self.0
            .checked_add(units)
            .filter(|total| *total <= Self::MAX && units >= 0)
            .map(Self)
    }
}

pub const DESCRIPTION_MAX_CHARS: usize = 2000;

/// A description: at most [`DESCRIPTION_MAX_CHARS`] characters, trimmed; line breaks and tabs
/// are text, other control characters (NUL among them, which PostgreSQL cannot store) are not.
fn parse_description(raw: &str) -> Result<String, String> {
    if raw.chars().count() > DESCRIPTION_MAX_CHARS {
        return Err(format!(
            "must be at most {DESCRIPTION_MAX_CHARS} characters"
        ));
    }
    if raw
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(
            "must not contain control characters other than line breaks and tabs".to_owned(),
        );
    }
    Ok(raw.trim().to_owned())
}

/// Collects field errors while parsing several fields.
#[derive(Default)]
struct Fields(Vec<FieldError>);

impl Fields {
    fn check<T>(&mut self, field: &str, parsed: Result<T, String>) -> Option<T> {
        parsed
            .map_err(|message| self.0.push(FieldError::new(field, message)))
            .ok()
    }

    fn check_price(&mut self, parsed: Result<Money, Vec<FieldError>>) -> Option<Money> {
        parsed.map_err(|errors| self.0.extend(errors)).ok()
    }
}

/// A product to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    pub sku: Sku,
    pub name: ProductName,
    pub description: String,
    pub price: Money,
    pub stock: Stock,
}

impl NewProduct {
    pub fn parse(
        sku: &str,
        name: &str,
        description: &str,
        price: (i64, &str),
        stock: i64,
    ) -> Result<Self, Vec<FieldError>> {
        let mut fields = Fields::default();
        let sku = fields.check("sku", Sku::parse(sku));
        let name = fields.check("name", ProductName::parse(name));
        let description = fields.check("description", parse_description(description));
        let price = fields.check_price(Money::parse("price", price.0, price.1));
        let stock = fields.check("stock", Stock::parse(stock));
        match (sku, name, description, price, stock) {
            (Some(sku), Some(name), Some(description), Some(price), Some(stock)) => Ok(Self {
                sku,
                name,
                description,
                price,
                stock,
            }),
            _ => Err(fields.0),
        }
    }
}

/// A partial update; `None` leaves a field as it is. The SKU is the product's identity for
/// other systems and cannot change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductChanges {
    pub name: Option<ProductName>,
    pub description: Option<String>,
    pub price: Option<Money>,
    pub stock: Option<Stock>,
}

impl ProductChanges {
    pub fn parse(
        name: Option<&str>,
        description: Option<&str>,
        price: Option<(i64, &str)>,
        stock: Option<i64>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut fields = Fields::default();
        if name.is_none() && description.is_none() && price.is_none() && stock.is_none() {
            return Err(vec![FieldError::new(
                "body",
                "change at least one of name, description, price, stock",
            )]);
        }
        let changes = Self {
            name: name.and_then(|raw| fields.check("name", ProductName::parse(raw))),
            description: description
                .and_then(|raw| fields.check("description", parse_description(raw))),
            price: price.and_then(|(amount, currency)| {
                fields.check_price(Money::parse("price", amount, currency))
            }),
            stock: stock.and_then(|raw| fields.check("stock", Stock::parse(raw))),
        };
        if fields.0.is_empty() {
            Ok(changes)
        } else {
            Err(fields.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let errors = NewProduct::parse("bad sku!", "  ", "", (-5, "ZZZ"), -1).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "sku",
                "name",
                "price.amount_minor",
                "price.currency",
                "stock"
            ]
        );
    }

    #[test]
    fn names_are_trimmed() {
        let product = NewProduct::parse("MUG-1", "  Mug ", "", (900, "EUR"), 3).unwrap();
        assert_eq!(product.name.as_str(), "Mug");
    }

    #[test]
    fn an_empty_change_is_refused() {
        assert!(ProductChanges::parse(None, None, None, None).is_err());
        let changes = ProductChanges::parse(None, None, None, Some(0)).unwrap();
        assert_eq!(changes.stock, Some(Stock::parse(0).unwrap()));
    }

    #[test]
    fn stock_is_bounded() {
        assert!(Stock::parse(-1).is_err());
        assert!(Stock::parse(i64::from(Stock::MAX) + 1).is_err());
        assert!(Stock::parse(i64::from(i32::MAX)).is_err());
        assert_eq!(
            Stock::parse(i64::from(Stock::MAX)).unwrap().value(),
            Stock::MAX
        );
    }

    #[test]
    fn stock_arithmetic_stays_within_its_bounds() {
        let ten = Stock::parse(10).unwrap();
        assert_eq!(ten.take(10).map(Stock::value), Some(0));
        assert_eq!(ten.take(11), None);
        assert_eq!(ten.take(-1), None);
        let full = Stock::parse(i64::from(Stock::MAX)).unwrap();
        assert_eq!(full.give_back(1), None, "never past the maximum");
        assert_eq!(ten.give_back(5).map(Stock::value), Some(15));
        assert_eq!(Stock::from_stored(i32::MAX), None);
        let almost = Stock::from_stored(i32::MAX - 1);
        assert_eq!(
            almost, None,
            "rows from before the bound are refused, not wrapped"
        );
    }

    #[test]
    fn descriptions_keep_line_breaks_and_refuse_other_control_characters() {
        assert_eq!(parse_description(" a\nb\tc ").unwrap(), "a\nb\tc");
        assert!(parse_description("nul\0").is_err());
        assert!(parse_description("\u{1b}[31m").is_err());
    }
}
