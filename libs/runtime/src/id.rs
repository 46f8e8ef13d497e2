//! [`Id`]: a UUID as the API spells it, and only so.
//!
//! `uuid` reads four spellings (hyphenated, 32 bare hex digits, braced, `urn:uuid:`); the
//! OpenAPI documents promise `format: uuid`, which is the hyphenated one. Parsing every id at
//! the edge with this type makes the two agree: a client that sends another spelling gets a
//! 4xx naming it, whatever field, path segment or query parameter it is in.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A UUID in its hyphenated form (`0196b3a0-0000-7000-8000-000000000001`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub Uuid);

impl Id {
    pub fn uuid(self) -> Uuid {
        self.0
    }
}

impl FromStr for Id {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        uuid::fmt::Hyphenated::from_str(raw)
            .map(|hyphenated| Self(hyphenated.into_uuid()))
            .map_err(|_| format!("`{raw}` is not a UUID (8-4-4-4-12 hexadecimal digits)"))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl From<Uuid> for Id {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl From<Id> for Uuid {
    fn from(id: Id) -> Self {
        id.0
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0.hyphenated())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Id {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Uuid,
            )))
            .into()
    }
}

impl utoipa::ToSchema for Id {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_hyphenated_spelling_is_an_id() {
        let hyphenated = "0196b3a0-0000-7000-8000-00000000000A";
        let id: Id = hyphenated.parse().unwrap();
        assert_eq!(id.to_string(), hyphenated.to_ascii_lowercase());
        for other in [
            "0196b3a0000070008000000000000001",
            "{0196b3a0-0000-7000-8000-000000000001}",
            "urn:uuid:0196b3a0-0000-7000-8000-000000000001",
            "0196b3a0-0000-7000-8000-00000000001",
            "",
        ] {
            assert!(other.parse::<Id>().is_err(), "{other}");
        }
        let parsed: Id = serde_json::from_str(&format!("\"{hyphenated}\"")).unwrap();
        assert_eq!(parsed, id);
        assert!(serde_json::from_str::<Id>("\"0196b3a0000070008000000000000001\"").is_err());
    }
}
