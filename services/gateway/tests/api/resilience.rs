use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{gateway_with, upstream, upstream_on};

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
        assert_eq!(get().await.unwrap().status(), 503, "the failure is relayed");
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
        statuses[..5].iter().all(|s| *s == 503),
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
    // A live instance answering 503: retrying costs budget. (A refused connection never
    // reached an instance, so trying the next one costs none.)
    let broken = upstream("broken", "127.0.0.3", true);
    let gateway = gateway_with(
        &format!("/api/x={},{}", good.url, broken.url),
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
            assert_eq!(response.status(), 503, "the unhealthy answer is relayed");
            failed += 1;
        }
    }

    assert!(
        failed > 0,
        "without budget, a request on the dead instance is not retried"
    );
    let metrics = gateway.metrics().await;
    let refused = format!("dockyard_gateway_retries_refused_total{{route=\"x\"}} {failed}");
    assert!(metrics.contains(&refused), "{refused} in\n{metrics}");
    assert!(metrics.contains(
        "dockyard_gateway_upstream_attempts_total{route=\"x\",pool=\"blue\",endpoint=\"127.0.0.3"
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

#[tokio::test]
async fn a_retryable_request_waits_for_the_only_instance_to_come_back() {
    let first = upstream("first", "127.0.0.2", false);
    let port = first.port();
    let gateway = gateway_with(&format!("/api/x={}", first.url), &[]).await;
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("{}/api/x/warm", gateway.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // A restart in place: the instance is gone for 600 ms, then listens again.
    first.stop().await;
    let restarted = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        upstream_on("second", "127.0.0.2", port, false)
    });
    let started = Instant::now();
    let keyed = client
        .post(format!("{}/api/x/orders", gateway.url))
        .header("idempotency-key", "k-1")
        .body("{}")
        .send();
    let read = client.get(format!("{}/api/x/item", gateway.url)).send();
    let unkeyed = client
        .post(format!("{}/api/x/orders", gateway.url))
        .body("{}")
        .send();
    let (keyed, read, unkeyed) = tokio::join!(keyed, read, unkeyed);
    let _second = restarted.await.unwrap();

    assert_eq!(
        keyed.unwrap().status(),
        200,
        "a keyed POST waits for the instance"
    );
    let read = read.unwrap();
    assert_eq!(read.status(), 200, "so does a GET");
    assert_eq!(read.headers()["x-upstream"], "second");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(
        unkeyed.unwrap().status(),
        502,
        "a POST that may not be repeated is not held (its body streams once)"
    );
}

#[tokio::test]
async fn an_instance_passing_its_health_check_ends_the_breakers_open_period() {
    let flaky = upstream("flaky", "127.0.0.2", true);
    let gateway = gateway_with(
        &format!("/api/x={}", flaky.url),
        &[
            ("BREAKER_WINDOW", "10"),
            ("BREAKER_MIN_CALLS", "5"),
            ("BREAKER_OPEN_MS", "60000"),
            ("EJECT_AFTER_FAILURES", "1000"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let get = || client.get(format!("{}/api/x/item", gateway.url)).send();
    for _ in 0..5 {
        assert_eq!(get().await.unwrap().status(), 503);
    }
    assert_eq!(
        gateway.upstreams().await["routes"][0]["pools"][0]["breaker"],
        "open"
    );

    flaky.set_broken(false);

    let started = Instant::now();
    let mut status = 0;
    while started.elapsed() < Duration::from_secs(3) {
        status = get().await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status, 200,
        "closed again long before its 60 s open period ends"
    );
}

#[tokio::test]
async fn a_load_shedding_503_is_relayed_once_and_never_held_against_the_instance() {
    let (first, second) = (
        upstream("first", "127.0.0.2", false),
        upstream("second", "127.0.0.3", false),
    );
    let gateway = gateway_with(
        &format!("/api/x={},{}", first.url, second.url),
        &[
            ("BREAKER_WINDOW", "10"),
            ("BREAKER_MIN_CALLS", "5"),
            ("BREAKER_OPEN_MS", "60000"),
            ("EJECT_AFTER_FAILURES", "2"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    for _ in 0..20 {
        // Retryable (an Idempotency-Key): a plain 503 would be tried on the other instance.
        let shed = client
            .post(format!("{}/api/x/shed", gateway.url))
            .header("idempotency-key", "k")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(shed.status(), 503);
        assert_eq!(shed.headers()["retry-after"], "1", "relayed as it came");
        assert_eq!(
            shed.headers()[dockyard_runtime::problem::SHED_HEADER],
            "overloaded"
        );
    }
    assert_eq!(
        first.hits() + second.hits(),
        20,
        "each shed request was sent once"
    );
    let view = gateway.upstreams().await;
    let pool = &view["routes"][0]["pools"][0];
    assert_eq!(pool["breaker"], "closed", "{view}");
    for endpoint in pool["endpoints"].as_array().unwrap() {
        assert_eq!(endpoint["state"], "healthy", "not ejected: {view}");
    }
    let get = client.get(format!("{}/api/x/item", gateway.url)).send();
    assert_eq!(get.await.unwrap().status(), 200);
}

/// A slow instance that passes its health checks (a lossy link, a struggling host) loses its
/// traffic: the balancer weighs latency, not only requests in flight. Before it did, one
/// client's sequential reads (never more than one in flight) went half to the slow one.
#[tokio::test]
async fn a_slow_instance_that_passes_its_checks_gets_almost_no_reads() {
    let fast = upstream("fast", "127.0.0.2", false);
    let slow = upstream("slow", "127.0.0.3", false);
    let gateway = gateway_with(&format!("/api/x={},{}", fast.url, slow.url), &[]).await;
    let client = reqwest::Client::new();
    let get = || client.get(format!("{}/api/x/item", gateway.url)).send();
    for _ in 0..20 {
        assert_eq!(get().await.unwrap().status(), 200, "warming both up");
    }
    slow.set_slow(200);
    let before = slow.hits();
    let mut worst = Duration::ZERO;
    for _ in 0..300 {
        let started = Instant::now();
        assert_eq!(get().await.unwrap().status(), 200);
        worst = worst.max(started.elapsed());
    }
    let to_slow = slow.hits() - before;
    assert!(
        to_slow <= 3,
        "{to_slow} of 300 reads went to the slow instance (worst {worst:?})"
    );
    assert!(fast.hits() >= 300, "the fast one served the rest");
}
