//! Tests of the `catalog` binary as an OS process: exit codes, one-off commands, JSON logs on
//! stdout, and graceful shutdown on SIGTERM.

use std::{
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use dockyard_testkit::TestDatabase;
use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

use dockyard_messaging::testing::{TestExchange, amqp_url};

use crate::helpers::client;

const BIN: &str = env!("CARGO_BIN_EXE_catalog");

fn catalog(vars: &[(&str, &str)]) -> Command {
    dockyard_testkit::process(BIN, vars)
}

async fn run(vars: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    catalog(vars)
        .args(args)
        .output()
        .await
        .expect("running catalog")
}

#[tokio::test]
async fn missing_or_malformed_configuration_exits_2_naming_the_variable() {
    const DB: (&str, &str) = ("DATABASE_URL", "postgres://localhost/x");
    const AMQP: (&str, &str) = ("AMQP_URL", "amqp://localhost:5672/%2f");
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[], "DATABASE_URL"),
        (
            &[("DATABASE_URL", "mysql://root@localhost/x"), AMQP],
            "DATABASE_URL",
        ),
        (&[DB], "AMQP_URL"),
        (&[DB, ("AMQP_URL", "http://localhost")], "AMQP_URL"),
        (&[DB, AMQP, ("PORT", "http")], "PORT"),
        (&[DB, AMQP, ("LOG_FORMAT", "xml")], "LOG_FORMAT"),
    ];
    for (vars, variable) in cases {
        let output = run(vars, &[]).await;

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{vars:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(variable),
            "{vars:?} should name {variable}: {stderr}"
        );
    }
}

#[tokio::test]
async fn secrets_in_urls_are_never_printed() {
    // An unreachable server: migrate fails and reports the URL it tried.
    let url = "postgres://app:hunter2@127.0.0.1:1/catalog";

    let output = run(
        &[
            ("DATABASE_URL", url),
            ("AMQP_URL", "amqp://guest:s3cret@127.0.0.1:1/%2f"),
        ],
        &["migrate"],
    )
    .await;

    assert_eq!(output.status.code(), Some(1));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(printed.contains("app:***@127.0.0.1:1"), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(!printed.contains("s3cret"), "{printed}");
}

#[tokio::test]
async fn an_unknown_command_exits_2_with_usage() {
    let output = run(&[], &["migrat"]).await;

    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("usage: catalog"));
}

#[tokio::test]
async fn migrate_and_seed_are_idempotent_one_off_commands() {
    let db = TestDatabase::create("catalog").await;
    // One-off commands need only the database: no AMQP_URL here.
    let env = [("DATABASE_URL", db.url())];

    for command in ["migrate", "migrate", "seed", "seed"] {
        let output = run(&env, &[command]).await;
        assert!(
            output.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let pool = db.pool().await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM products")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 6, "seeding twice inserts the demo catalog once");
}

/// A `catalog serve` process whose stdout is collected line by line (`closed` once it ends).
struct Served {
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    closed: Arc<AtomicBool>,
}

impl Served {
    /// Every line the process wrote: waits up to 10 s for its stdout to close (it exited and
    /// each line has been collected).
    async fn all_lines(&self) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.closed.load(Ordering::Acquire) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "catalog's stdout never closed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.lines.lock().unwrap().clone()
    }

    /// Waits up to 10 s until a collected line satisfies `wanted`.
    async fn line_until(&self, what: &str, wanted: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.lines.lock().unwrap().iter().any(|line| wanted(line)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "catalog never logged {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn serve(database_url: &str, exchange: &TestExchange, extra: &[(&str, &str)]) -> Served {
    let amqp = amqp_url();
    let mut vars = vec![
        ("DATABASE_URL", database_url),
        ("AMQP_URL", amqp.as_str()),
        ("AMQP_EXCHANGE", exchange.name()),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
    ];
    vars.extend_from_slice(extra);
    let mut child = catalog(&vars)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning catalog");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (port_tx, mut port_rx) = mpsc::unbounded_channel();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let collected = Arc::clone(&lines);
    let closed = Arc::new(AtomicBool::new(false));
    let at_end = Arc::clone(&closed);
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && event["message"] == "listening"
            {
                let address = event["address"].as_str().unwrap_or_default();
                let _ = port_tx.send(address.rsplit(':').next().unwrap().parse::<u16>().unwrap());
            }
            collected.lock().unwrap().push(line);
        }
        at_end.store(true, Ordering::Release);
    });
    let port = tokio::time::timeout(Duration::from_secs(10), port_rx.recv())
        .await
        .expect("catalog logs `listening` within 10 s")
        .expect("a port");
    Served {
        child,
        port,
        lines,
        closed,
    }
}

async fn wait_until_ready(port: u16) {
    let client = client();
    for _ in 0..100 {
        if let Ok(response) = client
            .get(format!("http://127.0.0.1:{port}/health/ready"))
            .send()
            .await
            && response.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("catalog never became ready");
}

#[tokio::test]
async fn sigterm_turns_readiness_off_drains_the_in_flight_requests_and_exits_0() {
    // Arrange: a served catalog (four HTTP workers, each reading single products on a
    // connection of its own: at least two are idle at SIGTERM and stop first) whose products
    // table is locked, so a listing and a read of one product hang in flight.
    let Seeded {
        db,
        exchange: _exchange,
        mut served,
        product,
    } = serve_seeded(&[
        ("SHUTDOWN_DELAY_MS", "3000"),
        ("SHUTDOWN_TIMEOUT_SECS", "20"),
        ("HTTP_WORKERS", "2"),
    ])
    .await;
    let pool = db.pool().await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", served.port);
    let in_flight = tokio::spawn({
        let url = format!("{base}/products");
        async move {
            client()
                .get(url)
                .header("x-request-id", "slow-one")
                .send()
                .await
        }
    });
    let in_flight_read = tokio::spawn({
        let url = format!("{base}/products/{product}");
        async move { client().get(url).send().await }
    });
    wait_for_blocked_queries(&pool, 2).await;

    // Act: SIGTERM while the request waits on the lock.
    let pid = Pid::from_raw(i32::try_from(served.child.id().unwrap()).unwrap());
    let signalled = std::time::Instant::now();
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();

    // Readiness turns 503 first, while the listener still accepts (for SHUTDOWN_DELAY_MS).
    let mut readiness = 0;
    while signalled.elapsed() < Duration::from_millis(2500) {
        let ready = client()
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .unwrap();
        readiness = ready.status().as_u16();
        if readiness == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        readiness, 503,
        "readiness turns 503 during the shutdown delay"
    );
    // After the delay the listener closes: no new connections. The in-flight requests are still
    // waiting.
    let deadline = signalled + Duration::from_secs(10);
    while client()
        .get(format!("{base}/health/live"))
        .send()
        .await
        .is_ok()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "new connections are still accepted 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        signalled.elapsed() >= Duration::from_secs(3),
        "the listener closed after {:?}, before the shutdown delay",
        signalled.elapsed()
    );
    assert!(
        !in_flight.is_finished() && !in_flight_read.is_finished(),
        "a request ended before the lock was released"
    );
    lock.rollback().await.unwrap();

    // Assert: the in-flight request completes and the process exits 0.
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(response.status(), 200);
    let read = in_flight_read
        .await
        .unwrap()
        .expect("the in-flight read completes");
    assert_eq!(read.status(), 200);
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["id"], product.to_string());
    let status = tokio::time::timeout(Duration::from_secs(10), served.child.wait())
        .await
        .expect("catalog exits after draining")
        .unwrap();
    assert_eq!(status.code(), Some(0));

    assert_drained_request_logged(&served).await;
}

/// Every stdout line of `served` (which has exited) is a JSON object, and the slow request has
/// its access-log event.
async fn assert_drained_request_logged(served: &Served) {
    let lines = served.all_lines().await;
    let events: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let access = events
        .iter()
        .find(|e| e["span"]["request_id"] == "slow-one" && e["message"] == "request completed")
        .expect("an access-log event for the drained request");
    assert_eq!(access["status"], 200);
    assert_eq!(access["span"]["route"], "/products");
    assert_eq!(access["span"]["method"], "GET");
    assert!(access["latency_ms"].as_f64().unwrap() > 1000.0);
}

/// A migrated, seeded catalog served with `extra` variables, ready, and one of its products.
struct Seeded {
    db: TestDatabase,
    exchange: TestExchange,
    served: Served,
    product: uuid::Uuid,
}

async fn serve_seeded(extra: &[(&str, &str)]) -> Seeded {
    let db = TestDatabase::create("catalog").await;
    let exchange = TestExchange::new(dockyard_contracts::topology());
    let amqp = amqp_url();
    let env = [("DATABASE_URL", db.url()), ("AMQP_URL", amqp.as_str())];
    assert!(run(&env, &["migrate"]).await.status.success());
    assert!(run(&env, &["seed"]).await.status.success());
    let served = serve(db.url(), &exchange, extra).await;
    wait_until_ready(served.port).await;
    let pool = db.pool().await;
    let product = sqlx::query_scalar("SELECT id FROM products LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    Seeded {
        db,
        exchange,
        served,
        product,
    }
}

/// Waits until `count` `SELECT`s on products wait for the test's table lock.
async fn wait_for_blocked_queries(pool: &sqlx::PgPool, count: i64) {
    for _ in 0..200 {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND query LIKE 'SELECT * FROM products%'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if blocked >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the requests never reached the database");
}

#[tokio::test]
async fn probes_and_scrapes_stay_out_of_the_info_log_and_no_colour_goes_to_a_pipe() {
    let db = TestDatabase::create("catalog").await;
    let exchange = TestExchange::new(dockyard_contracts::topology());
    let amqp = amqp_url();
    let env = [("DATABASE_URL", db.url()), ("AMQP_URL", amqp.as_str())];
    // Pretty lines written to a pipe carry no ANSI escapes.
    let migrated = run(&[env[0], env[1], ("LOG_FORMAT", "pretty")], &["migrate"]).await;
    assert!(migrated.status.success());
    let pretty = String::from_utf8_lossy(&migrated.stdout);
    assert!(!pretty.is_empty() && !pretty.contains('\u{1b}'), "{pretty}");

    let mut served = serve(db.url(), &exchange, &[("RUST_LOG", "info")]).await;
    wait_until_ready(served.port).await;
    // Probes answered 503 while it started are logged (a state worth seeing); from here on,
    // every request succeeds.
    served.lines.lock().unwrap().clear();
    let client = client();
    for path in ["/health/live", "/health/ready", "/metrics", "/products"] {
        let url = format!("http://127.0.0.1:{}{path}", served.port);
        assert_eq!(
            client.get(url).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    // Each access-log event is written before its response is sent, and the requests went one
    // after the other: once the last one's event is there, the probes' would be too.
    served
        .line_until("the access-log event of /products", |line| {
            serde_json::from_str::<Value>(line).is_ok_and(|e| {
                e["message"] == "request completed" && e["span"]["route"] == "/products"
            })
        })
        .await;
    let routes: Vec<String> = served
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["message"] == "request completed" && e["status"] == 200)
        .map(|e| e["span"]["route"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(routes, ["/products"], "one INFO line, for the real request");
    let _ = served.child.kill().await;
}

/// A clean stop is not an error: after the relay has published (its confirm channel open),
/// SIGTERM closes every channel before the broker connection, so lapin logs no "Connection
/// error" on the way out (it did, at ERROR, on every stop after traffic).
#[tokio::test]
async fn a_stop_after_relaying_events_logs_no_error() {
    let Seeded {
        db: _db,
        exchange,
        mut served,
        product,
    } = serve_seeded(&[]).await;
    let mut answers = exchange.probe("stock.*").await;
    let order_id = uuid::Uuid::now_v7();
    exchange
        .publish(&dockyard_messaging::Envelope::new(
            "order.placed",
            order_id,
            &serde_json::json!({"order_id": order_id, "lines": [{"product_id": product, "quantity": 1}]}),
        ))
        .await;
    let answer = answers.next(Duration::from_secs(10)).await;
    assert_eq!(
        (answer.kind.as_str(), answer.correlation_id),
        ("stock.reserved", order_id)
    );

    let pid = Pid::from_raw(i32::try_from(served.child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), served.child.wait())
        .await
        .expect("catalog exits")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let lines = served.all_lines().await;
    assert!(
        lines
            .iter()
            .any(|line| line.contains("broker connection closed")),
        "the stop went through the broker's close"
    );
    let errors: Vec<&String> = lines
        .iter()
        .filter(|line| {
            serde_json::from_str::<Value>(line).is_ok_and(|event| event["level"] == "ERROR")
        })
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
