//! `cargo xtask saga-bench` (run by `bench/saga.sh`): the order saga under load, on a platform
//! of its own (catalog ×2, order ×1, gateway; release builds).
//!
//! Orders for 1 unit of one of 100 products (stock large enough never to run out) are `POST`ed
//! to the order instance, each with a fresh `Idempotency-Key`, in three passes:
//! 1. **saturation**: `concurrency` clients in a closed loop for `seconds`: the rate the saga
//!    sustains (orders placed, and orders confirmed within the pass);
//! 2. **80 %** of that rate, open loop (each order sent at its scheduled time, whatever the
//!    answers before it): placement→confirmed latency at a load the platform can carry;
//! 3. **2×** that rate, open loop: what admission control makes of overload (orders refused
//!    early with `503`, and the latency of those accepted).
//!
//! Placement→confirmed is read from the orders table (`updated_at − created_at` of confirmed
//! orders), so it is the saga's latency, not the HTTP client's. Between passes the platform
//! drains. At the end the invariants are checked: stock taken == units of confirmed orders, no
//! order pending, the 503s created no order.

// Report arithmetic: counts and milliseconds far below 2^52.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use serde_json::json;
use uuid::Uuid;

use crate::{database, products, sandbox::Sandbox, stack};

const PRODUCTS: usize = 100;
/// How long a saturation client waits after a 503 before its next order.
const SATURATION_BACKOFF: Duration = Duration::from_millis(20);
const STOCK: i64 = 100_000_000;

#[derive(Debug, Clone)]
pub struct Options {
    pub seconds: u64,
    pub concurrency: usize,
    pub bin_dir: std::path::PathBuf,
    /// Skip the saturation pass and use this rate as capacity.
    pub capacity: Option<f64>,
    /// Fixed-rate passes at these orders/s instead (no saturation, 80 % or 2× pass).
    pub rates: Vec<f64>,
    /// Export spans to a console (a real OTLP receiver on the same machine), sampling this
    /// ratio of traces (`parentbased_traceidratio`); `None`: no export.
    pub export_ratio: Option<f64>,
}

/// What one pass measured.
#[derive(Debug, Default)]
struct Pass {
    name: String,
    offered: Option<f64>,
    seconds: f64,
    accepted: u64,
    shed: u64,
    other: u64,
    confirmed: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    backlog: i64,
    /// Where the time went, hop by hop: (hop, p50 ms, p99 ms).
    hops: Vec<(&'static str, f64, f64)>,
}

/// Runs the three passes; prints the table; `Ok(true)` when the invariants hold.
pub async fn run(options: Options) -> anyhow::Result<bool> {
    let sandbox = Sandbox::new("sagabench");
    let result = run_in(&sandbox, options).await;
    sandbox.cleanup().await;
    result
}

/// With a ratio: a console receives every service's spans, sampled at that ratio.
fn exporting(stack_options: &mut stack::Options, ratio: Option<f64>) {
    let Some(ratio) = ratio else {
        println!("telemetry: no export");
        return;
    };
    stack_options.console_port = Some(0);
    for env in [
        &mut stack_options.service_env,
        &mut stack_options.gateway_env,
    ] {
        env.push(("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()));
        env.push(("OTEL_TRACES_SAMPLER_ARG", ratio.to_string()));
    }
    println!("telemetry: spans exported to the console, {ratio} of traces sampled");
}

async fn run_in(sandbox: &Sandbox, options: Options) -> anyhow::Result<bool> {
    let mut stack_options = sandbox.options(2, options.bin_dir.clone());
    stack_options.service_env = vec![
        ("DATABASE_MAX_CONNECTIONS", "20".to_owned()),
        ("HTTP_WORKERS", "2".to_owned()),
    ];
    exporting(&mut stack_options, options.export_ratio);
    // The saga is measured, not the edge: orders go straight to the order service.
    stack_options.auth = false;
    let platform = stack::Stack::start(stack_options).await?;
    let order = platform.url_of("order-1").context("no order instance")?;
    // The services read it from the environment they inherit (quorum unless it says classic).
    println!(
        "queues: {} (AMQP_QUEUE_TYPE), admission backlog: {} (ORDER_ADMISSION_BACKLOG)",
        std::env::var("AMQP_QUEUE_TYPE").unwrap_or_else(|_| "quorum".to_owned()),
        std::env::var("ORDER_ADMISSION_BACKLOG").unwrap_or_else(|_| "200".to_owned()),
    );
    let products = products::create(
        &format!("{}/api/catalog/products", platform.gateway_url),
        "Bench",
        PRODUCTS,
        250,
        STOCK,
        None,
    )
    .await?;
    let orders_db = sqlx::PgPool::connect(&database::url_of(
        &sandbox.server_url,
        &sandbox.order_database,
    )?)
    .await?;
    let catalog_db = sqlx::PgPool::connect(&database::url_of(
        &sandbox.server_url,
        &sandbox.catalog_database,
    )?)
    .await?;
    let duration = Duration::from_secs(options.seconds);

    let mut passes = Vec::new();
    let fixed: Vec<(String, f64)> = options
        .rates
        .iter()
        .map(|rate| (format!("{rate:.0}/s"), *rate))
        .collect();
    let capacity = if !fixed.is_empty() {
        0.0
    } else if let Some(capacity) = options.capacity {
        capacity
    } else {
        println!(
            "saturation: {} clients for {} s",
            options.concurrency, options.seconds
        );
        let pass = measure(
            "saturation",
            None,
            (&orders_db, &catalog_db),
            closed_loop(&order, &products, options.concurrency, duration),
        )
        .await?;
        let capacity = pass.confirmed as f64 / pass.seconds;
        passes.push(pass);
        drain(&orders_db).await?;
        capacity
    };
    let shares = [("80 % of capacity", 0.8), ("2× capacity", 2.0)]
        .map(|(name, share)| (name.to_owned(), (capacity * share).max(1.0)));
    let rates = if fixed.is_empty() {
        shares.to_vec()
    } else {
        fixed
    };
    for (name, rate) in rates {
        let name = name.as_str();
        println!("{name}: {rate:.0} orders/s for {} s", options.seconds);
        let pass = measure(
            name,
            Some(rate),
            (&orders_db, &catalog_db),
            open_loop(&order, &products, rate, duration),
        )
        .await?;
        passes.push(pass);
        drain(&orders_db).await?;
    }
    let checks = invariants(&orders_db, &catalog_db).await?;
    orders_db.close().await;
    catalog_db.close().await;
    platform.stop().await;
    print_report(&passes, &checks);
    let failed: u64 = passes.iter().map(|p| p.other).sum();
    if failed > 0 {
        println!(
            "\nINVALID RUN: {failed} placement(s) got neither 202 nor a load-shedding 503 (column `other`)"
        );
    }
    Ok(failed == 0
        && checks
            .iter()
            .all(|(_, expected, observed)| expected == observed))
}

/// The passes and the invariants, as tables.
fn print_report(passes: &[Pass], checks: &[(&'static str, i64, i64)]) {
    println!(
        "\n{:<18} {:>9} {:>9} {:>9} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "pass",
        "offered/s",
        "placed/s",
        "confirm/s",
        "shed",
        "other",
        "p50 ms",
        "p99 ms",
        "max ms",
        "backlog"
    );
    for pass in passes {
        println!(
            "{:<18} {:>9} {:>9.0} {:>9.0} {:>7} {:>9} {:>8.1} {:>8.1} {:>8.1} {:>8}",
            pass.name,
            pass.offered
                .map_or_else(|| "closed".to_owned(), |r| format!("{r:.0}")),
            pass.accepted as f64 / pass.seconds,
            pass.confirmed as f64 / pass.seconds,
            pass.shed,
            pass.other,
            pass.p50_ms,
            pass.p99_ms,
            pass.max_ms,
            pass.backlog,
        );
    }
    println!("\nwhere the time goes (per hop, p50 / p99 ms; times of the database transactions)");
    for pass in passes {
        let hops: Vec<String> = pass
            .hops
            .iter()
            .map(|(hop, p50, p99)| format!("{hop} {p50:.1} / {p99:.1}"))
            .collect();
        println!("{:<18} {}", pass.name, hops.join(" · "));
    }
    println!(
        "\n{:<44} {:>12} {:>12}  holds",
        "invariant", "expected", "observed"
    );
    for (name, expected, observed) in checks {
        println!(
            "{name:<44} {expected:>12} {observed:>12}  {}",
            if expected == observed { "yes" } else { "NO" }
        );
    }
}

/// Answers counted by a load pass.
#[derive(Debug, Default)]
struct Answers {
    accepted: AtomicU64,
    shed: AtomicU64,
    other: AtomicU64,
}

/// What a placement was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Accepted,
    /// `503` marked as load shedding (`Dockyard-Shed`): admission control at work.
    Shed,
    /// Anything else: another status, or no answer. Any makes the run invalid.
    Other,
}

impl Answers {
    fn count(&self, answer: Answer) {
        let counter = match answer {
            Answer::Accepted => &self.accepted,
            Answer::Shed => &self.shed,
            Answer::Other => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        .build()
        .expect("a client")
}

async fn place(client: &reqwest::Client, url: &str, product: &str) -> Answer {
    let body =
        json!({"customer_id": Uuid::now_v7(), "lines": [{"product_id": product, "quantity": 1}]});
    let sent = client
        .post(url)
        .header("idempotency-key", Uuid::new_v4().to_string())
        .json(&body)
        .send()
        .await;
    match sent {
        Ok(response) if response.status() == 202 => Answer::Accepted,
        Ok(response)
            if response.status() == 503
                && response
                    .headers()
                    .contains_key(dockyard_runtime::problem::SHED_HEADER) =>
        {
            Answer::Shed
        }
        _ => Answer::Other,
    }
}

/// `concurrency` clients, each placing orders one after the other until `duration` is over
/// (after a 503, [`SATURATION_BACKOFF`] later).
async fn closed_loop(
    order: &str,
    products: &[String],
    concurrency: usize,
    duration: Duration,
) -> Answers {
    let answers = Arc::new(Answers::default());
    let url = format!("{order}/orders");
    let end = tokio::time::Instant::now() + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (answers, url, products, client) = (
                Arc::clone(&answers),
                url.clone(),
                products.to_vec(),
                client(),
            );
            tokio::spawn(async move {
                let mut n = worker;
                while tokio::time::Instant::now() < end {
                    let answer = place(&client, &url, &products[n % products.len()]).await;
                    answers.count(answer);
                    n += concurrency;
                    if answer == Answer::Shed {
                        // Refused: try again soon, but not in a busy loop. (A client honouring
                        // `Retry-After: 1` would leave the saga idle: this pass measures what
                        // the platform can confirm, not how polite its clients are.)
                        tokio::time::sleep(SATURATION_BACKOFF).await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    Arc::try_unwrap(answers).unwrap_or_default()
}

/// Orders sent at `rate` per second for `duration`, each at its scheduled instant whatever
/// happened to the ones before (no coordinated omission).
async fn open_loop(order: &str, products: &[String], rate: f64, duration: Duration) -> Answers {
    let answers = Arc::new(Answers::default());
    let url = format!("{order}/orders");
    let client = client();
    let start = tokio::time::Instant::now();
    let total = (rate * duration.as_secs_f64()) as u64;
    let mut inflight = tokio::task::JoinSet::new();
    for n in 0..total {
        let at = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(at).await;
        let (answers, url, client) = (Arc::clone(&answers), url.clone(), client.clone());
        let product = products[(n as usize) % products.len()].clone();
        inflight.spawn(async move {
            let answer = place(&client, &url, &product).await;
            answers.count(answer);
        });
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
    Arc::try_unwrap(answers).unwrap_or_default()
}

/// Runs `load`, then reads what the saga made of the orders placed meanwhile.
async fn measure(
    name: &str,
    offered: Option<f64>,
    (orders, catalog): (&sqlx::PgPool, &sqlx::PgPool),
    load: impl std::future::Future<Output = Answers>,
) -> anyhow::Result<Pass> {
    let started: time::OffsetDateTime =
        sqlx::query_scalar("SELECT now()").fetch_one(orders).await?;
    let clock = tokio::time::Instant::now();
    let answers = load.await;
    let seconds = clock.elapsed().as_secs_f64();
    let ended: time::OffsetDateTime = sqlx::query_scalar("SELECT now()").fetch_one(orders).await?;
    // Confirmed within the pass, and how long each took from placement.
    let latencies: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM updated_at - created_at)::float8 * 1000 FROM orders
         WHERE status = 'confirmed' AND created_at >= $1 AND updated_at <= $2
         ORDER BY 1",
    )
    .bind(started)
    .bind(ended)
    .fetch_all(orders)
    .await?;
    let backlog: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE status = 'pending' AND created_at >= $1",
    )
    .bind(started)
    .fetch_one(orders)
    .await?;
    let at = |p: f64| percentile(&latencies, p);
    let hops = hops(orders, catalog, started, ended).await?;
    Ok(Pass {
        name: name.to_owned(),
        offered,
        seconds,
        accepted: answers.accepted.load(Ordering::Relaxed),
        shed: answers.shed.load(Ordering::Relaxed),
        other: answers.other.load(Ordering::Relaxed),
        confirmed: latencies.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        backlog,
        hops,
    })
}

/// The value at rank `p` (0–1) of `sorted`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Placement→confirmed of the orders confirmed within the pass, split where the two databases
/// record a time (each the server's `now()`, the start of the transaction that wrote it): the
/// request waits for the placement writer (its idempotency key written); the committed
/// placement goes through the relay and the broker to the catalog's batch (its `order_sagas`
/// row); the catalog's answer goes through its relay and the broker to the order's batch,
/// which confirms the order (`updated_at`).
async fn hops(
    orders: &sqlx::PgPool,
    catalog: &sqlx::PgPool,
    started: time::OffsetDateTime,
    ended: time::OffsetDateTime,
) -> anyhow::Result<Vec<(&'static str, f64, f64)>> {
    let placed: Vec<(Uuid, f64, f64, f64)> = sqlx::query_as(
        "SELECT o.id, extract(epoch FROM o.created_at)::float8,
                extract(epoch FROM k.created_at)::float8, extract(epoch FROM o.updated_at)::float8
         FROM orders o JOIN idempotency_keys k ON (k.response->>'id')::uuid = o.id
         WHERE o.status = 'confirmed' AND o.created_at >= $1 AND o.updated_at <= $2",
    )
    .bind(started)
    .bind(ended)
    .fetch_all(orders)
    .await?;
    let answered: std::collections::HashMap<Uuid, f64> = sqlx::query_as::<_, (Uuid, f64)>(
        "SELECT order_id, extract(epoch FROM created_at)::float8 FROM order_sagas
         WHERE created_at >= $1",
    )
    .bind(started)
    .fetch_all(catalog)
    .await?
    .into_iter()
    .collect();
    let names = [
        "request → placement written",
        "placement → catalog's batch",
        "catalog's batch → order's batch",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for (order, requested, written, confirmed) in placed {
        let Some(&answered) = answered.get(&order) else {
            continue;
        };
        let times = [requested, written, answered, confirmed];
        for (hop, pair) in times.windows(2).enumerate() {
            samples[hop].push((pair[1] - pair[0]) * 1000.0);
        }
    }
    Ok(names
        .into_iter()
        .zip(samples)
        .map(|(name, mut sample)| {
            sample.sort_by(f64::total_cmp);
            (name, percentile(&sample, 0.5), percentile(&sample, 0.99))
        })
        .collect())
}

/// Waits until no order is pending (up to 2 minutes).
async fn drain(orders: &sqlx::PgPool) -> anyhow::Result<()> {
    for _ in 0..240 {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'pending'")
                .fetch_one(orders)
                .await?;
        if pending == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("orders still pending after 2 minutes")
}

async fn invariants(
    orders: &sqlx::PgPool,
    catalog: &sqlx::PgPool,
) -> anyhow::Result<Vec<(&'static str, i64, i64)>> {
    let confirmed_units: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum((line->>'quantity')::bigint), 0)::bigint
         FROM orders, jsonb_array_elements(lines) AS line WHERE status = 'confirmed'",
    )
    .fetch_one(orders)
    .await?;
    let mut taken = -1;
    for _ in 0..60 {
        let left: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(stock), 0)::bigint FROM products WHERE sku LIKE 'BENCH-%'",
        )
        .fetch_one(catalog)
        .await?;
        taken = STOCK * i64::try_from(PRODUCTS).expect("a small number") - left;
        if taken == confirmed_units {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'pending'")
        .fetch_one(orders)
        .await?;
    let rejected: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'rejected'")
        .fetch_one(orders)
        .await?;
    let unanswered_keys: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM orders) - (SELECT count(*) FROM idempotency_keys WHERE status IS NOT NULL)",
    )
    .fetch_one(orders)
    .await?;
    Ok(vec![
        (
            "stock taken == units of confirmed orders",
            confirmed_units,
            taken,
        ),
        ("orders pending after the drain", 0, pending),
        ("orders rejected (stock never runs out)", 0, rejected),
        ("orders without their key's answer", 0, unanswered_keys),
    ])
}
