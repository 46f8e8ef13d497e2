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
    let admin = gateway.admin.clone().unwrap();
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
