//! Discovery against a real DNS server on loopback whose answers the test changes, the way
//! Compose or a Kubernetes headless Service changes them when instances come and go.

use std::net::Ipv4Addr;

use dockyard_testkit::LocalDns;

use crate::helpers::{TestGateway, Upstream, eventually, gateway_with, upstream, upstream_on};

const NAME: &str = "catalog.dockyard.test";

async fn endpoint_states(gateway: &TestGateway) -> Vec<(String, String)> {
    let view = gateway.upstreams().await;
    view["routes"][0]["pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["url"].as_str().unwrap().to_owned(),
                e["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Makes `instance` fail its checks and waits until the gateway has it out of rotation.
async fn break_for_a_moment(gateway: &TestGateway, instance: &Upstream, url: &str) {
    instance.set_broken(true);
    eventually(5, "the instance is out of rotation", || async {
        endpoint_states(gateway)
            .await
            .contains(&(url.to_owned(), "unhealthy".to_owned()))
    })
    .await;
}

#[tokio::test]
async fn discovery_adds_a_new_instance_after_its_health_check_and_drops_a_gone_one() {
    let first = upstream("first", "127.0.0.2", false);
    let second = upstream_on("second", "127.0.0.3", first.port(), false);
    let (a, b) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let dns = LocalDns::start().await.unwrap();
    dns.set(NAME, &[a]);
    let gateway = gateway_with(
        &format!("/api/x=http://{NAME}:{}", first.port()),
        &[("DISCOVERY_NAMESERVER", &dns.address())],
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/x/item", gateway.url);
    let first_url = format!("http://127.0.0.2:{}", first.port());
    let second_url = format!("http://127.0.0.3:{}", first.port());
    assert_eq!(
        endpoint_states(&gateway).await,
        [(first_url.clone(), "healthy".to_owned())]
    );

    dns.set(NAME, &[a, b]);
    eventually(5, "the new instance joins", || async {
        endpoint_states(&gateway)
            .await
            .contains(&(second_url.clone(), "healthy".to_owned()))
    })
    .await;
    for _ in 0..40 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    assert!(second.hits() > 0, "the added instance takes traffic");

    // A slow request in flight on the first instance when it leaves DNS still finishes.
    // (The second fails its checks for a moment, so the request can only go to the first.)
    break_for_a_moment(&gateway, &second, &second_url).await;
    let before_slow = first.hits();
    let in_flight = tokio::spawn({
        let (client, slow) = (client.clone(), format!("{}/api/x/slow?ms=800", gateway.url));
        async move { client.get(slow).send().await.unwrap() }
    });
    // The first instance counts the request as it arrives, before it starts its 800 ms.
    eventually(5, "the slow request reaches the first instance", || async {
        first.hits() > before_slow
    })
    .await;
    dns.set(NAME, &[b]);
    second.set_broken(false);
    eventually(5, "the gone instance leaves", || async {
        endpoint_states(&gateway).await == [(second_url.clone(), "healthy".to_owned())]
    })
    .await;
    let first_hits = first.hits();
    for _ in 0..20 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    assert_eq!(
        first.hits(),
        first_hits,
        "no new request goes to the gone instance"
    );
    let finished = in_flight.await.unwrap();
    assert_eq!(finished.status(), 200, "its request in flight finished");
    assert_eq!(finished.headers()["x-upstream"], "first");
}

/// A partition looks like this to the gateway: the instance's address leaves DNS and its
/// connections go silent (no reset). A retryable request in flight on it waits the departure
/// grace (2 s), not the try time-out (10 s by default), and is answered by another instance.
#[tokio::test]
async fn a_request_in_flight_on_an_instance_that_left_dns_is_retried_after_the_grace() {
    let first = upstream("first", "127.0.0.2", false);
    let second = upstream_on("second", "127.0.0.3", first.port(), false);
    let (a, b) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let dns = LocalDns::start().await.unwrap();
    dns.set(NAME, &[a, b]);
    let gateway = gateway_with(
        &format!("/api/x=http://{NAME}:{}", first.port()),
        &[("DISCOVERY_NAMESERVER", &dns.address())],
    )
    .await;
    let second_url = format!("http://127.0.0.3:{}", first.port());
    eventually(5, "both instances in rotation", || async {
        endpoint_states(&gateway).await.len() == 2
            && endpoint_states(&gateway)
                .await
                .iter()
                .all(|(_, state)| state == "healthy")
    })
    .await;
    // Only the first can take the request: the second fails its checks for a moment.
    break_for_a_moment(&gateway, &second, &second_url).await;
    let before = first.hits();
    let client = reqwest::Client::new();
    // Answers a minute away (health checks still pass): to the gateway, as silent as a
    // partitioned instance.
    first.set_slow(60_000);
    let started = std::time::Instant::now();
    let hanging = tokio::spawn({
        let (client, url) = (client.clone(), format!("{}/api/x/item", gateway.url));
        async move { client.get(url).send().await.unwrap() }
    });
    eventually(5, "the request reaches the first instance", || async {
        first.hits() > before
    })
    .await;
    second.set_broken(false);
    dns.set(NAME, &[b]);
    let answered = hanging.await.unwrap();
    let took = started.elapsed();
    assert_eq!(answered.status(), 200);
    assert_eq!(answered.headers()["x-upstream"], "second");
    assert!(
        took < std::time::Duration::from_secs(5),
        "answered after {took:?}: the grace (2 s) plus discovery, not the try time-out (10 s)"
    );
}
