//! Console settings, from the environment: `GATEWAY_ADMIN_URL` (required), `ADMIN_TOKEN`,
//! `CONSOLE_TRACE_LIMIT`, `CONSOLE_SCRAPE_INTERVAL_MS`, and the runtime's `HOST`, `PORT`, ….

use std::time::Duration;

use dockyard_runtime::{
    config::{ConfigError, from_env},
    server::HttpConfig,
};
use serde::Deserialize;
use url::Url;

#[derive(Clone, Deserialize)]
struct ConsoleVars {
    gateway_admin_url: String,
    admin_token: Option<String>,
    #[serde(default = "default_trace_limit")]
    console_trace_limit: usize,
    #[serde(default = "default_scrape_interval_ms")]
    console_scrape_interval_ms: u64,
}

fn default_trace_limit() -> usize {
    500
}

fn default_scrape_interval_ms() -> u64 {
    1000
}

/// What the console watches and how.
#[derive(Clone)]
pub struct ConsoleConfig {
    /// The gateway's admin listener, e.g. `http://127.0.0.1:9901`.
    pub gateway_admin: Url,
    /// Its bearer token (the gateway's `ADMIN_TOKEN`): without it the topology is unknown and
    /// the release controls refuse.
    pub admin_token: Option<String>,
    /// Traces kept in memory, newest first.
    pub trace_limit: usize,
    /// How often the gateway and the instances are polled.
    pub scrape_interval: Duration,
}

impl std::fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleConfig")
            .field("gateway_admin", &self.gateway_admin.as_str())
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("trace_limit", &self.trace_limit)
            .field("scrape_interval", &self.scrape_interval)
            .finish()
    }
}

impl ConsoleConfig {
    fn parse(vars: ConsoleVars) -> Result<Self, ConfigError> {
        let gateway_admin = Url::parse(&vars.gateway_admin_url)
            .map_err(|e| ConfigError::new("GATEWAY_ADMIN_URL", format!("is not a URL: {e}")))?;
        if !matches!(gateway_admin.scheme(), "http" | "https") || !gateway_admin.has_host() {
            return Err(ConfigError::new(
                "GATEWAY_ADMIN_URL",
                "expected an http:// URL of the gateway's admin listener",
            ));
        }
        if vars.console_trace_limit == 0 {
            return Err(ConfigError::new(
                "CONSOLE_TRACE_LIMIT",
                "must be at least 1",
            ));
        }
        if !(100..=60_000).contains(&vars.console_scrape_interval_ms) {
            return Err(ConfigError::new(
                "CONSOLE_SCRAPE_INTERVAL_MS",
                "must be between 100 and 60000",
            ));
        }
        Ok(Self {
            gateway_admin,
            admin_token: vars.admin_token.filter(|t| !t.is_empty()),
            trace_limit: vars.console_trace_limit,
            scrape_interval: Duration::from_millis(vars.console_scrape_interval_ms),
        })
    }
}

/// Everything `console serve` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpConfig,
    pub console: ConsoleConfig,
}

impl Settings {
    /// Reads and validates the environment; the error names the variable at fault.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            http: from_env()?,
            console: ConsoleConfig::parse(from_env()?)?,
        })
    }

    /// The same from explicit variables (tests, tools).
    pub fn from_vars<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            http: dockyard_runtime::config::from_vars(vars.clone())?,
            console: ConsoleConfig::parse(dockyard_runtime::config::from_vars(vars)?)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_admin_url_is_required_and_checked() {
        let error = Settings::from_vars([("PORT", "0")]).unwrap_err();
        assert_eq!(error.variable, "GATEWAY_ADMIN_URL");
        let error = Settings::from_vars([("GATEWAY_ADMIN_URL", "127.0.0.1:9901")]).unwrap_err();
        assert_eq!(error.variable, "GATEWAY_ADMIN_URL");
        let settings = Settings::from_vars([
            ("GATEWAY_ADMIN_URL", "http://127.0.0.1:9901"),
            ("ADMIN_TOKEN", "a-token-of-sixteen-bytes"),
        ])
        .unwrap();
        assert_eq!(settings.console.trace_limit, 500);
        assert_eq!(settings.console.scrape_interval, Duration::from_secs(1));
        assert!(
            !format!("{settings:?}").contains("sixteen"),
            "the token is never shown"
        );
    }

    #[test]
    fn limits_are_checked_naming_the_variable() {
        let base = ("GATEWAY_ADMIN_URL", "http://127.0.0.1:9901");
        let error = Settings::from_vars([base, ("CONSOLE_TRACE_LIMIT", "0")]).unwrap_err();
        assert_eq!(error.variable, "CONSOLE_TRACE_LIMIT");
        let error = Settings::from_vars([base, ("CONSOLE_SCRAPE_INTERVAL_MS", "5")]).unwrap_err();
        assert_eq!(error.variable, "CONSOLE_SCRAPE_INTERVAL_MS");
    }
}
