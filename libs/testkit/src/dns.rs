//! A DNS server on loopback whose answers the caller changes: every `A` query for a name it
//! knows is answered with that name's current addresses, with TTL 0. It stands in for what
//! Compose's DNS or a Kubernetes headless Service does as instances come and go, so the
//! gateway's discovery is exercised over real DNS (point it there with
//! `DISCOVERY_NAMESERVER`).

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RData, Record, RecordType, rdata::A},
};
use tokio::net::UdpSocket;

type Zone = Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>;

/// The server; it stops when dropped.
#[derive(Debug)]
pub struct LocalDns {
    port: u16,
    zone: Zone,
    task: tokio::task::JoinHandle<()>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl LocalDns {
    /// Starts on `127.0.0.1` and a free UDP port.
    pub async fn start() -> std::io::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let port = socket.local_addr()?.port();
        let zone = Zone::default();
        let answers = Arc::clone(&zone);
        let task = tokio::spawn(async move {
            let mut buffer = [0u8; 512];
            while let Ok((read, peer)) = socket.recv_from(&mut buffer).await {
                let Ok(query) = Message::from_vec(&buffer[..read]) else {
                    continue;
                };
                let reply = answer(&query, &answers);
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        Ok(Self { port, zone, task })
    }

    /// `127.0.0.1:<port>`, for `DISCOVERY_NAMESERVER`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Replaces the addresses of `name`.
    pub fn set(&self, name: &str, addresses: &[Ipv4Addr]) {
        self.zone
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key(name), addresses.to_vec());
    }
}

impl Drop for LocalDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(query: &Message, zone: &Zone) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    let zone = zone
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for question in &query.queries {
        reply.add_query(question.clone());
        let Some(addresses) = zone.get(&key(&question.name().to_string())) else {
            reply.metadata.response_code = ResponseCode::NXDomain;
            continue;
        };
        if question.query_type() == RecordType::A {
            for ip in addresses {
                reply.add_answer(Record::from_rdata(
                    question.name().clone(),
                    0,
                    RData::A(A(*ip)),
                ));
            }
        }
    }
    reply
}
