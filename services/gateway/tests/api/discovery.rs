//! Discovery against a real DNS server on loopback whose answers the test changes, the way
//! Compose or a Kubernetes headless Service changes them when instances come and go.

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hickory_proto::{
    op::Message,
    rr::{RData, Record, RecordType, rdata::A},
};
use tokio::net::UdpSocket;

use crate::helpers::{TestGateway, eventually, gateway_with, upstream, upstream_on};

/// A DNS server answering every A query with the current `addresses` (TTL 0).
struct TestDns {
    port: u16,
    addresses: Arc<Mutex<Vec<Ipv4Addr>>>,
}

impl TestDns {
    async fn start(addresses: &[Ipv4Addr]) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let shared = Arc::new(Mutex::new(addresses.to_vec()));
        let answers = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut buffer = [0u8; 512];
            while let Ok((read, peer)) = socket.recv_from(&mut buffer).await {
                let Ok(query) = Message::from_vec(&buffer[..read]) else {
                    continue;
                };
                let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                for question in &query.queries {
                    reply.add_query(question.clone());
                    if question.query_type() == RecordType::A {
                        for ip in answers.lock().unwrap().iter() {
                            reply.add_answer(Record::from_rdata(
                                question.name().clone(),
                                0,
                                RData::A(A(*ip)),
                            ));
                        }
                    }
                }
                let _ = socket.send_to(&reply.to_vec().unwrap(), peer).await;
            }
        });
        Self {
            port,
            addresses: shared,
        }
    }

    fn set(&self, addresses: &[Ipv4Addr]) {
        *self.addresses.lock().unwrap() = addresses.to_vec();
    }
}

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

#[tokio::test]
async fn discovery_adds_a_new_instance_after_its_health_check_and_drops_a_gone_one() {
    let first = upstream("first", "127.0.0.2", false);
    let second = upstream_on("second", "127.0.0.3", first.port(), false);
    let (a, b) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let dns = TestDns::start(&[a]).await;
    let gateway = gateway_with(
        &format!("/api/x=http://catalog.dockyard.test:{}", first.port()),
        &[("DISCOVERY_NAMESERVER", &format!("127.0.0.1:{}", dns.port))],
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

    dns.set(&[a, b]);
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
    second.set_broken(true);
    eventually(5, "the second instance is out of rotation", || async {
        endpoint_states(&gateway)
            .await
            .contains(&(second_url.clone(), "unhealthy".to_owned()))
    })
    .await;
    let in_flight = tokio::spawn({
        let (client, slow) = (client.clone(), format!("{}/api/x/slow?ms=800", gateway.url));
        async move { client.get(slow).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    dns.set(&[b]);
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
