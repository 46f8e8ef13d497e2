//! The OTLP/HTTP trace receiver and the store of recent traces.
//!
//! Services export their spans to `POST /v1/traces` (`application/x-protobuf`, the OTLP/HTTP
//! default, or `application/json`), as they would to any collector. Spans are grouped by trace
//! and kept in a bounded ring: past [`TraceStore`]'s limit, the traces first seen longest ago
//! go. A trace is listed under an order when one of its spans names it (`order.id`, or the
//! `messaging.message.conversation_id` of an event of the order's saga).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Mutex,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value},
    trace::v1::{span::SpanKind, status::StatusCode},
};
use serde::Serialize;
use time::OffsetDateTime;

/// Spans kept per trace at most (a runaway trace cannot take the store).
const SPANS_PER_TRACE: usize = 512;

/// Attributes that name an order.
const ORDER_ATTRIBUTES: [&str; 2] = ["order.id", "messaging.message.conversation_id"];

/// A received span, as the page shows it.
#[derive(Debug, Clone)]
struct SpanRecord {
    span_id: String,
    parent_span_id: Option<String>,
    service: String,
    name: String,
    kind: &'static str,
    start_ns: u64,
    end_ns: u64,
    status: &'static str,
    attributes: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Trace {
    spans: Vec<SpanRecord>,
    order_id: Option<String>,
}

impl Trace {
    fn started_ns(&self) -> u64 {
        self.spans.iter().map(|s| s.start_ns).min().unwrap_or(0)
    }

    fn ended_ns(&self) -> u64 {
        self.spans.iter().map(|s| s.end_ns).max().unwrap_or(0)
    }

    /// The span with no parent among those received (the earliest if several).
    fn root(&self) -> Option<&SpanRecord> {
        let ids: std::collections::HashSet<&str> =
            self.spans.iter().map(|s| s.span_id.as_str()).collect();
        self.spans
            .iter()
            .filter(|s| {
                s.parent_span_id
                    .as_deref()
                    .is_none_or(|parent| !ids.contains(parent))
            })
            .min_by_key(|s| s.start_ns)
    }
}

#[derive(Debug, Default)]
struct Ring {
    traces: HashMap<String, Trace>,
    /// Trace ids, first seen first.
    seen: VecDeque<String>,
}

/// The recent traces; shared by the receiver and the API.
#[derive(Debug)]
pub struct TraceStore {
    limit: usize,
    ring: Mutex<Ring>,
}

/// A trace in the list (`GET /api/traces`).
#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    pub root: String,
    pub services: Vec<String>,
    pub spans: usize,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub duration_ms: f64,
    pub order_id: Option<String>,
    pub error: bool,
}

/// A span of a trace's waterfall (`GET /api/traces/{id}`).
#[derive(Debug, Clone, Serialize)]
pub struct SpanView {
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub service: String,
    pub name: String,
    pub kind: &'static str,
    pub start_ms: f64,
    pub duration_ms: f64,
    pub status: &'static str,
    pub attributes: BTreeMap<String, String>,
}

/// A whole trace.
#[derive(Debug, Clone, Serialize)]
pub struct TraceDetail {
    pub trace_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub duration_ms: f64,
    pub spans: Vec<SpanView>,
}

/// Why an export request was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not an OTLP protobuf ExportTraceServiceRequest: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("not an OTLP JSON ExportTraceServiceRequest: {0}")]
    Json(#[from] serde_json::Error),
}

/// The encodings `POST /v1/traces` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// From a `Content-Type` (parameters ignored); `None` for another type.
    pub fn of(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().map(str::trim) {
            Some("application/x-protobuf") => Some(Self::Protobuf),
            Some("application/json") => Some(Self::Json),
            _ => None,
        }
    }
}

/// Reads an export request in `encoding`.
pub fn decode(body: &[u8], encoding: Encoding) -> Result<ExportTraceServiceRequest, DecodeError> {
    Ok(match encoding {
        Encoding::Protobuf => prost::Message::decode(body)?,
        Encoding::Json => serde_json::from_slice(body)?,
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            let _ = write!(text, "{byte:02x}");
            text
        })
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn kind(kind: i32) -> &'static str {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Server) => "server",
        Ok(SpanKind::Client) => "client",
        Ok(SpanKind::Producer) => "producer",
        Ok(SpanKind::Consumer) => "consumer",
        _ => "internal",
    }
}

fn status(code: Option<i32>) -> &'static str {
    match code.map(StatusCode::try_from) {
        Some(Ok(StatusCode::Ok)) => "ok",
        Some(Ok(StatusCode::Error)) => "error",
        _ => "unset",
    }
}

#[allow(clippy::cast_precision_loss)] // nanoseconds of one trace: far below 2^52
fn millis(nanos: u64) -> f64 {
    nanos as f64 / 1_000_000.0
}

fn at(nanos: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl TraceStore {
    /// A store keeping the `limit` traces seen most recently.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            ring: Mutex::new(Ring::default()),
        }
    }

    /// Adds the spans of `request`; returns how many were kept.
    pub fn add(&self, request: ExportTraceServiceRequest) -> usize {
        let mut received: Vec<(String, SpanRecord)> = Vec::new();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .map_or_else(|| "unknown".to_owned(), |kv| text(kv.value.as_ref()));
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    if span.trace_id.iter().all(|b| *b == 0) || span.span_id.is_empty() {
                        continue;
                    }
                    let record = SpanRecord {
                        span_id: hex(&span.span_id),
                        parent_span_id: (!span.parent_span_id.is_empty())
                            .then(|| hex(&span.parent_span_id)),
                        service: service.clone(),
                        name: span.name,
                        kind: kind(span.kind),
                        start_ns: span.start_time_unix_nano,
                        end_ns: span.end_time_unix_nano.max(span.start_time_unix_nano),
                        status: status(span.status.as_ref().map(|s| s.code)),
                        attributes: attributes(&span.attributes),
                    };
                    received.push((hex(&span.trace_id), record));
                }
            }
        }
        let kept = received.len();
        let mut ring = self.ring.lock().expect("the trace store's lock");
        for (trace_id, record) in received {
            if !ring.traces.contains_key(&trace_id) {
                ring.seen.push_back(trace_id.clone());
            }
            let trace = ring.traces.entry(trace_id).or_default();
            if trace.order_id.is_none() {
                trace.order_id = ORDER_ATTRIBUTES
                    .iter()
                    .find_map(|name| record.attributes.get(*name).cloned());
            }
            if trace.spans.len() < SPANS_PER_TRACE {
                trace.spans.push(record);
            }
        }
        while ring.seen.len() > self.limit {
            if let Some(oldest) = ring.seen.pop_front() {
                ring.traces.remove(&oldest);
            }
        }
        kept
    }

    /// Up to `limit` traces, newest first; only those of `order_id` when given.
    pub fn list(&self, limit: usize, order_id: Option<&str>) -> Vec<TraceSummary> {
        let ring = self.ring.lock().expect("the trace store's lock");
        let mut traces: Vec<TraceSummary> = ring
            .traces
            .iter()
            .filter(|(_, trace)| {
                order_id.is_none_or(|wanted| {
                    trace.order_id.as_deref() == Some(wanted)
                        || trace.spans.iter().any(|s| {
                            ORDER_ATTRIBUTES.iter().any(|name| {
                                s.attributes.get(*name).map(String::as_str) == Some(wanted)
                            })
                        })
                })
            })
            .map(|(id, trace)| summary(id, trace))
            .collect();
        traces.sort_by_key(|t| std::cmp::Reverse(t.started_at));
        traces.truncate(limit);
        traces
    }

    /// The trace `trace_id`, its spans in start order.
    pub fn get(&self, trace_id: &str) -> Option<TraceDetail> {
        let ring = self.ring.lock().expect("the trace store's lock");
        let trace = ring.traces.get(trace_id)?;
        let started = trace.started_ns();
        let mut spans: Vec<SpanView> = trace
            .spans
            .iter()
            .map(|s| SpanView {
                span_id: s.span_id.clone(),
                parent_span_id: s.parent_span_id.clone(),
                service: s.service.clone(),
                name: s.name.clone(),
                kind: s.kind,
                start_ms: millis(s.start_ns.saturating_sub(started)),
                duration_ms: millis(s.end_ns - s.start_ns),
                status: s.status,
                attributes: s.attributes.clone(),
            })
            .collect();
        spans.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
        Some(TraceDetail {
            trace_id: trace_id.to_owned(),
            started_at: at(started),
            duration_ms: millis(trace.ended_ns().saturating_sub(started)),
            spans,
        })
    }
}

fn summary(trace_id: &str, trace: &Trace) -> TraceSummary {
    let mut services: Vec<String> = trace.spans.iter().map(|s| s.service.clone()).collect();
    services.sort();
    services.dedup();
    let started = trace.started_ns();
    TraceSummary {
        trace_id: trace_id.to_owned(),
        root: trace.root().map(|s| s.name.clone()).unwrap_or_default(),
        services,
        spans: trace.spans.len(),
        started_at: at(started),
        duration_ms: millis(trace.ended_ns().saturating_sub(started)),
        order_id: trace.order_id.clone(),
        error: trace.spans.iter().any(|s| s.status == "error"),
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span, Status},
    };

    use super::*;

    fn string(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_owned())),
            }),
            ..KeyValue::default()
        }
    }

    fn span(trace: u8, id: u8, parent: Option<u8>, name: &str, start: u64) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            name: name.to_owned(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + 2_000_000,
            ..Span::default()
        }
    }

    fn export(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![string("service.name", service)],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }

    #[test]
    fn spans_from_several_services_make_one_trace_with_its_parents() {
        let store = TraceStore::new(10);
        let mut consumer = span(7, 3, Some(2), "order.placed process", 1_003_000_000);
        consumer.kind = SpanKind::Consumer as i32;
        consumer.attributes = vec![string("messaging.message.conversation_id", "order-1")];
        consumer.status = Some(Status {
            code: StatusCode::Error as i32,
            ..Status::default()
        });
        store.add(export(
            "gateway",
            vec![span(7, 1, None, "POST /api/orders", 1_000_000_000)],
        ));
        store.add(export(
            "order",
            vec![span(7, 2, Some(1), "POST /orders", 1_001_000_000)],
        ));
        store.add(export("catalog", vec![consumer]));

        let list = store.list(10, Some("order-1"));
        assert_eq!(list.len(), 1);
        let summary = &list[0];
        assert_eq!(summary.root, "POST /api/orders");
        assert_eq!(summary.services, ["catalog", "gateway", "order"]);
        assert_eq!((summary.spans, summary.error), (3, true));
        let trace = store.get(&summary.trace_id).unwrap();
        let parents: Vec<(&str, Option<&str>, f64)> = trace
            .spans
            .iter()
            .map(|s| (s.service.as_str(), s.parent_span_id.as_deref(), s.start_ms))
            .collect();
        assert_eq!(
            parents,
            [
                ("gateway", None, 0.0),
                ("order", Some("0101010101010101"), 1.0),
                ("catalog", Some("0202020202020202"), 3.0),
            ]
        );
        assert_eq!(trace.spans[2].kind, "consumer");
        assert!(
            (trace.duration_ms - 5.0).abs() < 1e-9,
            "{}",
            trace.duration_ms
        );
        assert!(store.list(10, Some("order-2")).is_empty());
    }

    #[test]
    fn past_its_limit_the_store_forgets_the_traces_seen_first() {
        let store = TraceStore::new(2);
        for trace in 1..=3 {
            store.add(export(
                "gateway",
                vec![span(trace, 1, None, "GET /", u64::from(trace))],
            ));
        }
        let ids: Vec<String> = store
            .list(10, None)
            .into_iter()
            .map(|t| t.trace_id)
            .collect();
        assert_eq!(
            ids,
            [hex(&[3; 16]), hex(&[2; 16])],
            "newest first, the first one gone"
        );
    }

    #[test]
    fn both_encodings_are_read_and_other_types_refused() {
        let request = export("order", vec![span(9, 1, None, "GET /orders/{id}", 5)]);
        let protobuf = prost::Message::encode_to_vec(&request);
        assert_eq!(decode(&protobuf, Encoding::Protobuf).unwrap(), request);
        let json = serde_json::to_vec(&request).unwrap();
        assert_eq!(decode(&json, Encoding::Json).unwrap(), request);
        assert!(decode(b"{not json", Encoding::Json).is_err());
        assert_eq!(
            Encoding::of("application/x-protobuf"),
            Some(Encoding::Protobuf)
        );
        assert_eq!(
            Encoding::of("application/json; charset=utf-8"),
            Some(Encoding::Json)
        );
        assert_eq!(Encoding::of("text/plain"), None);
    }
}
