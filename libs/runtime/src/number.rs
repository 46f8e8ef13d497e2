//! [`Whole`] and [`WholeParam`]: an integer as JSON Schema means it.
//!
//! To JSON Schema (and so to the OpenAPI documents and their clients) `12.0` is an integer:
//! a number with no fractional part. serde's integer types refuse it. Integer fields of JSON
//! bodies use `Whole<T>`, which takes `12` and `12.0` (never `"12"`); integer query parameters
//! use `WholeParam<T>`, which reads the same from text. Both refuse fractions and values
//! outside `T`.

use std::{fmt, marker::PhantomData};

use serde::{Deserialize, Deserializer, de};

/// A whole number that fits `T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Whole<T>(pub T);

impl<T> Whole<T> {
    pub fn get(self) -> T {
        self.0
    }
}

impl<'de, T> Deserialize<'de> for Whole<T>
where
    T: TryFrom<i128>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WholeVisitor {
            text: false,
            target: PhantomData,
        })
    }
}

/// A whole number that fits `T`, in a query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WholeParam<T>(pub T);

impl<T> WholeParam<T> {
    pub fn get(self) -> T {
        self.0
    }
}

impl<'de, T> Deserialize<'de> for WholeParam<T>
where
    T: TryFrom<i128>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Whole(value) = deserializer.deserialize_any(WholeVisitor {
            text: true,
            target: PhantomData,
        })?;
        Ok(Self(value))
    }
}

struct WholeVisitor<T> {
    /// Numbers come as text (query strings).
    text: bool,
    target: PhantomData<T>,
}

impl<T: TryFrom<i128>> WholeVisitor<T> {
    fn fit<E: de::Error>(value: i128) -> Result<Whole<T>, E> {
        T::try_from(value)
            .map(Whole)
            .map_err(|_| E::custom(format!("{value} is out of range")))
    }
}

impl<T: TryFrom<i128>> de::Visitor<'_> for WholeVisitor<T> {
    type Value = Whole<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Self::fit(i128::from(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Self::fit(i128::from(value))
    }

    #[allow(clippy::cast_possible_truncation)] // checked: whole and within ±2^63
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        if value.fract() != 0.0 || !value.is_finite() || value.abs() >= 9.2e18 {
            return Err(E::invalid_type(de::Unexpected::Float(value), &self));
        }
        Self::fit(value as i128)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        if !self.text {
            return Err(E::invalid_type(de::Unexpected::Str(text), &self));
        }
        if let Ok(value) = text.parse::<i128>() {
            return Self::fit(value);
        }
        match text.parse::<f64>() {
            Ok(value)
                if text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
            {
                self.visit_f64(value)
            }
            _ => Err(E::invalid_type(de::Unexpected::Str(text), &self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_in_any_spelling_and_nothing_else() {
        let parse = |json: &str| serde_json::from_str::<Whole<i32>>(json).map(Whole::get);
        assert_eq!(parse("12").unwrap(), 12);
        assert_eq!(parse("12.0").unwrap(), 12);
        assert_eq!(parse("-3").unwrap(), -3);
        assert_eq!(parse("1e3").unwrap(), 1000);
        assert!(parse("12.5").is_err());
        assert!(parse("3000000000").is_err(), "outside i32");
        assert!(parse("\"12\"").is_err(), "a string is not a number in JSON");
        assert!(parse("true").is_err());

        let param = |json: &str| serde_json::from_str::<WholeParam<u32>>(json).map(WholeParam::get);
        assert_eq!(param("\"12\"").unwrap(), 12, "query strings give text");
        assert_eq!(param("\"12.0\"").unwrap(), 12);
        assert!(param("\"-1\"").is_err(), "outside u32");
        assert!(param("\"twelve\"").is_err());
        assert!(param("\"NaN\"").is_err());
        assert!(param("\"inf\"").is_err());
    }
}
