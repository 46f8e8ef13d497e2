//! `cargo xtask chaos`: the platform as processes (a [`Sandbox`] of its own), customers placing
//! and cancelling orders and a reader browsing, all through the gateway, while each fault is
//! injected in turn:
//!
//! - RabbitMQ stopped and started again (`rabbitmqctl stop_app` / `start_app`);
//! - PostgreSQL restarted (`pg_ctlcluster … restart`);
//! - SIGKILL and SIGTERM of each service (catalog, order, gateway), a new process each time;
//! - poison events for the catalog (malformed, an unknown version, an invalid payload);
//! - a crash-looping catalog (both instances killed and restarted over and over);
//! - a flood of bad requests from one client, under its rate limit, while another one reads.
//!
//! Then it waits for the saga's deadline and checks the invariants: no accepted order lost,
//! none doubled, none pending, stock taken == units of confirmed orders, only the poison
//! events dead-lettered, and the reader unharmed by the flood. It prints one table and exits 1
//! if any invariant does not hold.
//!
//! The shared PostgreSQL and RabbitMQ are restored after each fault and again on the way out,
//! even when the run fails or is interrupted. Do not run it while tests use them.

use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use lapin::{BasicProperties, Connection, ConnectionProperties, options::BasicPublishOptions};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{database, dev_keys, products, sandbox::Sandbox, stack};

/// How long an order may stay pending before it is re-published: short, to finish quickly,
/// but longer than a fault lasts, so that only orders the saga lost would time out.
const PENDING_TIMEOUT: &str = "5s";
/// Re-publications before the deadline rejects an order: it ends within 3 × 5 s.
const PENDING_REPUBLISH: &str = "2";
/// A customer retries a failed placement with the same key for this long before giving up.
const CLIENT_PATIENCE: Duration = Duration::from_secs(20);
const PRODUCTS: usize = 10;
const STOCK: i64 = 1_000_000;
/// Poison events published in the poison phase (all must end in the catalog's dead letters).
const POISON_EVENTS: u32 = 3;

/// One fault and what the clients saw meanwhile.
#[derive(Debug, Default)]
struct Phase {
    name: String,
    placed: usize,
    gave_up: usize,
    reads: usize,
    failed_reads: usize,
    note: String,
}

/// An invariant checked at the end.
#[derive(Debug)]
struct Check {
    name: &'static str,
    expected: String,
    observed: String,
    holds: bool,
}

/// What the customers did.
#[derive(Debug, Default)]
struct Ledger {
    /// Accepted placements: key, order id.
    accepted: Vec<(String, Uuid)>,
    /// Placements still failing after `CLIENT_PATIENCE`.
    gave_up: usize,
}

/// Counters the load tasks share; reset per phase.
#[derive(Debug, Default)]
struct Counters {
    placed: AtomicUsize,
    gave_up: AtomicUsize,
    reads: AtomicUsize,
    failed_reads: AtomicUsize,
}

impl Counters {
    fn take(&self) -> (usize, usize, usize, usize) {
        (
            self.placed.swap(0, Ordering::Relaxed),
            self.gave_up.swap(0, Ordering::Relaxed),
            self.reads.swap(0, Ordering::Relaxed),
            self.failed_reads.swap(0, Ordering::Relaxed),
        )
    }
}

/// Runs the whole suite; `Ok(true)` when every invariant holds.
pub async fn run(bin_dir: std::path::PathBuf) -> anyhow::Result<bool> {
    let sandbox = Sandbox::new("chaos");
    let _restore = SharedServices;
    let outcome = tokio::select! {
        outcome = run_in(&sandbox, bin_dir) => outcome,
        () = interrupted() => Err(anyhow::anyhow!("interrupted")),
    };
    SharedServices::restore();
    sandbox.cleanup().await;
    outcome
}

async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

#[allow(clippy::too_many_lines)] // one fault after the other, in the order they are printed
async fn run_in(sandbox: &Sandbox, bin_dir: std::path::PathBuf) -> anyhow::Result<bool> {
    let mut options = sandbox.options(2, bin_dir);
    // Every instance's log, kept for a look when something is off.
    let log_file = std::env::temp_dir().join(format!("{}.log", sandbox.exchange));
    options.log_file = Some(log_file.clone());
    options.service_env = vec![
        ("ORDER_PENDING_TIMEOUT", PENDING_TIMEOUT.to_owned()),
        ("ORDER_PENDING_REPUBLISH", PENDING_REPUBLISH.to_owned()),
    ];
    options.gateway_env = vec![
        ("RATE_LIMIT_PER_SEC", "200".to_owned()),
        ("RATE_LIMIT_BURST", "200".to_owned()),
    ];
    let mut platform = stack::Stack::start(options).await?;
    let gateway = platform.gateway_url.clone();
    let editor = platform.token("chaos-editor", &[dev_keys::CATALOG_WRITE]);
    let products = products::create(
        &format!("{gateway}/api/catalog/products"),
        "Chaos",
        PRODUCTS,
        100,
        STOCK,
        editor.as_deref(),
    )
    .await?;

    let counters = Arc::new(Counters::default());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for customer in 0..4 {
        let customer_id = Uuid::now_v7();
        let token = platform.token(&customer_id.to_string(), &[]);
        load.push(tokio::spawn(customer_loop(
            gateway.clone(),
            (customer_id, token),
            products.clone(),
            customer,
            Arc::clone(&counters),
            Arc::clone(&ledger),
            Arc::clone(&stop),
        )));
    }
    load.push(tokio::spawn(reader_loop(
        gateway.clone(),
        products[0].clone(),
        Arc::clone(&counters),
        Arc::clone(&stop),
    )));

    let mut phases = Vec::new();
    let mut phase = async |name: &str, note: String, counters: &Counters| {
        let (placed, gave_up, reads, failed_reads) = counters.take();
        println!("  {name}: {placed} orders placed, {failed_reads} of {reads} reads failed");
        phases.push(Phase {
            name: name.to_owned(),
            placed,
            gave_up,
            reads,
            failed_reads,
            note,
        });
    };
    println!("chaos: faults under load (4 customers and a reader through the gateway)");
    tokio::time::sleep(Duration::from_secs(3)).await;
    phase("no fault", String::new(), &counters).await;

    SharedServices::rabbitmq(false)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    SharedServices::rabbitmq(true)?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    phase(
        "RabbitMQ stopped 3 s",
        "rabbitmqctl stop_app / start_app".into(),
        &counters,
    )
    .await;

    SharedServices::restart_postgres()?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    phase(
        "PostgreSQL restarted",
        "pg_ctlcluster restart".into(),
        &counters,
    )
    .await;

    for (name, crash) in [
        ("catalog-1", true),
        ("catalog-2", false),
        ("order-1", true),
        ("order-1", false),
        ("gateway", true),
        ("gateway", false),
    ] {
        let started = tokio::time::Instant::now();
        let status = if crash {
            platform.crash_and_restart(name).await?
        } else {
            platform.restart(name).await?
        };
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let signal = if crash { "SIGKILL" } else { "SIGTERM" };
        let note = format!("back in {} ms; old process: {status}", took.as_millis());
        phase(&format!("{signal} {name}"), note, &counters).await;
    }

    poison(sandbox).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    phase(
        "poison events",
        format!("{POISON_EVENTS} published to the catalog"),
        &counters,
    )
    .await;

    for _ in 0..5 {
        platform.crash_and_restart("catalog-1").await?;
        platform.crash_and_restart("catalog-2").await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    phase(
        "crash-looping catalog",
        "both instances killed 5 times".into(),
        &counters,
    )
    .await;

    // An insider: its token may write, so its bad input reaches the services' validation.
    let insider = platform.token(&Uuid::now_v7().to_string(), &[dev_keys::CATALOG_WRITE]);
    let flood = tokio::spawn(attacker_loop(
        gateway.clone(),
        insider,
        Duration::from_secs(5),
    ));
    let attacks = flood.await.unwrap_or_default();
    phase(
        "bad-input flood",
        format!("{attacks} bad requests from one client"),
        &counters,
    )
    .await;
    let flood_reads_failed = phases.last().map_or(0, |p| p.failed_reads);

    stop.store(true, Ordering::Relaxed);
    for task in load {
        let _ = task.await;
    }
    println!("  waiting for every order to end (the saga's deadline is 3 × {PENDING_TIMEOUT})");
    let checks = invariants(sandbox, &ledger, &products, flood_reads_failed).await?;
    platform.stop().await;

    println!(
        "\n{:<26} {:>7} {:>8} {:>13}  notes",
        "fault", "placed", "gave up", "reads failed"
    );
    for phase in &phases {
        println!(
            "{:<26} {:>7} {:>8} {:>7} of {:<4}  {}",
            phase.name, phase.placed, phase.gave_up, phase.failed_reads, phase.reads, phase.note
        );
    }
    println!(
        "\n{:<44} {:>14} {:>14}  holds",
        "invariant", "expected", "observed"
    );
    for check in &checks {
        println!(
            "{:<44} {:>14} {:>14}  {}",
            check.name,
            check.expected,
            check.observed,
            if check.holds { "yes" } else { "NO" }
        );
    }
    let held = checks.iter().all(|check| check.holds);
    if held {
        let _ = std::fs::remove_file(&log_file);
    } else {
        println!("\ninstance logs kept in {}", log_file.display());
    }
    Ok(held)
}

/// A customer: places orders (each retried with its key for up to `CLIENT_PATIENCE`), and
/// cancels every fifth accepted one.
async fn customer_loop(
    gateway: String,
    (customer_id, token): (Uuid, Option<String>),
    products: Vec<String>,
    customer: usize,
    counters: Arc<Counters>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let authorized =
        |request: reqwest::RequestBuilder| dev_keys::with_token(request, token.as_deref());
    let mut placed = 0_usize;
    while !stop.load(Ordering::Relaxed) {
        let product = &products[(customer + placed) % products.len()];
        let key = Uuid::new_v4().to_string();
        let body = json!({"customer_id": customer_id, "lines": [{"product_id": product, "quantity": 1 + placed % 3}]});
        let first = tokio::time::Instant::now();
        let id = loop {
            let sent = authorized(client.post(format!("{gateway}/api/orders/orders")))
                .header("idempotency-key", &key)
                .json(&body)
                .send()
                .await;
            if let Ok(response) = sent
                && response.status() == 202
                && let Ok(order) = response.json::<Value>().await
                && let Some(id) = order["id"].as_str().and_then(|id| id.parse::<Uuid>().ok())
            {
                break Some(id);
            }
            if first.elapsed() > CLIENT_PATIENCE {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let Some(id) = id else {
            counters.gave_up.fetch_add(1, Ordering::Relaxed);
            ledger.lock().expect("the ledger").gave_up += 1;
            continue;
        };
        counters.placed.fetch_add(1, Ordering::Relaxed);
        ledger.lock().expect("the ledger").accepted.push((key, id));
        placed += 1;
        if placed.is_multiple_of(5) {
            // A cancellation is retried too; 409 means it had ended already (e.g. rejected).
            let first = tokio::time::Instant::now();
            while first.elapsed() < CLIENT_PATIENCE {
                let cancelled =
                    authorized(client.post(format!("{gateway}/api/orders/orders/{id}/cancel")))
                        .send()
                        .await;
                if cancelled.is_ok_and(|r| matches!(r.status().as_u16(), 200 | 409)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client")
}

/// Another client, from its own address, reading a product every 20 ms.
async fn reader_loop(
    gateway: String,
    product: String,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let client = client_from([127, 0, 0, 6]);
    while !stop.load(Ordering::Relaxed) {
        let read = client
            .get(format!("{gateway}/api/catalog/products/{product}"))
            .send()
            .await;
        counters.reads.fetch_add(1, Ordering::Relaxed);
        if !read.is_ok_and(|r| r.status().is_success()) {
            counters.failed_reads.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One client sending bad requests of every kind for `duration`, about 40 a second.
async fn attacker_loop(gateway: String, token: Option<String>, duration: Duration) -> usize {
    let client = client_from([127, 0, 0, 5]);
    let end = tokio::time::Instant::now() + duration;
    let mut sent = 0;
    while tokio::time::Instant::now() < end {
        let products = format!("{gateway}/api/catalog/products");
        let request = match sent % 5 {
            0 => client.post(&products).json(&json!({"sku": "NUL-1", "name": "x", "description": "\u{0}", "price": {"amount_minor": 1, "currency": "EUR"}, "stock": 1})),
            1 => client.post(&products).header("content-type", "application/json").body("{\"sku\": "),
            2 => client.post(&products).header("content-type", "application/json").body(vec![b' '; 2 * 1024 * 1024]),
            3 => client.get(format!("{products}?limit=1000&cursor=zzz")),
            _ => client
                .post(format!("{gateway}/api/orders/orders"))
                .header("idempotency-key", "flood")
                .json(&json!({"customer_id": "not-a-uuid", "lines": []})),
        };
        let _ = dev_keys::with_token(request, token.as_deref()).send().await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    sent
}

/// Publishes events the catalog can never apply.
async fn poison(sandbox: &Sandbox) -> anyhow::Result<()> {
    let connection =
        Connection::connect(&sandbox.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let order = Uuid::now_v7();
    let mut unknown_version = dockyard_messaging::Envelope::new("order.placed", order, &json!({}));
    unknown_version.version = 99;
    let invalid = dockyard_messaging::Envelope::new("order.placed", order, &json!({"order_id": 7}));
    let bodies = [
        b"{not json".to_vec(),
        serde_json::to_vec(&unknown_version)?,
        serde_json::to_vec(&invalid)?,
    ];
    for body in bodies {
        channel
            .basic_publish(
                sandbox.exchange.as_str().into(),
                "order.placed".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await?
            .await?;
    }
    connection.close(200, "poisoned".into()).await?;
    Ok(())
}

async fn invariants(
    sandbox: &Sandbox,
    ledger: &Mutex<Ledger>,
    products: &[String],
    flood_reads_failed: usize,
) -> anyhow::Result<Vec<Check>> {
    let orders = sqlx::PgPool::connect(&database::url_of(
        &sandbox.server_url,
        &sandbox.order_database,
    )?)
    .await?;
    let catalog = sqlx::PgPool::connect(&database::url_of(
        &sandbox.server_url,
        &sandbox.catalog_database,
    )?)
    .await?;
    let (accepted, gave_up) = {
        let ledger = ledger.lock().expect("the ledger");
        (ledger.accepted.clone(), ledger.gave_up)
    };
    let accepted_ids: Vec<Uuid> = accepted.iter().map(|(_, id)| *id).collect();

    let (pending, taken, confirmed_units) = settle(&orders, &catalog, products).await?;
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE id = ANY($1)")
        .bind(&accepted_ids)
        .fetch_one(&orders)
        .await?;
    let doubled: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM orders) - (SELECT count(*) FROM idempotency_keys WHERE status IS NOT NULL)",
    )
    .fetch_one(&orders)
    .await?;
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status ORDER BY status")
            .fetch_all(&orders)
            .await?;
    let reasons: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT reason, count(*) FROM orders WHERE status = 'rejected' GROUP BY reason ORDER BY 2 DESC",
    )
    .fetch_all(&orders)
    .await?;
    for (reason, count) in &reasons {
        println!("  rejected: {count} × {}", reason.as_deref().unwrap_or("-"));
    }
    orders.close().await;
    catalog.close().await;
    let catalog_dead = dead_letters(sandbox, "catalog").await?;
    let order_dead = dead_letters(sandbox, "order").await?;
    let accepted_count = i64::try_from(accepted.len()).unwrap_or(i64::MAX);
    let statuses = statuses
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!("  orders by status: {statuses}; {gave_up} placements given up by their clients");
    Ok(vec![
        Check {
            name: "accepted orders lost",
            expected: "0".into(),
            observed: (accepted_count - found).to_string(),
            holds: found == accepted_count && accepted_count > 0,
        },
        Check {
            name: "orders doubled (orders − answered keys)",
            expected: "0".into(),
            observed: doubled.to_string(),
            holds: doubled == 0,
        },
        Check {
            name: "orders still pending after the deadline",
            expected: "0".into(),
            observed: pending.to_string(),
            holds: pending == 0,
        },
        Check {
            name: "stock taken == units of confirmed orders",
            expected: confirmed_units.to_string(),
            observed: taken.to_string(),
            holds: taken == confirmed_units,
        },
        Check {
            name: "catalog dead letters == poison events",
            expected: POISON_EVENTS.to_string(),
            observed: catalog_dead.to_string(),
            holds: catalog_dead == POISON_EVENTS,
        },
        Check {
            name: "order dead letters",
            expected: "0".into(),
            observed: order_dead.to_string(),
            holds: order_dead == 0,
        },
        Check {
            name: "reads failed during the bad-input flood",
            expected: "0".into(),
            observed: flood_reads_failed.to_string(),
            holds: flood_reads_failed == 0,
        },
    ])
}

/// Waits for every order to end (the deadline, 3 × 5 s, plus what is in flight) and for the
/// stock to follow; returns the orders still pending, the stock taken and the units of
/// confirmed orders.
async fn settle(
    orders: &sqlx::PgPool,
    catalog: &sqlx::PgPool,
    products: &[String],
) -> anyhow::Result<(i64, i64, i64)> {
    // Every order ends: the deadline (3 × 5 s) plus the time to apply what is in flight.
    let mut pending = i64::MAX;
    for _ in 0..80 {
        pending = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'pending'")
            .fetch_one(orders)
            .await?;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Stock follows once the last reservations and releases are applied.
    let product_ids: Vec<Uuid> = products.iter().filter_map(|p| p.parse().ok()).collect();
    let mut taken = -1;
    let mut confirmed_units = -2;
    for _ in 0..60 {
        let left: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(stock), 0)::bigint FROM products WHERE id = ANY($1)",
        )
        .bind(&product_ids)
        .fetch_one(catalog)
        .await?;
        taken = i64::try_from(PRODUCTS).unwrap_or(0) * STOCK - left;
        confirmed_units = sqlx::query_scalar(
            "SELECT COALESCE(sum((line->>'quantity')::bigint), 0)::bigint
             FROM orders, jsonb_array_elements(lines) AS line WHERE status = 'confirmed'",
        )
        .fetch_one(orders)
        .await?;
        if taken == confirmed_units {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok((pending, taken, confirmed_units))
}

async fn dead_letters(sandbox: &Sandbox, consumer: &str) -> anyhow::Result<u32> {
    use lapin::{options::QueueDeclareOptions, types::FieldTable};
    let connection =
        Connection::connect(&sandbox.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            dockyard_messaging::topology::dead_letter_queue(&sandbox.exchange, consumer)
                .as_str()
                .into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    connection.close(200, "counted".into()).await?;
    Ok(queue.message_count())
}

/// The machine's PostgreSQL and RabbitMQ: stopped and restarted by the suite, restored when
/// this guard drops (also on a panic) and by [`SharedServices::restore`].
struct SharedServices;

impl SharedServices {
    fn command(program: &str, args: &[&str]) -> anyhow::Result<()> {
        let status = std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .with_context(|| format!("running {program}"))?;
        anyhow::ensure!(
            status.success(),
            "{program} {} failed ({status})",
            args.join(" ")
        );
        Ok(())
    }

    fn rabbitmq(up: bool) -> anyhow::Result<()> {
        Self::command("rabbitmqctl", &[if up { "start_app" } else { "stop_app" }])
    }

    fn postgres_version() -> anyhow::Result<String> {
        std::fs::read_dir("/etc/postgresql")?
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .next()
            .context("no cluster under /etc/postgresql")
    }

    fn restart_postgres() -> anyhow::Result<()> {
        let version = Self::postgres_version()?;
        Self::command(
            "pg_ctlcluster",
            &["--skip-systemctl-redirect", &version, "main", "restart"],
        )
    }

    fn port_open(port: u16) -> bool {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(1),
        )
        .is_ok()
    }

    /// Starts whichever of the two is down, and waits for it (up to a minute each).
    fn restore() {
        if !Self::port_open(5672) {
            eprintln!("chaos: RabbitMQ is down: starting it");
            if Self::rabbitmq(true).is_err() {
                let _ = Self::command("rabbitmq-server", &["-detached"]);
            }
        }
        if !Self::port_open(5432) {
            eprintln!("chaos: PostgreSQL is down: starting it");
            if let Ok(version) = Self::postgres_version() {
                let _ = Self::command(
                    "pg_ctlcluster",
                    &["--skip-systemctl-redirect", &version, "main", "start"],
                );
            }
        }
        for port in [5672, 5432] {
            for _ in 0..60 {
                if Self::port_open(port) {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

impl Drop for SharedServices {
    fn drop(&mut self) {
        Self::restore();
    }
}
