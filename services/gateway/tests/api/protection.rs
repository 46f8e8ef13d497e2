use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, gateway_with, upstream};

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let service = upstream("svc", "127.0.0.2", false);
    let gateway = gateway_with(
        &format!("/api/x={}", service.url),
        &[("RATE_LIMIT_PER_SEC", "1"), ("RATE_LIMIT_BURST", "5")],
    )
    .await;
    let client = reqwest::Client::new();

    let mut statuses = Vec::new();
    for _ in 0..8 {
        let response = client
            .get(format!("{}/api/x/item", gateway.url))
            .header("x-forwarded-for", format!("198.51.100.{}", statuses.len()))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert_eq!(response.headers()["retry-after"], "1");
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["status"], 429);
        }
    }

    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429],
        "X-Forwarded-For from an untrusted peer is ignored"
    );
    let health = client
        .get(format!("{}/health/ready", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "probes are not rate limited");
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let service = upstream("svc", "127.0.0.2", false);
    let gateway = gateway_with(
        &format!("/api/x={}", service.url),
        &[
            ("RATE_LIMIT_PER_SEC", "1"),
            ("RATE_LIMIT_BURST", "2"),
            ("TRUSTED_PROXIES", "127.0.0.0/8"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let get = |client_ip: &str| {
        client
            .get(format!("{}/api/x/item", gateway.url))
            .header("x-forwarded-for", client_ip)
            .send()
    };

    let mut statuses = Vec::new();
    for ip in [
        "203.0.113.1",
        "203.0.113.1",
        "203.0.113.1",
        "203.0.113.2",
        "203.0.113.2",
    ] {
        statuses.push(get(ip).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200]);

    let seen: Value = get("203.0.113.3").await.unwrap().json().await.unwrap();
    assert_eq!(
        seen["headers"]["x-forwarded-for"], "203.0.113.3, 127.0.0.1",
        "a trusted proxy's chain is kept and extended"
    );
}

#[tokio::test]
async fn the_admin_api_wants_the_bearer_token() {
    let service = upstream("svc", "127.0.0.2", false);
    let gateway = gateway_with(&format!("/api/x={}", service.url), &[]).await;
    let admin = gateway.admin.clone();
    let client = reqwest::Client::new();

    let without = client
        .get(format!("{admin}/upstreams"))
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), 401);
    assert_eq!(without.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        without.headers()["content-type"],
        "application/problem+json"
    );
    for wrong in [
        "wrong",
        "test-admin-token-012345678",
        "test-admin-token-01234567890",
    ] {
        let response = client
            .put(format!("{admin}/upstreams/x/active"))
            .bearer_auth(wrong)
            .json(&json!({"pool": "blue"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{wrong}");
    }

    let listed = client
        .get(format!("{admin}/upstreams"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let view: Value = listed.json().await.unwrap();
    let pool = &view["routes"][0]["pools"][0];
    assert_eq!(view["routes"][0]["route"], "x");
    assert_eq!(pool["endpoints"][0]["url"], service.url);
    assert_eq!(pool["endpoints"][0]["state"], "healthy");
}

#[tokio::test]
async fn admin_changes_that_cannot_be_made_are_problems() {
    let service = upstream("svc", "127.0.0.2", false);
    let gateway = gateway_with(&format!("/api/x={}", service.url), &[]).await;

    let cases = [
        ("/upstreams/nope/active", json!({"pool": "green"}), 404),
        ("/upstreams/x/active", json!({"pool": "green"}), 409),
        ("/upstreams/x/active", json!({"pool": "purple"}), 422),
        ("/upstreams/x/canary", json!({"weight": 10}), 409),
        ("/upstreams/x/canary", json!({"weight": "ten"}), 422),
    ];
    for (path, body, expected) in cases {
        let (status, problem) = gateway.admin_put(path, body.clone()).await;
        assert_eq!(status, expected, "{path} {body}: {problem}");
        assert_eq!(problem["status"], expected);
    }
}

/// A client that connects from `ip` (every 127.0.0.0/8 address is loopback).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .build()
        .unwrap()
}

/// A body sent chunked (no `Content-Length`): `chunks` pieces of 1 KiB.
fn chunked(chunks: usize) -> reqwest::Body {
    let pieces = (0..chunks).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 1024]));
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

/// One raw request from `ip` with both `Content-Length` and `Transfer-Encoding`.
async fn smuggle_from(ip: [u8; 4], gateway: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind((std::net::Ipv4Addr::from(ip), 0).into())
        .unwrap();
    let mut stream = socket
        .connect(gateway.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    stream
        .write_all(b"POST /api/x/echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 64];
    let read = stream.read(&mut answer).await.unwrap_or(0);
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

#[tokio::test]
async fn one_client_sending_bad_requests_never_fails_another_clients_reads() {
    let service = upstream("svc", "127.0.0.2", false);
    let gateway = gateway_with(
        &format!("/api/x={}", service.url),
        &[
            ("RATE_LIMIT_PER_SEC", "50"),
            ("RATE_LIMIT_BURST", "50"),
            ("MAX_BODY_BYTES", "1024"),
            ("BREAKER_MIN_CALLS", "5"),
            ("EJECT_AFTER_FAILURES", "3"),
        ],
    )
    .await;
    let url = gateway.url.clone();
    let stop = tokio::time::Instant::now() + std::time::Duration::from_secs(3);

    // The attacker: bursts of ten concurrent bad requests four times a second (40 a second,
    // under its rate limit), every kind in turn: ones the upstream answers 500 (a bug the input
    // triggers), bodies over the limit (declared, buffered and chunked), smuggling attempts,
    // unknown routes.
    let attacker = tokio::spawn({
        let url = url.clone();
        async move {
            let client = client_from([127, 0, 0, 5]);
            let mut statuses = Vec::new();
            while tokio::time::Instant::now() < stop {
                let burst = (0..10).map(|turn| {
                    let (client, url) = (client.clone(), url.clone());
                    async move {
                        let sent = match turn % 6 {
                            0 => client.get(format!("{url}/api/x/fail")).send().await,
                            1 => {
                                client
                                    .post(format!("{url}/api/x/fail"))
                                    .header("idempotency-key", format!("k{turn}"))
                                    .body("{}")
                                    .send()
                                    .await
                            }
                            2 => {
                                client
                                    .post(format!("{url}/api/x/echo"))
                                    .body(vec![0u8; 4096])
                                    .send()
                                    .await
                            }
                            3 => {
                                client
                                    .post(format!("{url}/api/x/echo"))
                                    .body(chunked(8))
                                    .send()
                                    .await
                            }
                            4 => client.get(format!("{url}/nowhere")).send().await,
                            _ => {
                                let line = smuggle_from([127, 0, 0, 5], &url).await;
                                return line.get(9..12).unwrap_or("???").to_owned();
                            }
                        };
                        sent.map_or_else(|e| format!("error {e}"), |r| r.status().to_string())
                    }
                });
                statuses.extend(futures_util::future::join_all(burst).await);
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            statuses
        }
    });
    let reader = client_from([127, 0, 0, 6]);
    let (mut reads, mut failures) = (0, Vec::new());
    while tokio::time::Instant::now() < stop {
        let response = reader.get(format!("{url}/api/x/item")).send().await;
        reads += 1;
        match response {
            Ok(response) if response.status() == 200 => {}
            Ok(response) => failures.push(response.status().to_string()),
            Err(error) => failures.push(error.to_string()),
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }

    let attacks = attacker.await.unwrap();
    assert!(attacks.len() > 80, "the attack ran: {}", attacks.len());
    assert!(
        !attacks.iter().any(|s| s.starts_with("429")),
        "the attacker stayed under its rate limit: {attacks:?}"
    );
    assert!(reads > 60, "{reads}");
    assert!(
        failures.is_empty(),
        "the reader saw {} failures: {failures:?}",
        failures.len()
    );
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_always_413_and_never_counts_against_the_upstream() {
    let echo = upstream("echo", "127.0.0.2", false);
    let gateway = gateway_with(
        &format!("/api/x={}", echo.url),
        &[
            ("MAX_BODY_BYTES", "1024"),
            ("BREAKER_MIN_CALLS", "5"),
            ("EJECT_AFTER_FAILURES", "3"),
        ],
    )
    .await;
    let client = reqwest::Client::new();

    let mut statuses = Vec::new();
    for _ in 0..12 {
        let response = client
            .post(format!("{}/api/x/echo", gateway.url))
            .body(chunked(16))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }

    assert_eq!(statuses, [413; 12]);
    let view = gateway.upstreams().await;
    let pool = &view["routes"][0]["pools"][0];
    assert_eq!(pool["breaker"], "closed", "{view}");
    assert_eq!(pool["endpoints"][0]["state"], "healthy", "{view}");
}
