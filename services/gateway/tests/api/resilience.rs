use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{dead_url, gateway_with, upstream};

#[tokio::test]
async fn a_failing_pool_opens_its_breaker_then_recovers() {
    let flaky = upstream("flaky", "127.0.0.2", true);
    let gateway = gateway_with(
        &format!("/api/x={}", flaky.url),
        &[
            ("BREAKER_WINDOW", "10"),
            ("BREAKER_MIN_CALLS", "5"),
            ("BREAKER_OPEN_MS", "300"),
            ("EJECT_AFTER_FAILURES", "1000"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let get = || client.get(format!("{}/api/x/item", gateway.url)).send();

    for _ in 0..5 {
        assert_eq!(get().await.unwrap().status(), 500, "the failure is relayed");
    }
    let hits = flaky.hits();
    let refused = get().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(
        flaky.hits(),
        hits,
        "an open breaker does not call the upstream"
    );
    let view = gateway.upstreams().await;
    assert_eq!(view["routes"][0]["pools"][0]["breaker"], "open");

    flaky.set_broken(false);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        get().await.unwrap().status(),
        200,
        "the half-open probe passes"
    );
    for _ in 0..5 {
        assert_eq!(get().await.unwrap().status(), 200, "closed again");
    }
}

#[tokio::test]
async fn a_canary_with_an_open_breaker_falls_back_to_the_stable_pool() {
    let stable = upstream("stable", "127.0.0.2", false);
    let canary = upstream("canary", "127.0.0.3", true);
    let gateway = gateway_with(
        &format!("/api/x={}", stable.url),
        &[
            ("CANARY_ROUTES", &format!("/api/x={}", canary.url)),
            ("CANARY_WEIGHT", "100"),
            ("BREAKER_MIN_CALLS", "5"),
            ("BREAKER_OPEN_MS", "60000"),
        ],
    )
    .await;
    let client = reqwest::Client::new();

    let mut statuses = Vec::new();
    for _ in 0..30 {
        let response = client
            .get(format!("{}/api/x/item", gateway.url))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }

    assert!(
        statuses[..5].iter().all(|s| *s == 500),
        "the canary fails: {statuses:?}"
    );
    assert!(
        statuses[5..].iter().all(|s| *s == 200),
        "then its share goes to stable: {statuses:?}"
    );
    assert_eq!(stable.hits(), 25);
    let view = gateway.upstreams().await;
    let canary_pool = &view["routes"][0]["pools"][1];
    assert_eq!(
        (&canary_pool["pool"], &canary_pool["breaker"]),
        (&Value::from("canary"), &Value::from("open"))
    );
}

#[tokio::test]
async fn retries_stop_when_the_budget_is_spent() {
    let good = upstream("good", "127.0.0.2", false);
    let gateway = gateway_with(
        &format!("/api/x={},{}", good.url, dead_url()),
        &[
            ("RETRY_BUDGET_PERCENT", "0"),
            ("RETRY_MIN_PER_SEC", "0"),
            ("HEALTH_CHECK_INTERVAL_MS", "0"),
            ("EJECT_AFTER_FAILURES", "1000"),
            ("BREAKER_MIN_CALLS", "20"),
            ("BREAKER_FAILURE_PERCENT", "100"),
        ],
    )
    .await;
    let client = reqwest::Client::new();

    let mut failed = 0;
    for _ in 0..40 {
        let response = client
            .get(format!("{}/api/x/item", gateway.url))
            .send()
            .await
            .unwrap();
        if response.status() != 200 {
            assert_eq!(response.status(), 502);
            failed += 1;
        }
    }

    assert!(
        failed > 0,
        "without budget, a request on the dead instance is not retried"
    );
    let metrics = client
        .get(format!("{}/metrics", gateway.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = format!("dockyard_gateway_retries_refused_total{{route=\"x\"}} {failed}");
    assert!(metrics.contains(&refused), "{refused} in\n{metrics}");
    assert!(metrics.contains(
        "dockyard_gateway_upstream_attempts_total{route=\"x\",pool=\"blue\",endpoint=\"127.0.0.9"
    ));
}

#[tokio::test]
async fn the_overall_timeout_bounds_every_attempt_together() {
    let a = upstream("a", "127.0.0.2", false);
    let b = upstream("b", "127.0.0.3", false);
    let gateway = gateway_with(
        &format!("/api/x={},{}", a.url, b.url),
        &[
            ("UPSTREAM_TRY_TIMEOUT_MS", "500"),
            ("UPSTREAM_TIMEOUT_MS", "700"),
        ],
    )
    .await;

    let started = Instant::now();
    let response = reqwest::get(format!("{}/api/x/slow?ms=3000", gateway.url))
        .await
        .unwrap();

    assert_eq!(response.status(), 504);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "two 500 ms tries are cut at 700 ms, took {:?}",
        started.elapsed()
    );
}
