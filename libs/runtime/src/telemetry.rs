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
    filter::FilterExt,
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
    // Two filters, one per layer: `RUST_LOG` chooses the log lines, `TRACE_FILTER` the spans
    // traced (a quiet log keeps its traces; see `crate::trace`).
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let lines = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(JsonWithoutOtelFields)
            .map_event_format(WithTraceIds)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(colour())
            .fmt_fields(WithoutOtelFields)
            .with_writer(writer)
            .boxed(),
    }
    .with_filter(filter);
    // Spans only: log events stay in the log (each line carries its trace and span ids) rather
    // than being copied into their span as span events; probes are never traced.
    let spans = tracing.layer().with_filter(
        tracing_subscriber::filter::filter_fn(|metadata| {
            metadata.is_span() && metadata.name() != crate::observe::PROBE_SPAN
        })
        .and(tracing.filter()),
    );
    let installed = tracing_subscriber::registry()
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

/// Field formatters that leave out the `otel.*` fields (a span's name and kind in its trace,
/// read by the tracing layer): they say nothing to a reader of the log, doubled the length of
/// every request line, and serialising them into every JSON line cost the gateway about a
/// tenth of its instructions per request (callgrind).
#[derive(Debug, Clone, Copy)]
struct WithoutOtelFields;

impl<'a> tracing_subscriber::field::MakeVisitor<Writer<'a>> for WithoutOtelFields {
    type Visitor = WithoutOtel<tracing_subscriber::fmt::format::DefaultVisitor<'a>>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        WithoutOtel(tracing_subscriber::fmt::format::DefaultVisitor::new(
            target, true,
        ))
    }
}

/// [`tracing_subscriber::fmt::format::JsonFields`] without the `otel.*` fields.
#[derive(Debug, Clone, Copy)]
struct JsonWithoutOtelFields;

impl JsonWithoutOtelFields {
    fn json(
        fields: &impl tracing_subscriber::field::RecordFields,
    ) -> Result<String, std::fmt::Error> {
        use tracing_subscriber::field::VisitOutput;
        let mut json = String::new();
        let mut visitor = WithoutOtel(tracing_subscriber::fmt::format::JsonVisitor::new(&mut json));
        fields.record(&mut visitor);
        visitor.finish()?;
        Ok(json)
    }
}

impl<'a> FormatFields<'a> for JsonWithoutOtelFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'a>,
        fields: R,
    ) -> std::fmt::Result {
        use tracing_subscriber::field::VisitOutput;
        let mut visitor = WithoutOtel(tracing_subscriber::fmt::format::JsonVisitor::new(
            &mut writer,
        ));
        fields.record(&mut visitor);
        visitor.finish()
    }

    /// Fields recorded after a span began, merged into its JSON object (the JSON line
    /// formatter parses it back).
    fn add_fields(
        &self,
        current: &'a mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let added = Self::json(fields)?;
        if current.fields.is_empty() {
            current.fields = added;
            return Ok(());
        }
        let parse = |text: &str| {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
                .map_err(|_| std::fmt::Error)
        };
        let mut all = parse(&current.fields)?;
        all.extend(parse(&added)?);
        current.fields = serde_json::to_string(&all).map_err(|_| std::fmt::Error)?;
        Ok(())
    }
}

/// A field visitor passing on every field but the `otel.*` ones.
struct WithoutOtel<V>(V);

/// Span attributes that are the same on every span of their kind (semantic conventions for
/// the trace view), left out of log lines like the `otel.*` fields.
const CONSTANT_ATTRIBUTES: [&str; 3] = [
    "messaging.system",
    "messaging.operation.type",
    "db.system.name",
];

impl<V> WithoutOtel<V> {
    fn shown(field: &tracing::field::Field) -> bool {
        let name = field.name();
        !name.starts_with("otel.") && !CONSTANT_ATTRIBUTES.contains(&name)
    }
}

impl<V: tracing::field::Visit> tracing::field::Visit for WithoutOtel<V> {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if Self::shown(field) {
            self.0.record_f64(field, value);
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if Self::shown(field) {
            self.0.record_i64(field, value);
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if Self::shown(field) {
            self.0.record_u64(field, value);
        }
    }

    fn record_i128(&mut self, field: &tracing::field::Field, value: i128) {
        if Self::shown(field) {
            self.0.record_i128(field, value);
        }
    }

    fn record_u128(&mut self, field: &tracing::field::Field, value: u128) {
        if Self::shown(field) {
            self.0.record_u128(field, value);
        }
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        if Self::shown(field) {
            self.0.record_bool(field, value);
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if Self::shown(field) {
            self.0.record_str(field, value);
        }
    }

    fn record_bytes(&mut self, field: &tracing::field::Field, value: &[u8]) {
        if Self::shown(field) {
            self.0.record_bytes(field, value);
        }
    }

    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        if Self::shown(field) {
            self.0.record_error(field, value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if Self::shown(field) {
            self.0.record_debug(field, value);
        }
    }
}

impl<V: tracing_subscriber::field::VisitOutput<std::fmt::Result>>
    tracing_subscriber::field::VisitOutput<std::fmt::Result> for WithoutOtel<V>
{
    fn finish(self) -> std::fmt::Result {
        self.0.finish()
    }
}

impl<V: tracing_subscriber::field::VisitFmt> tracing_subscriber::field::VisitFmt
    for WithoutOtel<V>
{
    fn writer(&mut self) -> &mut dyn std::fmt::Write {
        self.0.writer()
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `log` writes through the subscriber `make` builds on a buffer.
    fn written<S>(make: impl FnOnce(Buffer) -> S, log: impl FnOnce()) -> String
    where
        S: tracing::Subscriber + Send + Sync + 'static,
    {
        let buffer = Buffer::default();
        tracing::subscriber::with_default(make(buffer.clone()), log);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_lines_leave_out_the_otel_fields_and_merge_fields_recorded_later() {
        let json = |buffer: Buffer| {
            tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .fmt_fields(JsonWithoutOtelFields)
                .with_writer(move || buffer.clone())
                .finish()
        };
        let text = written(json, || {
            let span = tracing::info_span!(
                "request",
                request_id = "r-1",
                route = %"/orders",
                otel.name = "POST /orders",
                otel.kind = "server",
                order.id = tracing::field::Empty,
            );
            let _entered = span.enter();
            span.record("order.id", 7_u64);
            tracing::info!(status = 202, "request completed");
        });
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["status"], 202);
        assert_eq!(
            line["span"],
            serde_json::json!({"name": "request", "request_id": "r-1", "route": "/orders", "order.id": 7}),
            "{text}"
        );
    }

    #[test]
    fn pretty_lines_leave_out_the_otel_fields_and_keep_the_others() {
        let pretty = |buffer: Buffer| {
            tracing_subscriber::fmt()
                .with_ansi(false)
                .fmt_fields(WithoutOtelFields)
                .with_writer(move || buffer.clone())
                .finish()
        };
        let line = written(pretty, || {
            let span = tracing::info_span!(
                "request",
                request_id = "r-1",
                route = %"/products",
                otel.name = "GET /products",
                otel.kind = "server",
                db.system.name = "postgresql",
            );
            let _entered = span.enter();
            tracing::info!(status = 200, otel.status_code = "ok", "request completed");
        });
        assert!(!line.contains("otel."), "{line}");
        assert!(!line.contains("db.system"), "{line}");
        for kept in [
            "request{request_id=\"r-1\" route=/products}",
            "request completed status=200",
        ] {
            assert!(line.contains(kept), "{kept:?} not in {line}");
        }
    }
}
