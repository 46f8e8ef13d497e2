//! Backing-service URIs that carry credentials (factor 4).

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use url::Url;

/// A URI such as `postgres://user:password@host/db`. Its password is kept in a
/// [`SecretString`] and is replaced by `***` in `Debug` and `Display`, so a logged or printed
/// configuration never leaks it. Only [`SecretUrl::expose`] gives the full URI, for the driver.
#[derive(Clone)]
pub struct SecretUrl {
    secret: SecretString,
    /// The same URI with its password masked: what logs and errors show.
    redacted: String,
    scheme: String,
}

impl SecretUrl {
    /// Parses a URI. The error never contains the input, which may hold a password.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = Url::parse(raw).map_err(|e| format!("is not a valid URI ({e})"))?;
        let mut redacted = url.clone();
        if url.password().is_some() {
            // Only fails for URIs that cannot have credentials, which `url` just gave us.
            let _ = redacted.set_password(Some("***"));
        }
        Ok(Self {
            secret: SecretString::from(raw.to_owned()),
            redacted: redacted.to_string(),
            scheme: url.scheme().to_owned(),
        })
    }

    /// The full URI, password included. Hand it to a driver; never log it.
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    pub fn scheme(&self) -> &str {
        &self.scheme
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretUrl").field(&self.redacted).finish()
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_appears_in_debug_or_display() {
        let url = SecretUrl::parse("postgres://app:hunter2@db.internal:5432/catalog").unwrap();
        let shown = format!("{url} {url:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("postgres://app:***@db.internal:5432/catalog"),
            "{shown}"
        );
        assert_eq!(
            url.expose(),
            "postgres://app:hunter2@db.internal:5432/catalog"
        );
    }

    #[test]
    fn a_url_without_password_is_shown_as_is() {
        let url = SecretUrl::parse("amqp://localhost:5672/%2f").unwrap();
        assert_eq!(url.to_string(), "amqp://localhost:5672/%2f");
        assert_eq!(url.scheme(), "amqp");
    }

    #[test]
    fn a_parse_error_does_not_echo_the_input() {
        let error = SecretUrl::parse("://user:topsecret@").unwrap_err();
        assert!(!error.contains("topsecret"), "{error}");
    }
}
