use std::collections::HashMap;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{dead_url, gateway, upstream};

#[tokio::test]
async fn a_route_strips_its_prefix_and_forwards_query_and_identity_headers() {
    let catalog = upstream("catalog", "127.0.0.2", false);
    let (gateway, _stop) = gateway(&format!("/api/catalog={}", catalog.url), &[]).await;

    let response = reqwest::Client::new()
        .get(format!("{gateway}/api/catalog/products?limit=2"))
        .header("x-request-id", "req-42")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("connection", "x-client-hop")
        .header("x-client-hop", "stays on the first hop")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "req-42");
    assert_eq!(response.headers()["x-upstream"], "catalog");
    assert!(
        !response.headers().contains_key("keep-alive"),
        "hop-by-hop from upstream dropped"
    );
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["path"], "/products");
    assert_eq!(seen["query"], "limit=2");
    let headers = &seen["headers"];
    assert_eq!(headers["x-request-id"], "req-42");
    // The upstream continues the client's trace under the gateway's own span.
    let traceparent = headers["traceparent"].as_str().unwrap();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", "0af7651916cd43dd8448eb211c80319c", "01"),
        "same trace, sampled: {traceparent}"
    );
    assert_eq!(parts[2].len(), 16);
    assert_ne!(
        parts[2], "b7ad6b7169203331",
        "the gateway's span is the parent"
    );
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert!(
        headers["x-forwarded-host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(
        headers.get("x-client-hop").is_none(),
        "hop-by-hop from the client dropped"
    );
}

#[tokio::test]
async fn an_unknown_route_is_a_404_problem() {
    let catalog = upstream("catalog", "127.0.0.2", false);
    let (gateway, _stop) = gateway(&format!("/api/catalog={}", catalog.url), &[]).await;

    let response = reqwest::get(format!("{gateway}/api/catalogue/products"))
        .await
        .unwrap();

    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

#[tokio::test]
async fn load_spreads_over_every_endpoint() {
    let upstreams = [
        upstream("a", "127.0.0.2", false),
        upstream("b", "127.0.0.3", false),
        upstream("c", "127.0.0.4", false),
    ];
    let urls: Vec<&str> = upstreams.iter().map(|u| u.url.as_str()).collect();
    let (gateway, _stop) = gateway(&format!("/api/x={}", urls.join(",")), &[]).await;
    let client = reqwest::Client::new();

    let mut served: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        let batch: Vec<_> = (0..30)
            .map(|_| {
                let (client, url) = (client.clone(), format!("{gateway}/api/x/item"));
                tokio::spawn(async move {
                    client.get(url).send().await.unwrap().headers()["x-upstream"]
                        .to_str()
                        .unwrap()
                        .to_owned()
                })
            })
            .collect();
        for request in batch {
            *served.entry(request.await.unwrap()).or_default() += 1;
        }
    }

    assert_eq!(served.values().sum::<usize>(), 300);
    for name in ["a", "b", "c"] {
        assert!(served.get(name).copied().unwrap_or(0) >= 50, "{served:?}");
    }
}

#[tokio::test]
async fn idempotent_requests_survive_a_dead_and_a_broken_endpoint() {
    let good = upstream("good", "127.0.0.2", false);
    let broken = upstream("broken", "127.0.0.3", true);
    let (gateway, _stop) = gateway(
        &format!("/api/x={},{},{}", good.url, broken.url, dead_url()),
        &[],
    )
    .await;
    let client = reqwest::Client::new();

    for _ in 0..60 {
        let response = client
            .get(format!("{gateway}/api/x/item"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-upstream"], "good");
    }
    // A POST with an Idempotency-Key may be retried too.
    for _ in 0..20 {
        let response = client
            .post(format!("{gateway}/api/x/orders"))
            .header("idempotency-key", "k")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// A stopped endpoint left in rotation: every GET sent to it is retried on the live one.
#[tokio::test]
async fn gets_sent_to_a_stopped_endpoint_are_retried_on_the_live_one() {
    let a = upstream("a", "127.0.0.2", false);
    let b = upstream("b", "127.0.0.3", false);
    let (gateway, _stop) = stopped_endpoint_in_rotation(&a, &b).await;
    let client = reqwest::Client::new();

    b.stop().await;

    for _ in 0..40 {
        let response = client
            .get(format!("{gateway}/api/x/item"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "GETs are retried on the live endpoint"
        );
    }
}

/// A POST without an Idempotency-Key may not be sent twice: the one that goes to the stopped
/// endpoint fails (`502`), and the live endpoint never sees it. (Its streamed body went with the
/// refused connection; the worker used to panic trying the next endpoint with it, dropping the
/// client's connection without an answer.)
#[tokio::test]
async fn a_post_without_a_key_sent_to_a_stopped_endpoint_is_not_retried() {
    let a = upstream("a", "127.0.0.2", false);
    let b = upstream("b", "127.0.0.3", false);
    let (gateway, _stop) = stopped_endpoint_in_rotation(&a, &b).await;
    let client = reqwest::Client::new();

    b.stop().await;

    let mut failed = None;
    for _ in 0..40 {
        let hits = a.hits();
        let response = client
            .post(format!("{gateway}/api/x/orders"))
            .body("{}")
            .send()
            .await
            .unwrap();
        if response.status() != 200 {
            failed = Some((response.status(), a.hits() - hits));
            break;
        }
        assert_eq!(
            a.hits(),
            hits + 1,
            "a POST answered 200 by the live endpoint"
        );
    }
    let (status, sent_to_live) = failed.expect("one of 40 POSTs goes to the stopped endpoint");
    assert_eq!(status, 502, "the POST that reached no endpoint fails");
    assert_eq!(sent_to_live, 0, "and is not retried on the live endpoint");
}

/// A gateway over `a` and `b`, warmed up, where neither health checks nor ejection take an
/// endpoint out of rotation: once stopped, requests keep being sent to it. `a` answers 5 ms
/// late, so that the balancer, which weighs latency, still prefers `b` once `b` is stopped
/// (until a failed attempt there counts against it).
async fn stopped_endpoint_in_rotation(
    a: &crate::helpers::Upstream,
    b: &crate::helpers::Upstream,
) -> (String, crate::helpers::TestGateway) {
    a.set_slow(5);
    let (gateway, stop) = gateway(
        &format!("/api/x={},{}", a.url, b.url),
        &[
            ("HEALTH_CHECK_INTERVAL_MS", "0"),
            ("EJECT_AFTER_FAILURES", "1000"),
        ],
    )
    .await;
    assert_eq!(
        reqwest::get(format!("{gateway}/api/x/warm"))
            .await
            .unwrap()
            .status(),
        200
    );
    (gateway, stop)
}

#[tokio::test]
async fn every_endpoint_down_is_a_502_problem() {
    let (gateway, _stop) = gateway(&format!("/api/x={},{}", dead_url(), dead_url()), &[]).await;

    let response = reqwest::get(format!("{gateway}/api/x/item")).await.unwrap();

    assert_eq!(response.status(), 502);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

#[tokio::test]
async fn large_bodies_stream_through_both_ways() {
    let echo = upstream("echo", "127.0.0.2", false);
    let (gateway, _stop) = gateway(
        &format!("/api/x={}", echo.url),
        &[("MAX_BODY_BYTES", "8388608")],
    )
    .await;
    let body: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect();

    let response = reqwest::Client::new()
        .post(format!("{gateway}/api/x/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), body.as_slice());
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let echo = upstream("echo", "127.0.0.2", false);
    let (gateway, _stop) = gateway(
        &format!("/api/x={}", echo.url),
        &[("MAX_BODY_BYTES", "1024")],
    )
    .await;

    let declared = reqwest::Client::new()
        .post(format!("{gateway}/api/x/echo"))
        .body(vec![0u8; 4096])
        .send()
        .await
        .unwrap();
    let buffered = reqwest::Client::new()
        .put(format!("{gateway}/api/x/echo"))
        .body(vec![0u8; 4096])
        .send()
        .await
        .unwrap();

    assert_eq!(declared.status(), 413);
    assert_eq!(buffered.status(), 413);
}

/// Writes `request` on `stream` and reads the answer's first bytes.
async fn exchange(stream: &mut tokio::net::TcpStream, request: &[u8]) -> String {
    stream.write_all(request).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = stream.read(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

#[tokio::test]
async fn ambiguous_framing_is_refused() {
    let echo = upstream("echo", "127.0.0.2", false);
    let (gateway, _stop) = gateway(&format!("/api/x={}", echo.url), &[]).await;
    let address = gateway.trim_start_matches("http://");
    let cl_first: &[u8] = b"POST /api/x/echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let te_first: &[u8] = b"POST /api/x/echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n";

    for smuggling in [cl_first, te_first] {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let answer = exchange(&mut stream, smuggling).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    // Behind a well-framed request on a kept-alive connection, too.
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let first = exchange(
        &mut stream,
        b"POST /api/x/echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let second = exchange(&mut stream, te_first).await;
    assert!(second.starts_with("HTTP/1.1 400"), "{second}");
    assert_eq!(echo.hits(), 1, "no ambiguous request reached the upstream");
}

#[tokio::test]
async fn invented_methods_share_one_metric_series() {
    let echo = upstream("echo", "127.0.0.2", false);
    let (gateway, stop) = gateway(&format!("/api/x={}", echo.url), &[]).await;
    let client = reqwest::Client::new();
    for method in ["BREW", "WHEN", "GET"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = client
            .request(method, format!("{gateway}/api/x/pot"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    let metrics = stop.metrics().await;
    let forwarded: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("dockyard_http_requests_total{") && l.contains("/{path:.*}"))
        .collect();
    assert!(
        forwarded
            .iter()
            .any(|l| l.contains(r#"method="other""#) && l.ends_with(" 2")),
        "{forwarded:?}"
    );
    assert!(
        forwarded.iter().any(|l| l.contains(r#"method="GET""#)),
        "{forwarded:?}"
    );
    assert!(
        !metrics.contains("BREW") && !metrics.contains("WHEN"),
        "{metrics}"
    );
}
