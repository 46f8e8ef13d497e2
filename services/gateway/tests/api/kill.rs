//! Killing an upstream *process* (SIGKILL: no drain, connections reset) under load.
//!
//! The upstreams are separate OS processes: this test binary started again with
//! `GATEWAY_TEST_UPSTREAM=<name>@<ip>`, running only [`upstream_process`], which serves the
//! echo upstream until its stdin closes or it is killed.

use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::helpers::{gateway_with, upstream};

const ROLE: &str = "GATEWAY_TEST_UPSTREAM";

/// Not a test of its own: the body of an upstream process, run only by `spawn_upstream`
/// (ignored in a normal run, so it never passes without doing anything).
#[test]
#[ignore = "the body of an upstream process that spawn_upstream starts"]
fn upstream_process() {
    let role = std::env::var(ROLE).expect("started by spawn_upstream, which sets the role");
    let (name, ip) = role.split_once('@').expect("name@ip");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let served = upstream(name, ip, false);
        println!("LISTENING {}", served.url);
        // Serve until the parent closes our stdin (or kills us).
        let _ = tokio::task::spawn_blocking(|| {
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())
        })
        .await;
    });
}

struct UpstreamProcess {
    url: String,
    child: Child,
}

async fn spawn_upstream(name: &str, ip: &str) -> UpstreamProcess {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "kill::upstream_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ROLE, format!("{name}@{ip}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some((_, url)) = line.split_once("LISTENING ") {
                return url.to_owned();
            }
        }
        panic!("the upstream process exited before listening");
    })
    .await
    .expect("the upstream process starts within 10 s");
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    UpstreamProcess { url, child }
}

#[derive(Default, Debug)]
struct Tally {
    sent: usize,
    failed: usize,
}

#[tokio::test]
async fn killing_an_upstream_mid_load_fails_no_retryable_request() {
    let mut processes = vec![
        spawn_upstream("a", "127.0.0.2").await,
        spawn_upstream("b", "127.0.0.3").await,
        spawn_upstream("c", "127.0.0.4").await,
    ];
    let urls: Vec<&str> = processes.iter().map(|p| p.url.as_str()).collect();
    let gateway = gateway_with(&format!("/api/x={}", urls.join(",")), &[]).await;
    let client = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));

    // 8 clients GET, 4 POST with an Idempotency-Key (both retryable), 4 POST without one.
    let kinds = [("get", 8), ("keyed", 4), ("plain", 4)];
    let mut tasks = Vec::new();
    for (kind, clients) in kinds {
        for _ in 0..clients {
            let (client, stop) = (client.clone(), Arc::clone(&stop));
            let url = format!("{}/api/x/slow?ms=10", gateway.url);
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    let request = match kind {
                        "get" => client.get(&url),
                        "keyed" => client
                            .post(&url)
                            .header("idempotency-key", format!("k-{}", tally.sent))
                            .body("{}"),
                        _ => client.post(&url).body("{}"),
                    };
                    tally.sent += 1;
                    if request.send().await.map_or(true, |r| r.status() != 200) {
                        tally.failed += 1;
                    }
                }
                (kind, tally)
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    processes[1].child.start_kill().unwrap();
    processes[1].child.wait().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);

    let mut by_kind = std::collections::HashMap::<&str, Tally>::new();
    for task in tasks {
        let (kind, tally) = task.await.unwrap();
        let total = by_kind.entry(kind).or_default();
        total.sent += tally.sent;
        total.failed += tally.failed;
    }
    let report = format!("{by_kind:?}");
    println!("kill under load: {report}");
    assert!(by_kind["get"].sent > 100, "{report}");
    assert_eq!(
        by_kind["get"].failed, 0,
        "retried GETs do not fail: {report}"
    );
    assert_eq!(
        by_kind["keyed"].failed, 0,
        "keyed POSTs are retried too: {report}"
    );
    // A POST without a key is sent once: it fails only if it was in flight to the killed
    // process (at most one per client) or picked it before it was ejected (3 failures).
    assert!(by_kind["plain"].failed <= 4 + 3, "{report}");
    for process in &mut processes {
        drop(process.child.stdin.take());
    }
}
