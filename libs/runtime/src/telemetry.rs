//! Logs as event streams (factor 11): one JSON object per line on stdout, for whatever
//! collects container output. `LOG_FORMAT=pretty` is for humans at a terminal, in colour only
//! when stdout is one (`NO_COLOR` turns colour off, `CLICOLOR_FORCE=1` on, for a parent that
//! shows the lines on its terminal); `RUST_LOG` filters (default [`DEFAULT_FILTER`]). Requests to
//! `/health/*` and `/metrics` that succeed are logged at `debug`, so probes and scrapes do not
//! drown the log.

use serde::Deserialize;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

/// The filter without `RUST_LOG`: `info`, but PostgreSQL's notices ("relation … already
/// exists, skipping" on every migrate) and actix-server's start-up chatter only when they warn.
pub const DEFAULT_FILTER: &str = "info,sqlx::postgres::notice=warn,actix_server=warn";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

/// Telemetry settings, from `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct TelemetryConfig {
    #[serde(default)]
    pub log_format: LogFormat,
}

/// Installs the global subscriber writing to stdout. Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    init_with_writer(format, std::io::stdout);
}

/// Installs the global subscriber writing to `writer`; does nothing if one is installed
/// already (tests call it from many places).
pub fn init_with_writer<W>(format: LogFormat, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.with_ansi(colour()).try_init(),
    };
    // An error only means a subscriber is already installed.
    drop(installed);
}

/// Whether pretty lines are coloured: `NO_COLOR` says never, `CLICOLOR_FORCE` (not `0`)
/// always, otherwise only on a terminal.
fn colour() -> bool {
    use std::io::IsTerminal;
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0");
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        return false;
    }
    set("CLICOLOR_FORCE") || std::io::stdout().is_terminal()
}

/// Whether a request to `path` is routine plumbing (health probes, metrics scrapes), logged
/// at `debug` when it succeeds.
pub fn is_routine(path: &str) -> bool {
    path == "/metrics" || path == "/health" || path.starts_with("/health/")
}
