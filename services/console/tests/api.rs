//! The `console` binary as an OS process: configuration errors, and the OTLP/HTTP receiver fed
//! by the real OpenTelemetry exporter (the one the services use), read back through the API.

use std::{process::Stdio, time::Duration};

use opentelemetry::{
    KeyValue,
    trace::{SpanKind, TraceContextExt, Tracer, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

const BIN: &str = env!("CARGO_BIN_EXE_console");

fn console(vars: &[(&str, &str)]) -> Command {
    dockyard_testkit::process(BIN, vars)
}

#[tokio::test]
async fn missing_or_malformed_configuration_exits_2_naming_the_variable() {
    const GATEWAY: (&str, &str) = ("GATEWAY_ADMIN_URL", "http://127.0.0.1:9901");
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[], "GATEWAY_ADMIN_URL"),
        (
            &[("GATEWAY_ADMIN_URL", "127.0.0.1:9901")],
            "GATEWAY_ADMIN_URL",
        ),
        (
            &[GATEWAY, ("CONSOLE_TRACE_LIMIT", "0")],
            "CONSOLE_TRACE_LIMIT",
        ),
        (
            &[GATEWAY, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ];
    for (vars, variable) in cases {
        let output = console(vars).output().await.expect("running console");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{vars:?}: {stderr}");
        assert!(
            stderr.contains(variable),
            "{vars:?} names {variable}: {stderr}"
        );
    }
}

/// A console serving on a free loopback port, its gateway unreachable.
struct Served {
    _child: Child,
    base: String,
}

async fn serve() -> Served {
    let mut child = console(&[
        ("GATEWAY_ADMIN_URL", "http://127.0.0.1:1"),
        ("ADMIN_TOKEN", "a-token-of-sixteen-bytes"),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("CONSOLE_SCRAPE_INTERVAL_MS", "200"),
    ])
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawning console");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && event["message"] == "listening"
            {
                let address = event["address"].as_str().unwrap_or_default().to_owned();
                return address.rsplit(':').next().unwrap().parse::<u16>().unwrap();
            }
        }
        panic!("the console exited before listening");
    })
    .await
    .expect("the console logs `listening` within 10 s");
    // Keep its stdout drained.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Served {
        _child: child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// The JSON a GET of `url` answers.
async fn get_json(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// A tracer provider exporting to `endpoint` as `service`, the way the services export.
fn exporter(endpoint: &str, service: &'static str) -> SdkTracerProvider {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .build()
        .expect("an OTLP/HTTP exporter");
    SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build())
        .with_batch_exporter(exporter)
        .build()
}

#[tokio::test]
async fn spans_exported_over_otlp_http_come_back_as_one_trace_with_their_parents() {
    let console = serve().await;
    let endpoint = console.base.clone();
    // Two services, the second continuing the first's trace, as across the broker. The OTLP
    // exporter's blocking client runs off the async runtime.
    let (trace_id, parent_id) = tokio::task::spawn_blocking(move || {
        let (order, catalog) = (exporter(&endpoint, "order"), exporter(&endpoint, "catalog"));
        let placing = order.tracer("test").build(
            opentelemetry::trace::SpanBuilder::from_name("POST /orders")
                .with_kind(SpanKind::Server)
                .with_attributes([KeyValue::new("order.id", "0196b3a0-aaaa")]),
        );
        let context = opentelemetry::Context::current_with_span(placing);
        let ids = context.span().span_context().clone();
        let mut reserving = catalog.tracer("test").build_with_context(
            opentelemetry::trace::SpanBuilder::from_name("order.placed process")
                .with_kind(SpanKind::Consumer),
            &context,
        );
        opentelemetry::trace::Span::end(&mut reserving);
        context.span().end();
        order.force_flush().expect("order's spans exported");
        catalog.force_flush().expect("catalog's spans exported");
        (ids.trace_id().to_string(), ids.span_id().to_string())
    })
    .await
    .unwrap();

    let trace: Value = get_json(format!("{}/api/traces/{trace_id}", console.base)).await;
    let spans = trace["spans"].as_array().expect("a trace with spans");
    assert_eq!(spans.len(), 2, "{trace:#}");
    let span = |name: &str| spans.iter().find(|s| s["name"] == name).unwrap();
    assert_eq!(span("POST /orders")["service"], "order");
    assert_eq!(span("POST /orders")["kind"], "server");
    assert_eq!(span("order.placed process")["service"], "catalog");
    assert_eq!(span("order.placed process")["kind"], "consumer");
    assert_eq!(span("order.placed process")["parent_span_id"], parent_id);

    let listed: Value = get_json(format!(
        "{}/api/traces?order_id=0196b3a0-aaaa",
        console.base
    ))
    .await;
    assert_eq!(
        listed["traces"][0]["trace_id"],
        trace_id.as_str(),
        "{listed:#}"
    );
    assert_eq!(listed["traces"][0]["root"], "POST /orders");
}

#[tokio::test]
async fn a_bad_export_or_query_is_a_4xx_problem_and_an_unreachable_gateway_is_reported() {
    let console = serve().await;
    let client = reqwest::Client::new();
    let cases = [
        ("application/x-protobuf", "not protobuf at all", 400),
        ("application/json", "{", 400),
        ("text/plain", "hello", 415),
    ];
    for (content_type, body, status) in cases {
        let response = client
            .post(format!("{}/v1/traces", console.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{content_type}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let response = client
        .get(format!("{}/api/traces?limit=0", console.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = client
        .put(format!("{}/api/routes/catalog/canary", console.base))
        .json(&serde_json::json!({"weight": 101}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        422,
        "a weight over 100 is the client's mistake"
    );
    let response = client
        .put(format!("{}/api/routes/catalog/active", console.base))
        .json(&serde_json::json!({"pool": "canary"}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_client_error(),
        "only blue or green can be active: {}",
        response.status()
    );

    let mut overview = Value::Null;
    for _ in 0..50 {
        overview = get_json(format!("{}/api/overview", console.base)).await;
        if overview["gateway"]["error"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(overview["gateway"]["reachable"], false, "{overview:#}");
    assert!(
        overview["gateway"]["error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{overview:#}"
    );
}
