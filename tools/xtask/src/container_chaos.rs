//! `cargo xtask chaos --containers`: faults staged on the network between the Compose stack's
//! containers, each under a keyed order load and a read load through the published gateway
//! port, each judged by the client-side ledger ([`ledger::judge`]) and the reads:
//!
//! 1. a catalog replica cut off its network (`docker network disconnect`, 15 s);
//! 2. the order service, then one catalog, cut off from RabbitMQ (20 s; a `DROP` rule in the
//!    container's network namespace, entered with `nsenter`);
//! 3. a catalog cut off from PostgreSQL (10 s, the same way);
//! 4. a catalog replica slow and lossy (`tc netem` 200 ms delay, 5 % loss, 15 s);
//! 5. the broker container restarted (`docker compose restart rabbitmq`, its volume kept);
//! 6. a rolling restart of every service, one container at a time;
//! 7. the gateway's view of Docker's DNS cut (15 s), then a scale-out it must pick up.
//!
//! Every rule, qdisc and link is restored after its fault, also when the fault's checks fail,
//! and the project (its own: `dockyard-chaos`) is taken down at the end. Only the project's own
//! containers and network are touched. The table goes to stdout and, with `--write-docs`, to
//! `docs/chaos.md`'s containers section.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::Value;

use crate::{
    clients::Reads,
    compose_test::{self, Load, Stack},
    docker::output,
    ledger::{self, Check, Expectations, Ledger, Window},
};

const PROJECT: &str = "dockyard-chaos";

/// One fault's row.
#[derive(Debug)]
struct Row {
    fault: String,
    lasted: String,
    accepted: usize,
    failed_attempts: usize,
    failed_reads: usize,
    reads: usize,
    read_p99: String,
    lost_or_doubled: String,
    detection: String,
    recovery: String,
    holds: bool,
}

/// Runs every fault; `Ok(true)` when each one's checks hold.
/// The faults by name, in the order they run (`--only` picks some).
pub const FAULTS: [&str; 8] = [
    "disconnect",
    "order-broker",
    "catalog-broker",
    "database",
    "slow",
    "broker-restart",
    "rolling",
    "dns",
];

pub async fn run(env_file: Option<PathBuf>, only: &[String]) -> anyhow::Result<bool> {
    if let Some(unknown) = only.iter().find(|name| !FAULTS.contains(&name.as_str())) {
        anyhow::bail!(
            "no fault named {unknown:?}; the faults: {}",
            FAULTS.join(", ")
        );
    }
    let stack = compose_test::prepare(PROJECT, env_file).await?;
    println!("chaos --containers: building the images (cached) and starting the stack");
    output(
        stack
            .project
            .compose(&["build", "catalog", "order", "gateway", "console"]),
    )
    .await?;
    let outcome = async {
        output(
            stack
                .project
                .compose(&["up", "-d", "--wait", "--wait-timeout", "180"]),
        )
        .await?;
        faults(&stack, only).await
    }
    .await;
    let down = stack.down().await;
    let (rows, checks) = outcome?;
    down?;
    println!(
        "\n{:<44} {:>6} {:>8} {:>7} {:>13} {:>9} {:>8} {:>14} {:>14}",
        "fault",
        "for",
        "accepted",
        "failed",
        "reads failed",
        "read p99",
        "lost/dbl",
        "detected in",
        "recovered in"
    );
    for row in &rows {
        println!(
            "{:<44} {:>6} {:>8} {:>7} {:>6} of {:<4} {:>9} {:>8} {:>14} {:>14}{}",
            row.fault,
            row.lasted,
            row.accepted,
            row.failed_attempts,
            row.failed_reads,
            row.reads,
            row.read_p99,
            row.lost_or_doubled,
            row.detection,
            row.recovery,
            if row.holds { "" } else { "  NO" }
        );
    }
    Ok(ledger::report(&checks))
}

/// A fault's run: a load, the fault, its restoration, the verdict.
struct Phase<'a> {
    stack: &'a Stack,
    ledger: Arc<Ledger>,
    reads: Arc<Mutex<Reads>>,
    stop: Arc<AtomicBool>,
    load: Load,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl<'a> Phase<'a> {
    async fn start(stack: &'a Stack) -> anyhow::Result<Self> {
        let (ledger, reads, stop) = (
            Arc::new(Ledger::default()),
            Arc::new(Mutex::new(Reads::default())),
            Arc::new(AtomicBool::new(false)),
        );
        let (load, tasks) = stack.load(&ledger, &reads, &stop).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok(Self {
            stack,
            ledger,
            reads,
            stop,
            load,
            tasks,
        })
    }

    /// Stops the load and judges it: its checks, named for the fault, and its row.
    async fn finish(
        self,
        fault: &str,
        (from, to): (Duration, Duration),
        windows: Vec<Window>,
        (detection, recovery): (String, String),
        mut extra: Vec<Check>,
    ) -> anyhow::Result<(Row, Vec<Check>)> {
        tokio::time::sleep(Duration::from_secs(3)).await;
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.context("a load task panicked")?;
        }
        let expect = Expectations {
            min_accepted: 20,
            windows: windows.clone(),
        };
        let mut checks = self.stack.judged(&self.ledger, &self.load, &expect).await?;
        let reads = self.reads.lock().expect("the reads");
        checks.push(reads.check(&windows, 21));
        checks.append(&mut extra);
        let placements = self.ledger.placements();
        let find = |name: &str| {
            checks
                .iter()
                .find(|c| c.name == name)
                .map_or_else(|| "?".to_owned(), |c| c.observed.clone())
        };
        let row = Row {
            fault: fault.to_owned(),
            lasted: format!("{:.0} s", to.saturating_sub(from).as_secs_f64()),
            accepted: placements.iter().filter(|p| p.accepted().is_some()).count(),
            failed_attempts: placements
                .iter()
                .flat_map(|p| p.attempts.iter())
                .filter(|a| !matches!(a.answer, ledger::Answer::Accepted(_)))
                .count(),
            failed_reads: reads.failed.len(),
            reads: reads.total,
            read_p99: reads.latency(from, to, 0.99).map_or_else(
                || "?".into(),
                |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0),
            ),
            lost_or_doubled: format!(
                "{}/{}",
                find("accepted orders lost"),
                find("orders no client was told of")
            ),
            detection,
            recovery,
            holds: checks.iter().all(|c| c.holds),
        };
        // Name every check after its fault.
        let named = checks
            .into_iter()
            .map(|mut c| {
                c.detail.insert(0, format!("[{fault}]"));
                c
            })
            .collect();
        Ok((row, named))
    }
}

/// A container's id, process id and address on the project's network.
struct Target {
    id: String,
    pid: String,
    ip: String,
}

async fn target(stack: &Stack, service: &str, index: usize) -> anyhow::Result<Target> {
    let id = stack
        .project
        .containers(service)
        .await?
        .into_iter()
        .nth(index)
        .with_context(|| format!("no {service} container {index}"))?;
    let pid = stack.project.inspect(&id, "{{.State.Pid}}").await?;
    let ip = stack
        .project
        .inspect(
            &id,
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        )
        .await?;
    Ok(Target { id, pid, ip })
}

/// A command run in a container's network namespace, with the host's tools.
async fn in_netns(pid: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut command = tokio::process::Command::new("nsenter");
    command.args(["-t", pid, "-n"]).args(args);
    output(command).await
}

/// `iptables ACTION RULE…` (`-I` to add a rule first, `-D` to delete it) in a container's
/// network namespace.
async fn iptables(pid: &str, action: &str, rule: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["iptables", action];
    args.extend_from_slice(rule);
    in_netns(pid, &args).await
}

/// The interface of a container's default route (`eth0`, or another name after a reconnect).
async fn interface(pid: &str) -> anyhow::Result<String> {
    let route = in_netns(pid, &["ip", "-4", "route", "show", "default"]).await?;
    route
        .split_whitespace()
        .skip_while(|word| *word != "dev")
        .nth(1)
        .map(str::to_owned)
        .context("no default route in the container")
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

/// Every fault in turn.
async fn faults(stack: &Stack, only: &[String]) -> anyhow::Result<(Vec<Row>, Vec<Check>)> {
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    let mut record = |(row, mut more): (Row, Vec<Check>)| {
        println!(
            "  {}: {}",
            row.fault,
            if row.holds { "holds" } else { "DOES NOT HOLD" }
        );
        for check in more.iter().filter(|c| !c.holds) {
            println!(
                "    {}: expected {}, observed {}",
                check.name, check.expected, check.observed
            );
            for line in check.detail.iter().skip(1) {
                println!("      {line}");
            }
        }
        rows.push(row);
        checks.append(&mut more);
    };
    let (row, more, baseline) = no_fault(stack).await?;
    record((row, more));
    if wanted("disconnect") {
        record(replica_cut_off(stack).await?);
    }
    for (name, service) in [("order-broker", "order"), ("catalog-broker", "catalog")] {
        if wanted(name) {
            record(cut_from_broker(stack, service, 0).await?);
        }
    }
    if wanted("database") {
        record(cut_from_database(stack).await?);
    }
    if wanted("slow") {
        record(slow_and_lossy(stack, baseline).await?);
    }
    if wanted("broker-restart") {
        record(broker_restarted(stack).await?);
    }
    if wanted("rolling") {
        record(rolling_restart(stack).await?);
    }
    if wanted("dns") {
        record(dns_cut(stack).await?);
    }
    Ok((rows, checks))
}

type Outcome = anyhow::Result<(Row, Vec<Check>)>;

/// A baseline: the read p99 without a fault, for the slow replica's target.
async fn no_fault(stack: &Stack) -> anyhow::Result<(Row, Vec<Check>, Option<Duration>)> {
    println!("chaos --containers: no fault (baseline)");
    let phase = Phase::start(stack).await?;
    let from = phase.ledger.now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let to = phase.ledger.now();
    let baseline = phase
        .reads
        .lock()
        .expect("the reads")
        .latency(from, to, 0.99);
    let (row, checks) = phase
        .finish(
            "no fault",
            (from, to),
            Vec::new(),
            ("-".into(), "-".into()),
            Vec::new(),
        )
        .await?;
    Ok((row, checks, baseline))
}

/// Fault 1: a catalog replica cut off its network for 15 s.
async fn replica_cut_off(stack: &Stack) -> Outcome {
    println!("chaos --containers: a catalog replica cut off its network for 15 s");
    let network = format!("{PROJECT}_default");
    let phase = Phase::start(stack).await?;
    let victim = target(stack, "catalog", 0).await?;
    let from = phase.ledger.now();
    output(
        stack
            .project
            .docker(&["network", "disconnect", &network, &victim.id]),
    )
    .await?;
    let cut = Instant::now();
    let detected = stack.healthy_catalogs(1, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(cut.elapsed())).await;
    // Back under the service's name, as the partition healing would leave it.
    output(stack.project.docker(&[
        "network", "connect", "--alias", "catalog", &network, &victim.id,
    ]))
    .await?;
    let to = phase.ledger.now();
    let back = stack.healthy_catalogs(2, Duration::from_secs(10)).await;
    let extra = vec![
        check_some(
            "cut-off replica out of rotation (DNS and health checks)",
            detected,
        ),
        check_some("back in rotation within 10 s of the reconnection", back),
    ];
    phase
        .finish(
            "catalog replica cut off (network disconnect)",
            (from, to),
            Vec::new(),
            (secs(detected), secs(back)),
            extra,
        )
        .await
}

/// Fault 2: `service` cut off from RabbitMQ for 20 s.
async fn cut_from_broker(stack: &Stack, service: &str, index: usize) -> Outcome {
    println!("chaos --containers: {service} cut off from RabbitMQ for 20 s");
    let phase = Phase::start(stack).await?;
    let victim = target(stack, service, index).await?;
    let broker = target(stack, "rabbitmq", 0).await?;
    let rule = ["OUTPUT", "-d", broker.ip.as_str(), "-j", "DROP"];
    let from = phase.ledger.now();
    iptables(&victim.pid, "-I", &rule).await?;
    let cut = Instant::now();
    let mut degraded = false;
    while cut.elapsed() < Duration::from_secs(20) {
        let report: Value =
            match reqwest::get(format!("http://{}:8080/health/ready", victim.ip)).await {
                Ok(response) => response.json().await.unwrap_or_default(),
                Err(_) => Value::Null,
            };
        degraded |= report["status"] == "ready"
            && (report["checks"]["broker"]["status"] == "degraded"
                || report["checks"]["outbox"]["status"] == "degraded");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let restored = iptables(&victim.pid, "-D", &rule).await;
    let to = phase.ledger.now();
    restored?;
    let drained = pending_drained(stack, Duration::from_secs(10)).await;
    let extra = vec![
        check_some(
            "every pending order confirmed within 10 s of the heal",
            drained,
        ),
        Check {
            name: "readiness stayed 200 and said degraded during the cut",
            expected: "yes".into(),
            observed: if degraded { "yes" } else { "no" }.into(),
            holds: degraded || service == "catalog",
            detail: Vec::new(),
        },
    ];
    phase
        .finish(
            &format!("{service} cut off from RabbitMQ"),
            (from, to),
            Vec::new(),
            ("-".into(), secs(drained)),
            extra,
        )
        .await
}

/// Fault 3: a catalog cut off from PostgreSQL for 10 s.
async fn cut_from_database(stack: &Stack) -> Outcome {
    println!("chaos --containers: a catalog cut off from PostgreSQL for 10 s");
    let phase = Phase::start(stack).await?;
    let victim = target(stack, "catalog", 0).await?;
    let database = target(stack, "postgres", 0).await?;
    let rule = ["OUTPUT", "-d", database.ip.as_str(), "-j", "DROP"];
    let from = phase.ledger.now();
    iptables(&victim.pid, "-I", &rule).await?;
    let cut = Instant::now();
    let mut isolated = None;
    while cut.elapsed() < Duration::from_secs(10) {
        let endpoints = stack.catalog_endpoints().await.unwrap_or_default();
        if isolated.is_none()
            && endpoints
                .iter()
                .any(|(url, state)| url.contains(&victim.ip) && state != "healthy")
        {
            isolated = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let restored = iptables(&victim.pid, "-D", &rule).await;
    let to = phase.ledger.now();
    restored?;
    let back = stack.healthy_catalogs(2, Duration::from_secs(10)).await;
    let slowest = phase
        .reads
        .lock()
        .expect("the reads")
        .latency(from, to, 1.0);
    let extra = vec![
        check_some(
            "out of rotation while its database is unreachable",
            isolated,
        ),
        check_some("recovered within 10 s of the heal", back),
        Check {
            name: "no read hung past the gateway's time-out (15 s)",
            expected: "< 15 s".into(),
            observed: secs(slowest),
            holds: slowest.is_some_and(|d| d < Duration::from_secs(15)),
            detail: Vec::new(),
        },
    ];
    phase
        .finish(
            "catalog cut off from PostgreSQL",
            (from, to),
            Vec::new(),
            (secs(isolated), secs(back)),
            extra,
        )
        .await
}

/// Fault 4, one catalog replica slow and lossy for 15 s: `tc netem` (200 ms, 5 % loss) where
/// the kernel has it; else 5 % loss with an `iptables` random drop and a slow link with a
/// `tbf` rate limit (queueing delay up to 200 ms), and the row says so.
async fn slow_and_lossy(stack: &Stack, baseline: Option<Duration>) -> Outcome {
    println!("chaos --containers: one catalog replica slow and lossy for 15 s");
    let phase = Phase::start(stack).await?;
    let victim = target(stack, "catalog", 0).await?;
    let device = interface(&victim.pid).await?;
    let from = phase.ledger.now();
    let netem = in_netns(
        &victim.pid,
        &[
            "tc", "qdisc", "add", "dev", &device, "root", "netem", "delay", "200ms", "loss", "5%",
        ],
    )
    .await;
    let loss = [
        "OUTPUT",
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        "0.05",
        "-j",
        "DROP",
    ];
    let how = if netem.is_ok() {
        "netem 200 ms, 5 % loss"
    } else {
        // This kernel has no sch_netem.
        iptables(&victim.pid, "-I", &loss).await?;
        in_netns(
            &victim.pid,
            &[
                "tc", "qdisc", "add", "dev", &device, "root", "tbf", "rate", "256kbit", "burst",
                "16kbit", "latency", "200ms",
            ],
        )
        .await?;
        "tbf 256 kbit/s, 5 % drop (no netem here)"
    };
    tokio::time::sleep(Duration::from_secs(15)).await;
    let restored = in_netns(&victim.pid, &["tc", "qdisc", "del", "dev", &device, "root"]).await;
    if netem.is_err() {
        iptables(&victim.pid, "-D", &loss).await?;
    }
    let to = phase.ledger.now();
    restored?;
    let p99 = phase
        .reads
        .lock()
        .expect("the reads")
        .latency(from, to, 0.99);
    let extra = vec![Check {
        name: "read p99 within 2× the unfaulted p99",
        expected: format!("≤ 2 × {}", secs_ms(baseline)),
        observed: secs_ms(p99),
        holds: matches!((p99, baseline), (Some(p), Some(b)) if p <= b * 2),
        detail: Vec::new(),
    }];
    phase
        .finish(
            &format!("one catalog slow and lossy ({how})"),
            (from, to),
            Vec::new(),
            ("-".into(), "-".into()),
            extra,
        )
        .await
}

/// Fault 5: the broker container restarted, its volume kept.
async fn broker_restarted(stack: &Stack) -> Outcome {
    println!("chaos --containers: the broker container restarted");
    let phase = Phase::start(stack).await?;
    let from = phase.ledger.now();
    output(stack.project.compose(&["restart", "rabbitmq"])).await?;
    let to = phase.ledger.now();
    let drained = pending_drained(stack, Duration::from_secs(30)).await;
    let extra = vec![check_some(
        "every pending order confirmed after the restart",
        drained,
    )];
    phase
        .finish(
            "broker container restarted",
            (from, to),
            Vec::new(),
            ("-".into(), secs(drained)),
            extra,
        )
        .await
}

/// Fault 6: a rolling restart of every service, one container at a time.
async fn rolling_restart(stack: &Stack) -> Outcome {
    println!("chaos --containers: a rolling restart of every service, one container at a time");
    let phase = Phase::start(stack).await?;
    let from = phase.ledger.now();
    let mut windows = Vec::new();
    for service in ["catalog", "order", "console", "gateway"] {
        for id in stack.project.containers(service).await? {
            let began = phase.ledger.now();
            output(stack.project.docker(&["restart", "--time", "30", &id])).await?;
            wait_healthy(stack, &id).await?;
            if service == "gateway" {
                // The only gateway: its published port is closed while it restarts.
                windows.push(Window {
                    fault: "the only gateway restarts".into(),
                    from: began,
                    to: phase.ledger.now() + Duration::from_secs(1),
                });
            }
        }
    }
    let to = phase.ledger.now();
    phase
        .finish(
            "rolling restart of every service",
            (from, to),
            windows,
            ("-".into(), "-".into()),
            Vec::new(),
        )
        .await
}

/// Fault 7: the gateway's view of Docker's DNS cut for 15 s, then a scale-out it must pick up.
async fn dns_cut(stack: &Stack) -> Outcome {
    println!("chaos --containers: the gateway's DNS cut for 15 s, then a scale-out");
    let phase = Phase::start(stack).await?;
    let gateway = target(stack, "gateway", 0).await?;
    let rule = ["OUTPUT", "-d", "127.0.0.11", "-j", "DROP"];
    let from = phase.ledger.now();
    iptables(&gateway.pid, "-I", &rule).await?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let kept = stack.catalog_endpoints().await.map_or(0, |e| e.len());
    let restored = iptables(&gateway.pid, "-D", &rule).await;
    let to = phase.ledger.now();
    restored?;
    stack.scale_catalog(3).await?;
    let picked = stack.healthy_catalogs(3, Duration::from_secs(10)).await;
    stack.scale_catalog(2).await?;
    let extra = vec![
        Check {
            name: "the last good endpoints kept while DNS does not answer",
            expected: "2".into(),
            observed: kept.to_string(),
            holds: kept == 2,
            detail: Vec::new(),
        },
        check_some(
            "a third replica picked up within 10 s once DNS answers",
            picked,
        ),
    ];
    phase
        .finish(
            "gateway's DNS cut",
            (from, to),
            Vec::new(),
            ("-".into(), secs(picked)),
            extra,
        )
        .await
}

fn secs_ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "?".into(),
        |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0),
    )
}

fn check_some(name: &'static str, when: Option<Duration>) -> Check {
    Check::yes(name, when.is_some(), secs(when))
}

/// Waits up to `within` for no order to be pending; how long it took.
async fn pending_drained(stack: &Stack, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        let pending = stack
            .project
            .psql(
                "orders",
                "SELECT count(*) FROM orders WHERE status = 'pending'",
            )
            .await
            .ok()
            .and_then(|rows| rows.first()?.first()?.parse::<i64>().ok());
        if pending == Some(0) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// Waits up to 60 s for container `id` to be healthy again.
async fn wait_healthy(stack: &Stack, id: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if stack
            .project
            .inspect(id, "{{.State.Health.Status}}")
            .await?
            == "healthy"
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("{id} not healthy within 60 s")
}
