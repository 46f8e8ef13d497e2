//! Logs as event streams (factor 11): one JSON object per line on stdout, for whatever
//! collects container output. `LOG_FORMAT=pretty` is for humans at a terminal; `RUST_LOG`
//! filters (default `info`).

use serde::Deserialize;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
        LogFormat::Pretty => builder.with_ansi(true).try_init(),
    };
    // An error only means a subscriber is already installed.
    drop(installed);
}
