use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use serde_json::json;

use crate::helpers::{eventually, gateway_with, upstream};

async fn served_by(client: &reqwest::Client, url: String, key: Option<String>) -> String {
    let mut request = client.get(url);
    if let Some(key) = key {
        request = request.header("x-client-id", key);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.headers()["x-upstream"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_canary_gets_its_weight_within_3_percent_over_10k_clients() {
    let stable = upstream("stable", "127.0.0.2", false);
    let canary = upstream("canary", "127.0.0.3", false);
    let gateway = gateway_with(
        &format!("/api/x={}", stable.url),
        &[
            ("CANARY_ROUTES", &format!("/api/x={}", canary.url)),
            ("CANARY_WEIGHT", "20"),
        ],
    )
    .await;
    let client = reqwest::Client::new();

    let mut to_canary = 0usize;
    for batch in 0..100 {
        let requests: Vec<_> = (0..100)
            .map(|i| {
                let (client, url) = (client.clone(), format!("{}/api/x/item", gateway.url));
                tokio::spawn(async move {
                    served_by(&client, url, Some(format!("user-{batch}-{i}"))).await
                })
            })
            .collect();
        for request in requests {
            to_canary += usize::from(request.await.unwrap() == "canary");
        }
    }

    // 20% ± 3 points of 10 000.
    assert!(
        (1_700..=2_300).contains(&to_canary),
        "canary got {to_canary} of 10 000"
    );
    assert_eq!(canary.hits(), to_canary);
}

#[tokio::test]
async fn a_client_stays_on_its_side_and_the_header_forces_a_side() {
    let stable = upstream("stable", "127.0.0.2", false);
    let canary = upstream("canary", "127.0.0.3", false);
    let gateway = gateway_with(
        &format!("/api/x={}", stable.url),
        &[("CANARY_ROUTES", &format!("/api/x={}", canary.url))],
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/x/item", gateway.url);

    let forced = client
        .get(&url)
        .header("x-canary", "always")
        .send()
        .await
        .unwrap();
    assert_eq!(forced.headers()["x-upstream"], "canary", "weight 0, forced");

    let (status, view) = gateway
        .admin_put("/upstreams/x/canary", json!({"weight": 50}))
        .await;
    assert_eq!((status, &view["canary_weight"]), (200, &json!(50)));
    for client_id in 0..20 {
        let key = format!("sticky-{client_id}");
        let first = served_by(&client, url.clone(), Some(key.clone())).await;
        for _ in 0..5 {
            assert_eq!(
                served_by(&client, url.clone(), Some(key.clone())).await,
                first
            );
        }
        let cookie = client
            .get(&url)
            .header("cookie", format!("theme=dark; dockyard_client={key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(cookie.headers()["x-upstream"].to_str().unwrap(), first);
    }
    let never = client
        .get(&url)
        .header("x-canary", "never")
        .header("x-client-id", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(never.headers()["x-upstream"], "stable");
}

#[tokio::test]
async fn a_blue_green_switch_under_load_fails_no_request() {
    let blue = upstream("blue", "127.0.0.2", false);
    let green = upstream("green", "127.0.0.3", false);
    let gateway = gateway_with(
        &format!("/api/x={}", blue.url),
        &[("GREEN_ROUTES", &format!("/api/x={}", green.url))],
    )
    .await;
    let client = reqwest::Client::new();
    let switched = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));

    let load: Vec<_> = (0..16)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{}/api/x/slow?ms=20", gateway.url));
            let (switched, stop) = (Arc::clone(&switched), Arc::clone(&stop));
            tokio::spawn(async move {
                let (mut total, mut failed, mut blue_after_switch) = (0, 0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let after_switch = switched.load(Ordering::Acquire);
                    let response = client.get(&url).send().await.unwrap();
                    total += 1;
                    if response.status() != 200 {
                        failed += 1;
                    } else if after_switch && response.headers()["x-upstream"] == "blue" {
                        blue_after_switch += 1;
                    }
                }
                (total, failed, blue_after_switch)
            })
        })
        .collect();
    // The load flows through blue before the switch, and through green after it.
    eventually(10, "blue takes the load", || async { blue.hits() >= 300 }).await;
    let (status, view) = gateway
        .admin_put("/upstreams/x/active", json!({"pool": "green"}))
        .await;
    assert_eq!((status, &view["active"]), (200, &json!("green")));
    switched.store(true, Ordering::Release);
    eventually(10, "green takes the load", || async { green.hits() >= 300 }).await;
    stop.store(true, Ordering::Relaxed);

    let (mut total, mut failed, mut blue_after_switch) = (0, 0, 0);
    for task in load {
        let (t, f, b) = task.await.unwrap();
        (total, failed, blue_after_switch) = (total + t, failed + f, blue_after_switch + b);
    }
    assert!(total > 200, "{total} requests");
    assert_eq!(failed, 0, "no request failed over the switch");
    assert_eq!(
        blue_after_switch, 0,
        "requests sent after the switch all went to green"
    );
    assert!(blue.hits() > 0 && green.hits() > 0);
}
