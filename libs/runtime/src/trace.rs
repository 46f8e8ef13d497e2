//! Distributed tracing: `tracing` spans become OpenTelemetry spans (tracing-opentelemetry), the
//! W3C trace context travels in and out (`traceparent`, `tracestate`), and spans are exported
//! over OTLP/HTTP (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; nothing is exported when it is not. The
//! standard `OTEL_*` variables apply (`OTEL_SERVICE_NAME`, default the service's name;
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, …;
//! `OTEL_SDK_DISABLED=true` exports nothing).
//!
//! Which spans exist is not the log's business: `TRACE_FILTER` (`RUST_LOG`'s syntax, default
//! [`DEFAULT_TRACE_FILTER`]) chooses them, whatever `RUST_LOG` says, so `RUST_LOG=warn` quiets
//! the log and keeps the traces. Which traces are exported is the sampler's:
//! `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` as the OpenTelemetry specification
//! defines them ([`Sampling`]), checked at start (an unknown sampler or a ratio outside 0..=1
//! is a configuration error naming the variable, exit 2). With the parent-based samplers (the
//! default) the first hop decides — the gateway, for a request without a sampled
//! `traceparent` — and every service follows the sampled flag it receives, in a request's
//! `traceparent` or a message's.
//!
//! Trace context is kept even when nothing is exported: the gateway starts a trace for each
//! request, every hop continues it, and every JSON log line inside a request or a message
//! carries its `trace_id` and `span_id` ([`crate::telemetry`]).
//!
//! One home for the propagation: [`parent_from_actix`] and [`parent_from_http`] read an
//! incoming request's context, [`inject_http`] writes the current span's into an outgoing
//! request, [`traceparent`] and [`parent_from_traceparent`] carry it through a message.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{BatchSpanProcessor, SdkTracerProvider},
};
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::ConfigError;

/// What this module reads itself of the `OTEL_*` variables (the SDK reads the rest).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TracingConfig {
    /// Base URL of an OTLP/HTTP receiver; spans go to `<it>/v1/traces`.
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// The traces endpoint itself, when it is not `<base>/v1/traces`.
    pub otel_exporter_otlp_traces_endpoint: Option<String>,
    /// Only `http/protobuf` is built in.
    pub otel_exporter_otlp_protocol: Option<String>,
    pub otel_exporter_otlp_traces_protocol: Option<String>,
    /// `true`: export nothing.
    #[serde(default)]
    pub otel_sdk_disabled: bool,
    pub otel_service_name: Option<String>,
    pub otel_resource_attributes: Option<String>,
    pub otel_traces_sampler: Option<String>,
    pub otel_traces_sampler_arg: Option<String>,
    /// Which spans are traced, in `RUST_LOG`'s syntax (default [`DEFAULT_TRACE_FILTER`]).
    pub trace_filter: Option<String>,
}

/// The spans traced without `TRACE_FILTER`: every span at `info` or above (each request,
/// message and database call of the services is one).
pub const DEFAULT_TRACE_FILTER: &str = "info";

/// The sampler, as `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name it (the
/// specification's built-in samplers; remote ones are not built in).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    AlwaysOn,
    AlwaysOff,
    /// This fraction of traces, chosen by trace id (the same decision on every hop).
    TraceIdRatio(f64),
    /// The parent's decision when there is a parent, else the root's.
    ParentBased(Root),
}

/// A parent-based sampler's decision for a trace that starts here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

impl Default for Sampling {
    /// The specification's default, `parentbased_always_on`.
    fn default() -> Self {
        Self::ParentBased(Root::AlwaysOn)
    }
}

impl Sampling {
    fn ratio(arg: Option<&str>) -> Result<f64, ConfigError> {
        let Some(arg) = arg.filter(|a| !a.is_empty()) else {
            return Ok(1.0);
        };
        arg.trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                ConfigError::new(
                    "OTEL_TRACES_SAMPLER_ARG",
                    "expected a ratio from 0 to 1 (0.1 samples a tenth of the traces)",
                )
            })
    }

    /// Parses the two variables (`None`: unset).
    pub fn parse(sampler: Option<&str>, arg: Option<&str>) -> Result<Self, ConfigError> {
        let Some(name) = sampler.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(Self::default());
        };
        Ok(match name {
            "always_on" => Self::AlwaysOn,
            "always_off" => Self::AlwaysOff,
            "traceidratio" => Self::TraceIdRatio(Self::ratio(arg)?),
            "parentbased_always_on" => Self::ParentBased(Root::AlwaysOn),
            "parentbased_always_off" => Self::ParentBased(Root::AlwaysOff),
            "parentbased_traceidratio" => Self::ParentBased(Root::TraceIdRatio(Self::ratio(arg)?)),
            _ => {
                return Err(ConfigError::new(
                    "OTEL_TRACES_SAMPLER",
                    "expected always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off or parentbased_traceidratio",
                ));
            }
        })
    }

    /// The SDK's sampler.
    pub fn sampler(self) -> opentelemetry_sdk::trace::Sampler {
        use opentelemetry_sdk::trace::Sampler;
        let root = |root| match root {
            Root::AlwaysOn => Sampler::AlwaysOn,
            Root::AlwaysOff => Sampler::AlwaysOff,
            Root::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
        };
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
            Self::ParentBased(first) => Sampler::ParentBased(Box::new(root(first))),
        }
    }
}

impl TracingConfig {
    /// Checks every variable this module reads; errors name the variable.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.exporting()?;
        self.sampling()?;
        self.filter()?;
        Ok(())
    }

    /// The sampler `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name.
    pub fn sampling(&self) -> Result<Sampling, ConfigError> {
        Sampling::parse(
            self.otel_traces_sampler.as_deref(),
            self.otel_traces_sampler_arg.as_deref(),
        )
    }

    /// The `TRACE_FILTER` directives (checked: the filter builds).
    pub fn filter(&self) -> Result<String, ConfigError> {
        let directives = self
            .trace_filter
            .as_deref()
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .unwrap_or(DEFAULT_TRACE_FILTER);
        tracing_subscriber::EnvFilter::builder()
            .parse(directives)
            .map_err(|e| ConfigError::new("TRACE_FILTER", format!("is not a filter: {e}")))?;
        Ok(directives.to_owned())
    }

    /// Whether spans are exported, after checking the endpoint and protocol; errors name the
    /// variable.
    pub fn exporting(&self) -> Result<bool, ConfigError> {
        for (variable, value) in [
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                &self.otel_exporter_otlp_protocol,
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                &self.otel_exporter_otlp_traces_protocol,
            ),
        ] {
            if value.as_deref().is_some_and(|p| p != "http/protobuf") {
                return Err(ConfigError::new(
                    variable,
                    "only `http/protobuf` (OTLP over HTTP) is supported",
                ));
            }
        }
        let mut any = false;
        for (variable, value) in [
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &self.otel_exporter_otlp_endpoint,
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                &self.otel_exporter_otlp_traces_endpoint,
            ),
        ] {
            let Some(value) = value.as_deref().filter(|v| !v.is_empty()) else {
                continue;
            };
            let url = url::Url::parse(value)
                .map_err(|e| ConfigError::new(variable, format!("is not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::new(
                    variable,
                    "expected an http:// or https:// URL",
                ));
            }
            any = true;
        }
        Ok(any && !self.otel_sdk_disabled)
    }

    /// The `service.name` spans carry: `OTEL_SERVICE_NAME`, else `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`, else `service`.
    fn named_by_environment(&self) -> bool {
        self.otel_service_name
            .as_deref()
            .is_some_and(|n| !n.is_empty())
            || self.otel_resource_attributes.as_deref().is_some_and(|a| {
                a.split(',')
                    .any(|kv| kv.trim().starts_with("service.name="))
            })
    }
}

/// The process's tracer provider; [`Tracing::shutdown`] exports what is still buffered.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    exporting: bool,
    /// `TRACE_FILTER`'s directives.
    filter: String,
}

impl Tracing {
    /// A provider for `service`: with a batch exporter when `config` says so, else one that
    /// only keeps trace context. Call [`TracingConfig::check`] first: an invalid variable is a
    /// configuration error (here it only falls back to the default).
    pub fn new(config: &TracingConfig, service: &'static str) -> Self {
        let exporting = config.exporting().unwrap_or(false);
        let mut resource = Resource::builder();
        if !config.named_by_environment() {
            resource = resource.with_service_name(service);
        }
        let mut builder = SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_sampler(config.sampling().unwrap_or_default().sampler());
        if exporting {
            match opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
            {
                Ok(exporter) => {
                    builder =
                        builder.with_span_processor(BatchSpanProcessor::builder(exporter).build());
                }
                Err(error) => {
                    tracing::warn!(%error, "the OTLP exporter could not be built; no traces are exported");
                }
            }
        }
        Self {
            provider: builder.build(),
            exporting,
            filter: config
                .filter()
                .unwrap_or_else(|_| DEFAULT_TRACE_FILTER.to_owned()),
        }
    }

    /// The filter choosing which spans are traced (`TRACE_FILTER`), independent of the log's.
    pub fn filter(&self) -> tracing_subscriber::EnvFilter {
        tracing_subscriber::EnvFilter::builder()
            .parse(&self.filter)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_TRACE_FILTER))
    }

    /// The layer turning `tracing` spans into this provider's spans.
    pub fn layer<S>(
        &self,
    ) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        // Only what a trace view uses: on the gateway's hot path, busy/idle timing (two clock
        // reads per poll of an instrumented future), thread, source-location and target
        // attributes and the OpenTelemetry context activated on every enter cost about a
        // tenth of its CPU (perf) and added nothing the console or Jaeger show.
        tracing_opentelemetry::layer()
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_context_activation(false)
            .with_tracer(self.provider.tracer("dockyard"))
    }

    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Exports what is buffered and stops the exporter (at most its timeout).
    pub fn shutdown(self) {
        if self.exporting
            && let Err(error) = self.provider.shutdown()
        {
            tracing::warn!(%error, "exporting the last spans failed");
        }
    }
}

/// The W3C trace-context propagator (`traceparent`, `tracestate`).
fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// An actix request's headers, for the propagator.
struct ActixHeaders<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for ActixHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .map(actix_web::http::header::HeaderName::as_str)
            .collect()
    }
}

/// A request's headers in `http` types, for the propagator.
struct HttpHeaders<'a>(&'a http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// A message's `traceparent`, for the propagator.
struct TraceParent<'a>(Option<&'a str>);

impl Extractor for TraceParent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// The trace context an actix request came with (empty without one).
pub fn parent_from_actix(headers: &actix_web::http::header::HeaderMap) -> Context {
    propagator().extract(&ActixHeaders(headers))
}

/// The trace context a request (`http` types: the gateway, reqwest) came with.
pub fn parent_from_http(headers: &http::HeaderMap) -> Context {
    propagator().extract(&HttpHeaders(headers))
}

struct HttpInjector<'a>(&'a mut http::HeaderMap);

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

impl Injector for HttpInjector<'_> {
    /// The propagator's two headers; an empty `tracestate` is left out, not sent empty.
    fn set(&mut self, key: &str, value: String) {
        let name = match key {
            "traceparent" => TRACEPARENT,
            "tracestate" if value.is_empty() => return,
            "tracestate" => TRACESTATE,
            _ => return,
        };
        if let Ok(value) = http::HeaderValue::try_from(value) {
            self.0.insert(name, value);
        }
    }
}

/// Sets `traceparent` (and `tracestate`) of `headers` to `span`'s context, replacing what was
/// there; leaves them as they are when `span` has none (disabled by the filter, say).
pub fn inject_http(span: &tracing::Span, headers: &mut http::HeaderMap) {
    Traced::of(span).inject_http(headers);
}

/// A span's place in its trace, looked up once (each lookup walks the subscriber's registry):
/// for a hot path that renames its span, passes it on in headers and logs its ids.
#[derive(Debug)]
pub struct Traced(Context);

impl Traced {
    /// `span`'s context (empty when the span is disabled).
    pub fn of(span: &tracing::Span) -> Self {
        Self(span.context())
    }

    /// Renames the span in its trace (a name known only once the span has begun, such as the
    /// route a request matched).
    pub fn rename(&self, name: String) {
        self.0.span().update_name(name);
    }

    /// See [`inject_http`].
    pub fn inject_http(&self, headers: &mut http::HeaderMap) {
        if self.0.span().span_context().is_valid() {
            headers.remove(TRACESTATE);
            propagator().inject_context(&self.0, &mut HttpInjector(headers));
        }
    }

    /// The trace and span ids (hexadecimal when displayed), for a log line written outside
    /// the span; `None` without a trace.
    pub fn ids(&self) -> Option<(TraceId, SpanId)> {
        let span = self.0.span();
        let ids = span.span_context();
        ids.is_valid().then(|| (ids.trace_id(), ids.span_id()))
    }
}

/// `span`'s context as a `traceparent` value, for a message; `None` without one.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    struct One(Option<String>);
    impl Injector for One {
        fn set(&mut self, key: &str, value: String) {
            if key == "traceparent" {
                self.0 = Some(value);
            }
        }
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut one = One(None);
    propagator().inject_context(&context, &mut one);
    one.0
}

/// The context a message's `traceparent` names (empty for none or a malformed one).
pub fn parent_from_traceparent(traceparent: Option<&str>) -> Context {
    propagator().extract(&TraceParent(traceparent))
}

/// Makes `span` a child of the context `parent` reads (an incoming request's or message's)
/// when that is a valid remote context; else it stays where it is, a root or the child of the
/// current span. A disabled span (filtered out) reads nothing.
pub fn continue_from(span: &tracing::Span, parent: impl FnOnce() -> Context) {
    if span.is_disabled() {
        return;
    }
    let parent = parent();
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Records on `span`, in its trace only, the status of the HTTP answer it served or received,
/// and marks it failed for a 5xx. Not a `tracing` field: recording one makes the JSON log layer
/// serialise every field of the span again, on every request.
pub fn http_status(span: &tracing::Span, status: u16) {
    span.set_attribute("http.response.status_code", i64::from(status));
    if status >= 500 {
        failed(span);
    }
}

/// Marks `span` failed in its trace.
pub fn failed(span: &tracing::Span) {
    span.set_status(opentelemetry::trace::Status::error(""));
}

/// The ids of the current span's trace, as hexadecimal text: `(trace_id, span_id)`.
pub fn current_ids() -> Option<(String, String)> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let ids = span.span_context();
    ids.is_valid()
        .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_is_read_from_a_message_and_a_malformed_one_is_none() {
        let context = parent_from_traceparent(Some(PARENT));
        let span = context.span();
        assert_eq!(
            span.span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(span.span_context().is_remote());
        for bad in [None, Some("garbage"), Some("00-0000-00-01")] {
            assert!(
                !parent_from_traceparent(bad)
                    .span()
                    .span_context()
                    .is_valid(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_sampler_variables_are_read_as_the_specification_names_them() {
        let parse = Sampling::parse;
        assert_eq!(
            parse(None, None).unwrap(),
            Sampling::ParentBased(Root::AlwaysOn)
        );
        assert_eq!(
            parse(Some("always_off"), None).unwrap(),
            Sampling::AlwaysOff
        );
        assert_eq!(
            parse(Some("parentbased_traceidratio"), Some("0.25")).unwrap(),
            Sampling::ParentBased(Root::TraceIdRatio(0.25))
        );
        assert_eq!(
            parse(Some("traceidratio"), None).unwrap(),
            Sampling::TraceIdRatio(1.0),
            "no argument: a ratio of 1"
        );
        for (sampler, arg, variable) in [
            ("jaeger_remote", None, "OTEL_TRACES_SAMPLER"),
            ("sometimes", None, "OTEL_TRACES_SAMPLER"),
            ("traceidratio", Some("1.5"), "OTEL_TRACES_SAMPLER_ARG"),
            (
                "parentbased_traceidratio",
                Some("a tenth"),
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            ("traceidratio", Some("-0.1"), "OTEL_TRACES_SAMPLER_ARG"),
        ] {
            assert_eq!(
                parse(Some(sampler), arg).unwrap_err().variable,
                variable,
                "{sampler} {arg:?}"
            );
        }
        let config: TracingConfig =
            crate::config::from_vars([("TRACE_FILTER", "info,=nonsense[")]).unwrap();
        assert_eq!(config.check().unwrap_err().variable, "TRACE_FILTER");
    }

    /// A tenth of 10,000 fixed trace ids is sampled, within a point and a half; the parent's
    /// flag wins over the ratio under the parent-based sampler.
    #[test]
    fn a_ratio_samples_its_fraction_and_a_parent_based_one_follows_the_parent() {
        use opentelemetry::trace::{SpanContext, SpanKind, TraceFlags, TraceState};
        use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
        let sampled = |sampling: Sampling, parent: Option<&Context>, id: u128| {
            let result = sampling.sampler().should_sample(
                parent,
                TraceId::from(id),
                "request",
                &SpanKind::Server,
                &[],
                &[],
            );
            result.decision == SamplingDecision::RecordAndSample
        };
        // Fixed, well spread ids (a multiplicative hash of 1..=10,000).
        let ids: Vec<u128> = (1..=10_000u128)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835))
            .collect();
        let ratio = Sampling::ParentBased(Root::TraceIdRatio(0.1));
        let count = ids.iter().filter(|&&id| sampled(ratio, None, id)).count();
        assert!((850..=1_150).contains(&count), "{count} of 10,000 sampled");

        let parent = |flags| {
            Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(7),
                SpanId::from(9),
                flags,
                true,
                TraceState::default(),
            ))
        };
        let (yes, no) = (parent(TraceFlags::SAMPLED), parent(TraceFlags::default()));
        assert!(ids.iter().all(|&id| sampled(ratio, Some(&yes), id)));
        assert!(!ids.iter().any(|&id| sampled(ratio, Some(&no), id)));
        assert!(!sampled(Sampling::AlwaysOff, Some(&yes), 1));
    }

    #[test]
    fn the_protocol_and_endpoint_are_checked_naming_the_variable() {
        let config = |vars: &[(&str, &str)]| -> TracingConfig {
            crate::config::from_vars(vars.iter().copied()).unwrap()
        };
        assert!(!config(&[]).exporting().unwrap());
        assert!(
            config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")])
                .exporting()
                .unwrap()
        );
        assert!(
            !config(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ])
            .exporting()
            .unwrap()
        );
        let error = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318")])
            .exporting()
            .unwrap_err();
        assert_eq!(error.variable, "OTEL_EXPORTER_OTLP_ENDPOINT");
        let error = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .exporting()
        .unwrap_err();
        assert_eq!(error.variable, "OTEL_EXPORTER_OTLP_PROTOCOL");
    }
}
