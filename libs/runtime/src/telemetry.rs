//! Logs as event streams (factor 11): one JSON object per line on stdout, for whatever
//! collects container output; a line logged inside a request or a message starts with its
//! `trace_id` and `span_id` ([`crate::trace`]). `LOG_FORMAT=pretty` is for humans at a terminal, in colour only
//! when stdout is one (`NO_COLOR` turns colour off, `CLICOLOR_FORCE=1` on, for a parent that
//! shows the lines on its terminal); `RUST_LOG` filters (default [`DEFAULT_FILTER`]). Requests to
//! `/health/*` and `/metrics` that succeed are logged at `debug`, so probes and scrapes do not
//! drown the log.

use serde::Deserialize;
use tracing_subscriber::{
    EnvFilter, Layer,
    fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

use crate::trace::{Tracing, TracingConfig};

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

/// Installs the global subscriber writing to stdout, exporting nothing. For tools and tests.
pub fn init(format: LogFormat) {
    init_with_writer(format, std::io::stdout);
}

/// Installs the global subscriber of a service's process: logs on stdout, spans for
/// `service` exported as `tracing` says. Call once, first thing; keep the returned [`Tracing`]
/// and shut it down last, so the spans still buffered are exported.
pub fn init_service(format: LogFormat, tracing: &TracingConfig, service: &'static str) -> Tracing {
    let tracing = Tracing::new(tracing, service);
    install(format, std::io::stdout, &tracing);
    tracing
}

/// Installs the global subscriber writing to `writer`, exporting nothing; does nothing if one
/// is installed already (tests call it from many places).
pub fn init_with_writer<W>(format: LogFormat, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    install(
        format,
        writer,
        &Tracing::new(&TracingConfig::default(), "dockyard"),
    );
}

fn install<W>(format: LogFormat, writer: W, tracing: &Tracing)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let lines = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .map_event_format(WithTraceIds)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(colour())
            .with_writer(writer)
            .boxed(),
    };
    let spans = tracing
        .layer()
        .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
            metadata.name() != crate::observe::PROBE_SPAN
        }));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(spans)
        .try_init();
    // An error only means a subscriber is already installed.
    drop(installed);
}

/// A JSON event format whose lines start with the `trace_id` and `span_id` of the span they
/// were logged in, when it belongs to a trace.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = crate::trace::current_ids() else {
            return self.0.format_event(context, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0
            .format_event(context, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
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
