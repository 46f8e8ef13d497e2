//! What a service costs while it waits, and how fast it starts (`bench/footprint.sh`).
//!
//! A platform of its own (catalog ×1, order ×1, gateway; release builds, `RUST_LOG=warn`, each
//! service's default HTTP workers and pool size on this machine spelled out), then for each
//! service in turn:
//! - start-to-ready: five restarts (SIGTERM, drain, a new process), each timed from the spawn
//!   to its first `200` on `/health/ready`, polled every millisecond;
//! - idle RSS: `VmRSS` (and its anonymous part) of the last new process, 2 s after ready;
//! - after a load of `requests` requests (32 at a time) and 10 s of idle: memory must come back.
//!
//! Targets (issue 30): idle RSS ≤ 20 MB, start-to-ready ≤ 50 ms (every start), RSS after the
//! load and the idle ≤ 1.5 × idle.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use serde_json::{Value, json};

use crate::{products, sandbox::Sandbox, stack};

const IDLE_RSS_TARGET_KB: u64 = 20 * 1024;
const START_TARGET: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct Options {
    pub bin_dir: PathBuf,
    pub requests: usize,
    pub starts: usize,
}

/// One process's memory, from `/proc/<pid>/status` (kB).
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss: u64,
    anonymous: u64,
    threads: u64,
}

fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        anonymous: field("RssAnon:")?,
        threads: field("Threads:")?,
    })
}

fn mb(kb: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let mb = kb as f64 / 1024.0;
    format!("{mb:.1} MB")
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

struct Figures {
    service: &'static str,
    starts: Vec<Duration>,
    idle: Memory,
    loaded: Memory,
    after: Memory,
    failed: usize,
}

pub async fn run(options: Options) -> anyhow::Result<bool> {
    let sandbox = Sandbox::new("footprint");
    let result = run_in(&sandbox, &options).await;
    sandbox.cleanup().await;
    let figures = result?;
    println!(
        "\n{:<8} {:>10} {:>10} {:>10} {:>12} {:>8} {:>12} {:>14} {:>7}",
        "service",
        "start p50",
        "start max",
        "idle RSS",
        "of it anon",
        "threads",
        "after load",
        "after 10 s idle",
        "failed"
    );
    let mut all = true;
    for f in &figures {
        let mut sorted = f.starts.clone();
        sorted.sort();
        let (median, max) = (sorted[sorted.len() / 2], sorted[sorted.len() - 1]);
        println!(
            "{:<8} {:>10} {:>10} {:>10} {:>12} {:>8} {:>12} {:>14} {:>7}",
            f.service,
            ms(median),
            ms(max),
            mb(f.idle.rss),
            mb(f.idle.anonymous),
            f.idle.threads,
            mb(f.loaded.rss),
            mb(f.after.rss),
            f.failed
        );
        let verdicts = [
            ("idle RSS ≤ 20 MB", f.idle.rss <= IDLE_RSS_TARGET_KB),
            ("every start ≤ 50 ms", max <= START_TARGET),
            (
                "RSS after load and idle ≤ 1.5 × idle",
                f.after.rss * 2 <= f.idle.rss * 3,
            ),
            ("no failed request in the load", f.failed == 0),
        ];
        for (what, met) in verdicts {
            if !met {
                println!("  {}: {what}: MISSED", f.service);
                all = false;
            }
        }
    }
    println!(
        "\nall targets {}",
        if all { "met" } else { "NOT met (see above)" }
    );
    Ok(all)
}

async fn run_in(sandbox: &Sandbox, options: &Options) -> anyhow::Result<Vec<Figures>> {
    let mut stack_options = sandbox.options(1, options.bin_dir.clone());
    // Production settings: a quiet log, and the defaults of this 2-core machine written out
    // (the test stack lowers them).
    stack_options.service_env = vec![
        ("RUST_LOG", "warn".to_owned()),
        ("HTTP_WORKERS", "2".to_owned()),
        ("DATABASE_MAX_CONNECTIONS", "10".to_owned()),
    ];
    stack_options.gateway_env = vec![("RUST_LOG", "warn".to_owned())];
    stack_options.auth = false;
    let mut platform = stack::Stack::start(stack_options).await?;
    let catalog = platform.url_of("catalog-1").context("no catalog")?;
    let ids = products::create(
        &format!("{catalog}/products"),
        "Idle",
        50,
        250,
        1_000_000,
        None,
    )
    .await?;
    let ids = Arc::new(ids);
    let mut figures = Vec::new();
    for (service, instance) in [
        ("catalog", "catalog-1"),
        ("order", "order-1"),
        ("gateway", "gateway"),
    ] {
        println!("footprint: {service}");
        let mut starts = Vec::new();
        for _ in 0..options.starts {
            starts.push(platform.restart_timed(instance).await?);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = platform.pid_of(instance).context("no process")?;
        let idle = memory(pid)?;
        let url = platform.url_of(instance).context("no URL")?;
        let failed = load(service, &url, &ids, options.requests).await;
        let loaded = memory(pid)?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after = memory(pid)?;
        figures.push(Figures {
            service,
            starts,
            idle,
            loaded,
            after,
            failed,
        });
    }
    platform.stop().await;
    Ok(figures)
}

/// `requests` requests at `url`, 32 at a time: reads of a product (catalog, and through the
/// gateway), placements of an order (order); returns how many failed (a placement shed by
/// admission control is not a failure).
async fn load(service: &str, url: &str, ids: &Arc<Vec<String>>, requests: usize) -> usize {
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (client, next, ids) = (client.clone(), Arc::clone(&next), Arc::clone(ids));
            let (service, url) = (service.to_owned(), url.to_owned());
            tokio::spawn(async move {
                let mut failed = 0;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= requests {
                        return failed;
                    }
                    let product = &ids[i % ids.len()];
                    let request = match service.as_str() {
                        "order" => client
                            .post(format!("{url}/orders"))
                            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                            .json(&order(product)),
                        "gateway" => client.get(format!("{url}/api/catalog/products/{product}")),
                        _ => client.get(format!("{url}/products/{product}")),
                    };
                    // A shed placement (admission control at its backlog: the load outruns the
                    // saga) is the service working as designed, not a failure.
                    let ok = request.send().await.is_ok_and(|r| {
                        r.status().is_success() || r.headers().contains_key("dockyard-shed")
                    });
                    failed += usize::from(!ok);
                }
            })
        })
        .collect();
    let mut failed = 0;
    for task in tasks {
        failed += task.await.unwrap_or(requests);
    }
    failed
}

fn order(product: &str) -> Value {
    json!({
        "customer_id": uuid::Uuid::now_v7(),
        "lines": [{"product_id": product, "quantity": 1}],
    })
}
