//! Connection abuse against the gateway as a process limited to 1,024 descriptors
//! (`ulimit -n 1024`), as an attacker on loopback would try it: slow headers, idle sockets,
//! descriptor exhaustion. Bounded in count and time.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    process::Child,
};

use crate::helpers::{ADMIN_TOKEN, upstream};

/// The gateway binary, run by a shell that lowers its descriptor limit to 1,024 first.
struct Limited {
    address: SocketAddr,
    admin: String,
    _child: Child,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn limited_gateway(routes: &str, vars: &[(&str, &str)]) -> Limited {
    let (port, admin_port) = (free_port(), free_port());
    let (port_text, admin_text) = (port.to_string(), admin_port.to_string());
    let mut all = vec![
        ("ROUTES", routes),
        ("HOST", "127.0.0.1"),
        ("PORT", port_text.as_str()),
        ("ADMIN_PORT", admin_text.as_str()),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("HEALTH_CHECK_INTERVAL_MS", "200"),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "warn"),
        ("PATH", "/usr/bin:/bin"),
    ];
    all.extend_from_slice(vars);
    let child = dockyard_testkit::process("/bin/bash", &all)
        .args([
            "-c",
            "ulimit -n 1024 && exec \"$0\" serve",
            env!("CARGO_BIN_EXE_gateway"),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let gateway = Limited {
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        admin: format!("http://127.0.0.1:{admin_port}"),
        _child: child,
    };
    let ready = format!("http://{}/health/ready", gateway.address);
    let started = Instant::now();
    while !reqwest::get(&ready)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(started.elapsed() < Duration::from_secs(10), "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway
}

/// A connection from `ip` (a loopback address of the client's own).
async fn connect_from(ip: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((ip, 0)))?;
    socket.connect(to).await
}

/// Reads until the gateway closes the connection; what it sent, and when it closed.
async fn until_closed(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut received = Vec::new();
    let mut buffer = [0_u8; 1024];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return (received, Instant::now()),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test]
async fn slow_headers_are_answered_408_and_closed_within_the_header_timeout() {
    let echo = upstream("echo", "127.0.0.2", false);
    let gateway =
        limited_gateway(&format!("/api/x={}", echo.url), &[("HEADER_TIMEOUT", "2s")]).await;
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let address = gateway.address;
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(address).await.unwrap();
                let started = Instant::now();
                stream
                    .write_all(b"GET /api/x/item HTTP/1.1\r\n")
                    .await
                    .unwrap();
                // One header byte every 300 ms, for as long as the connection lasts.
                let (mut reader, mut writer) = stream.into_split();
                let trickle = tokio::spawn(async move {
                    for byte in b"Host: gateway.example\r\nX-Slow: yes".iter().cycle() {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        if writer.write_all(&[*byte]).await.is_err() {
                            return;
                        }
                    }
                });
                let mut received = Vec::new();
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    reader.read_to_end(&mut received),
                )
                .await;
                trickle.abort();
                (received, started.elapsed())
            })
        })
        .collect();
    for client in clients {
        let (received, after) = client.await.unwrap();
        let answer = String::from_utf8_lossy(&received);
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout"),
            "answered {answer:?}"
        );
        assert!(
            after < Duration::from_secs(3),
            "closed after {after:?}, over the 2 s header timeout + 1 s"
        );
    }
}

#[tokio::test]
async fn idle_connections_are_closed_within_the_idle_timeout() {
    let echo = upstream("echo", "127.0.0.2", false);
    let gateway = limited_gateway(
        &format!("/api/x={}", echo.url),
        &[("KEEPALIVE_IDLE_TIMEOUT", "2s"), ("HEADER_TIMEOUT", "2s")],
    )
    .await;
    // Each connection sends one request and keeps the connection open; whether it was
    // answered (and idles out) or made room for another at the budget, the gateway closes it.
    let clients: Vec<_> = (0..2_000)
        .map(|_| {
            let address = gateway.address;
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(address).await.unwrap();
                let _ = stream
                    .write_all(b"GET /api/x/item HTTP/1.1\r\nHost: g\r\n\r\n")
                    .await;
                let sent = Instant::now();
                let (received, closed) =
                    tokio::time::timeout(Duration::from_secs(10), until_closed(&mut stream))
                        .await
                        .expect("the gateway closes every idle connection");
                (received, closed.duration_since(sent))
            })
        })
        .collect();
    let mut answered = 0;
    for client in clients {
        let (received, after) = client.await.unwrap();
        if received.starts_with(b"HTTP/1.1 200") {
            answered += 1;
        }
        assert!(
            after < Duration::from_secs(3) + Duration::from_millis(500),
            "closed {after:?} after its request: over the 2 s idle timeout + 1 s (plus the answer)"
        );
    }
    assert!(
        answered > 0,
        "some connections were served before they idled"
    );
}

#[tokio::test]
async fn one_client_holding_1100_silent_sockets_costs_other_clients_nothing() {
    let echo = upstream("echo", "127.0.0.2", false);
    let gateway = limited_gateway(
        &format!("/api/x={}", echo.url),
        // Time limits out of the way: the budget is what is tested.
        &[("HEADER_TIMEOUT", "60s"), ("KEEPALIVE_IDLE_TIMEOUT", "60s")],
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..1_100 {
        if let Ok(stream) = connect_from([127, 0, 0, 5], gateway.address).await {
            silent.push(stream);
        }
    }
    assert!(silent.len() >= 1_000, "the attacker holds {}", silent.len());

    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 6]))
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    for n in 0..20 {
        let started = Instant::now();
        let response = client
            .get(format!("http://{}/api/x/item", gateway.address))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {n} failed: {e}"));
        assert_eq!(response.status(), 200, "request {n}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // The admin listener and the health checks keep answering too.
        let upstreams: serde_json::Value = client
            .get(format!("{}/upstreams", gateway.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            upstreams["routes"][0]["pools"][0]["endpoints"][0]["state"], "healthy",
            "{upstreams}"
        );
    }
    let metrics = client
        .get(format!("{}/metrics", gateway.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("dockyard_gateway_connections_closed_total{reason=\"evicted\"}"),
        "silent connections made room: {}",
        metrics
            .lines()
            .filter(|l| l.contains("connections"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(silent);
}

#[tokio::test]
async fn a_stalled_body_is_cut_with_408_within_the_body_timeout() {
    let echo = upstream("echo", "127.0.0.2", false);
    let gateway = limited_gateway(&format!("/api/x={}", echo.url), &[("BODY_TIMEOUT", "1s")]).await;
    for idempotent in [true, false] {
        let mut stream = TcpStream::connect(gateway.address).await.unwrap();
        // A retryable request's body is buffered first; a plain POST's is streamed upstream.
        let key = if idempotent {
            "Idempotency-Key: k\r\n"
        } else {
            ""
        };
        let head = format!(
            "POST /api/x/echo HTTP/1.1\r\nHost: g\r\n{key}Content-Length: 100\r\n\r\n0123456789"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let (received, closed) =
            tokio::time::timeout(Duration::from_secs(10), until_closed(&mut stream))
                .await
                .expect("the stalled body is cut");
        let answer = String::from_utf8_lossy(&received);
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "idempotent {idempotent}: answered {answer:?}"
        );
        assert!(closed.duration_since(started) < Duration::from_secs(2));
    }
}
