//! Configuration from the environment, and nothing else (factor 3).
//!
//! Each service declares small `serde` structs (one per concern: HTTP, database, …) and loads
//! each with [`from_env`]. Field `database_url` is read from variable `DATABASE_URL`; defaults
//! live in code. Any problem becomes a [`ConfigError`] that names the variable, which the
//! binary prints on one line before exiting with code 2 (see [`crate::exit`]).

use std::collections::HashMap;

use serde::de::DeserializeOwned;

/// A missing or malformed environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault, as the user would type it (`DATABASE_URL`).
    pub variable: String,
    /// What is wrong and what was expected. Never contains the variable's value, which may be
    /// a secret.
    pub reason: String,
}

impl ConfigError {
    pub fn new(variable: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            variable: variable.into(),
            reason: reason.into(),
        }
    }
}

/// Loads `T` from the process environment.
pub fn from_env<T: DeserializeOwned>() -> Result<T, ConfigError> {
    load(config::Environment::default())
}

/// Loads `T` from the given variables instead of the process environment; the same rules apply.
/// Tests use it so they never mutate the shared process environment.
pub fn from_vars<T, K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    K: Into<String>,
    V: Into<String>,
{
    let vars: HashMap<String, String> = vars
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    load(config::Environment::default().source(Some(vars)))
}

fn load<T: DeserializeOwned>(environment: config::Environment) -> Result<T, ConfigError> {
    config::Config::builder()
        .add_source(environment.try_parsing(true))
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|error| explain(error, None))
}

/// Turns the `config` crate's error into one naming the environment variable.
fn explain(error: config::ConfigError, key: Option<String>) -> ConfigError {
    use config::ConfigError as E;
    let variable =
        |key: Option<String>| key.map_or_else(|| "environment".to_owned(), |k| k.to_uppercase());
    match error {
        E::Type {
            key: own_key,
            unexpected,
            expected,
            ..
        } => ConfigError::new(
            variable(own_key.or(key)),
            // Only typed (numeric, boolean) fields fail this way, never secrets, so showing the
            // value helps more than it risks.
            format!("expected {expected}, found {unexpected}"),
        ),
        E::At {
            error, key: own, ..
        } => explain(*error, own.or(key)),
        E::Message(message) => match missing_field(&message) {
            Some(field) => ConfigError::new(field.to_uppercase(), "is required but not set"),
            None => ConfigError::new(variable(key), message),
        },
        E::NotFound(field) => ConfigError::new(field.to_uppercase(), "is required but not set"),
        other => ConfigError::new(variable(key), other.to_string()),
    }
}

/// serde reports an absent field as "missing field `name`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::secret::SecretUrl;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Example {
        database_url: SecretUrl,
        #[serde(default = "default_port")]
        port: u16,
    }

    fn default_port() -> u16 {
        8080
    }

    #[test]
    fn a_missing_variable_is_named() {
        let error = from_vars::<Example, &str, &str>([]).unwrap_err();
        assert_eq!(error.variable, "DATABASE_URL");
        assert_eq!(error.to_string(), "DATABASE_URL: is required but not set");
    }

    #[test]
    fn a_malformed_number_is_named_with_what_was_expected() {
        let error = from_vars::<Example, _, _>([
            ("DATABASE_URL", "postgres://localhost/db"),
            ("PORT", "eighty"),
        ])
        .unwrap_err();
        assert_eq!(error.variable, "PORT");
        assert!(error.reason.contains("expected"), "{error}");
        assert!(error.reason.contains("eighty"), "{error}");
    }

    #[test]
    fn an_out_of_range_number_is_named() {
        let error = from_vars::<Example, _, _>([
            ("DATABASE_URL", "postgres://localhost/db"),
            ("PORT", "70000"),
        ])
        .unwrap_err();
        assert_eq!(error.variable, "PORT");
    }

    #[test]
    fn a_malformed_url_is_named_without_echoing_it() {
        let error = from_vars::<Example, _, _>([("DATABASE_URL", "not a url:s3cret")]).unwrap_err();
        assert_eq!(error.variable, "DATABASE_URL");
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }

    #[test]
    fn defaults_apply_and_values_parse() {
        let example: Example =
            from_vars([("DATABASE_URL", "postgres://u:pw@db:5432/catalog")]).unwrap();
        assert_eq!(example.port, 8080);
        let example: Example = from_vars([
            ("DATABASE_URL", "postgres://u:pw@db:5432/catalog"),
            ("PORT", "9000"),
        ])
        .unwrap();
        assert_eq!(example.port, 9000);
    }
}
