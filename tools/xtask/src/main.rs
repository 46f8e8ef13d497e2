use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use xtask::{load, logs, stack};

/// Dockyard's developer tools.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run the whole platform as local processes: catalog ×2, order, gateway (Ctrl-C stops it).
    Up {
        /// Catalog instances.
        #[arg(long, default_value_t = 2)]
        catalog: usize,
        /// Order instances.
        #[arg(long, default_value_t = 1)]
        order: usize,
        /// Also start a catalog canary instance…
        #[arg(long)]
        canary: bool,
        /// …taking this percentage of clients.
        #[arg(long, default_value_t = 10)]
        canary_weight: u8,
        /// The gateway's port on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The gateway admin API's port on 127.0.0.1.
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// The console's port on 127.0.0.1 (the platform live, in a browser); every instance
        /// exports its traces to it.
        #[arg(long, default_value_t = 8088)]
        console_port: u16,
        /// Run without the console (and export no traces).
        #[arg(long)]
        no_console: bool,
        /// Build and run release binaries.
        #[arg(long)]
        release: bool,
    },
    /// Run schemathesis (every check) against a platform of its own: catalog and order,
    /// directly and through the gateway, and the gateway admin API.
    Conformance {
        /// Use release binaries (build them first).
        #[arg(long)]
        release: bool,
    },
    /// Inject every fault (broker stop, PostgreSQL restart, SIGKILL/SIGTERM of each service,
    /// poison events, a crash-looping consumer, a bad-input flood) into a platform of its own
    /// under load, then check the saga's invariants. Restarts the machine's PostgreSQL and
    /// RabbitMQ (and always brings them back): do not run it while tests use them.
    Chaos {
        /// Use release binaries (build them first).
        #[arg(long)]
        release: bool,
        /// Instead: faults on the network between the Compose stack's containers (a replica
        /// cut off, RabbitMQ and PostgreSQL cut off, a slow and lossy replica, the broker
        /// restarted, a rolling restart, DNS cut), on a project of its own.
        #[arg(long)]
        containers: bool,
        /// With --containers: Compose's `--env-file` (e.g. `deploy/offline.env`).
        #[arg(long)]
        env_file: Option<std::path::PathBuf>,
        /// With --containers: only these faults (after the unfaulted baseline), by name:
        /// disconnect, order-broker, catalog-broker, database, slow, broker-restart, rolling,
        /// dns.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// The console in headless Chromium against a platform of its own: every instance shown, a
    /// killed instance turning unhealthy, the canary slider, an order's trace
    /// (`tools/xtask/browser/console_test.py`; needs chromium, chromium-driver and selenium).
    ConsoleTest {
        /// Use release binaries (build them first).
        #[arg(long)]
        release: bool,
        /// Also save the page, with a trace open, as this PNG (e.g. docs/console.png).
        #[arg(long)]
        screenshot: Option<std::path::PathBuf>,
    },
    /// The catalog's `GET /products/{id}` against `pgbench -S` on the same PostgreSQL, in one
    /// run (`bench/catalog.sh`).
    CatalogBench {
        /// Seconds per pass.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Connections of both load generators (and the catalog's pool size).
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// The catalog's `HTTP_WORKERS`.
        #[arg(long, default_value_t = 2)]
        http_workers: usize,
        /// Products to read at random (pgbench -S reads 1,000,000 accounts at random).
        #[arg(long, default_value_t = 1000)]
        products: usize,
        /// Where the service binaries are (default: target/release).
        #[arg(long)]
        bin_dir: Option<std::path::PathBuf>,
    },
    /// Idle memory and start-to-ready of each service, and its memory after a load and 10 s
    /// of idle, on a platform of its own (release builds, `RUST_LOG=warn`; `bench/footprint.sh`).
    Footprint {
        /// Requests of the load on each service.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Timed starts of each service.
        #[arg(long, default_value_t = 5)]
        starts: usize,
        /// Run the services from this directory instead of target/release (to compare builds).
        #[arg(long)]
        bin_dir: Option<std::path::PathBuf>,
    },
    /// The order saga at saturation, at 80 % and at 2× its capacity, on a platform of its own;
    /// prints orders/s, placement→confirmed latency and the invariants (`bench/saga.sh`).
    SagaBench {
        /// Seconds per pass.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Clients of the saturation pass.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Skip the saturation pass: use this many orders/s as capacity.
        #[arg(long)]
        capacity: Option<f64>,
        /// Instead of the 80 % and 2× passes, fixed-rate passes at these orders/s (comma
        /// separated; no saturation pass).
        #[arg(long, value_delimiter = ',')]
        rates: Vec<f64>,
        /// Use release binaries (build them first).
        #[arg(long)]
        release: bool,
        /// Run the services from this directory instead (to compare builds).
        #[arg(long)]
        bin_dir: Option<std::path::PathBuf>,
        /// Export spans to a console on the same machine, sampling this ratio of traces
        /// (0 to 1); without it nothing is exported.
        #[arg(long)]
        export_ratio: Option<f64>,
    },
    /// Print a bearer token signed with the local platform's key (made on first use in
    /// `.dockyard/dev-keys/`), for `Authorization: Bearer …` through the local gateway.
    Token {
        /// The subject (`sub`): a customer's id (a UUID) to place and read orders as them.
        #[arg(long, default_value = "0196b3a0-0000-7000-8000-000000000001")]
        sub: String,
        /// A scope to grant, e.g. `catalog:write` (repeatable).
        #[arg(long)]
        scope: Vec<String>,
        /// Validity in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Build the local base images from Debian packages (a builder with this host's Rust
    /// toolchain, a distroless-like runtime, PostgreSQL, RabbitMQ, Prometheus) for a host with
    /// no registry; a no-op for those that exist. Then:
    /// `docker compose --env-file deploy/offline.env up -d --wait`.
    Images,
    /// Build the images and run the stack with `docker compose` as a user would: the README's
    /// walk-through, scaling, self-healing, stop under load, container hardening, Prometheus
    /// (starts the Docker engine when none answers; takes the project down at the end).
    ComposeTest {
        /// Compose's `--env-file`, e.g. `deploy/offline.env` on a host with no registry.
        #[arg(long)]
        env_file: Option<std::path::PathBuf>,
        /// Empty the build cache first (`docker builder prune`): the first build is a cold one.
        #[arg(long)]
        cold: bool,
    },
    /// Drive realistic users through the gateway and report req/s and latencies per endpoint.
    Load {
        /// The gateway's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        gateway: String,
        /// Concurrent users.
        #[arg(long, default_value_t = 16)]
        users: usize,
        /// How long, in seconds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Stop after this many requests, if sooner.
        #[arg(long)]
        requests: Option<u64>,
    },
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        task @ Task::Up { .. } => {
            let (options, release) = up_options(&task);
            up(options, release).await
        }
        Task::Token { sub, scope, ttl } => token(&sub, &scope, ttl),
        Task::Images => verdict("images", xtask::docker::images().await.map(|()| true)),
        Task::ComposeTest { env_file, cold } => {
            let options = xtask::compose_test::Options { env_file, cold };
            verdict("compose-test", xtask::compose_test::run(options).await)
        }
        Task::Conformance { release } => verdict(
            "conformance",
            xtask::conformance::run(stack::bin_dir(release)).await,
        ),
        Task::Chaos {
            release,
            containers,
            env_file,
            only,
        } => verdict("chaos", chaos(release, containers, env_file, only).await),
        Task::ConsoleTest {
            release,
            screenshot,
        } => verdict(
            "console-test",
            xtask::console_test::run(stack::bin_dir(release), screenshot).await,
        ),
        Task::CatalogBench {
            seconds,
            connections,
            http_workers,
            products,
            bin_dir,
        } => {
            let options = xtask::catalog_bench::Options {
                seconds: seconds.max(1),
                connections: connections.max(1),
                http_workers: http_workers.max(1),
                products,
                bin_dir: bin_dir.unwrap_or_else(|| stack::bin_dir(true)),
            };
            let ran = xtask::catalog_bench::run(options).await;
            verdict("catalog-bench", ran.map(|()| true))
        }
        Task::Footprint {
            requests,
            starts,
            bin_dir,
        } => {
            let options = xtask::footprint::Options {
                bin_dir: bin_dir.unwrap_or_else(|| stack::bin_dir(true)),
                requests,
                starts: starts.max(1),
            };
            verdict("footprint", xtask::footprint::run(options).await)
        }
        Task::SagaBench {
            seconds,
            concurrency,
            capacity,
            rates,
            release,
            bin_dir,
            export_ratio,
        } => {
            let options = xtask::saga_bench::Options {
                export_ratio,
                seconds: seconds.max(1),
                concurrency: concurrency.max(1),
                bin_dir: bin_dir.unwrap_or_else(|| stack::bin_dir(release)),
                capacity,
                rates,
            };
            verdict("saga-bench", xtask::saga_bench::run(options).await)
        }
        Task::Load {
            gateway,
            users,
            seconds,
            requests,
        } => load(gateway, users, seconds, requests).await,
    }
}

/// Runs `cargo xtask load`.
async fn load(gateway: String, users: usize, seconds: u64, requests: Option<u64>) -> ExitCode {
    // The local platform's key: orders need a customer's token.
    let signer = match xtask::dev_keys::ensure() {
        Ok((signer, _)) => signer,
        Err(error) => {
            eprintln!("load: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let options = load::Options {
        gateway,
        users: users.max(1),
        duration: Duration::from_secs(seconds.max(1)),
        max_requests: requests,
        signer: Some(std::sync::Arc::new(signer)),
    };
    let report = load::run(options, true).await;
    print!("{report}");
    if report.requests() == 0 {
        eprintln!("no request got through: is the platform up (`cargo xtask up`)?");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Prints a token signed with the local key (`cargo xtask token`).
fn token(sub: &str, scopes: &[String], ttl: u64) -> ExitCode {
    match xtask::dev_keys::ensure() {
        Ok((signer, _)) => {
            let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
            let ttl = Duration::from_secs(ttl.max(1));
            println!("{}", xtask::dev_keys::token(&signer, sub, &scopes, ttl));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("token: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The exit code of a task that passes (`Ok(true)`), fails its checks, or cannot run.
/// `cargo xtask up`'s stack, from its options.
fn up_options(task: &Task) -> (stack::Options, bool) {
    let &Task::Up {
        catalog,
        order,
        canary,
        canary_weight,
        port,
        admin_port,
        console_port,
        no_console,
        release,
    } = task
    else {
        unreachable!("called with Task::Up");
    };
    let options = stack::Options {
        catalog_instances: catalog.max(1),
        order_instances: order.max(1),
        canary,
        canary_weight: canary_weight.min(100),
        gateway_port: port,
        admin_port,
        database_url: env_or(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        ),
        catalog_database: env_or("CATALOG_DATABASE", "dockyard_catalog"),
        order_database: env_or("ORDER_DATABASE", "dockyard_orders"),
        amqp_url: env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        amqp_exchange: env_or("AMQP_EXCHANGE", "dockyard.events"),
        bin_dir: stack::bin_dir(release),
        admin_token: env_or("ADMIN_TOKEN", "dockyard-local-admin-token"),
        log_format: env_or("LOG_FORMAT", "pretty"),
        show_logs: true,
        service_env: Vec::new(),
        gateway_env: Vec::new(),
        log_file: None,
        auth: true,
        console_port: (!no_console).then_some(console_port),
    };
    (options, release)
}

/// The process suite, or with `containers` the one on the Compose stack's network.
async fn chaos(
    release: bool,
    containers: bool,
    env_file: Option<std::path::PathBuf>,
    only: Vec<String>,
) -> anyhow::Result<bool> {
    if containers {
        xtask::container_chaos::run(env_file, &only).await
    } else {
        xtask::chaos::run(stack::bin_dir(release)).await
    }
}

fn verdict(task: &str, outcome: anyhow::Result<bool>) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("{task}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(options: stack::Options, release: bool) -> ExitCode {
    logs::say("building catalog, order, gateway and console");
    if let Err(error) = tokio::task::spawn_blocking(move || stack::build(release))
        .await
        .unwrap_or_else(|e| Err(e.into()))
    {
        eprintln!("devstack: {error:#}");
        return ExitCode::FAILURE;
    }
    let token = options.admin_token.clone();
    let stack = match stack::Stack::start(options).await {
        Ok(stack) => stack,
        Err(error) => {
            eprintln!("devstack: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    logs::say(&format!(
        "ready: gateway on {} (admin API {} with `Authorization: Bearer {token}`); Ctrl-C stops everything",
        stack.gateway_url,
        stack.admin_url()
    ));
    if let Some(console) = &stack.console_url {
        logs::say(&format!(
            "console: open {console}/ in a browser (topology, releases, the saga, traces)"
        ));
    }
    dockyard_shutdown().await;
    logs::say("stopping: gateway first, then the services");
    let statuses = stack.stop().await;
    let failed: Vec<String> = statuses
        .iter()
        .filter(|(_, status)| !status.success())
        .map(|(name, status)| format!("{name} ({status})"))
        .collect();
    if failed.is_empty() {
        logs::say("every instance drained and exited 0");
        ExitCode::SUCCESS
    } else {
        eprintln!("devstack: did not exit cleanly: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn dockyard_shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
