//! The whole platform as local processes, the way an orchestrator would run it: each
//! instance is a separate OS process on its own loopback address (catalog 127.0.0.10+,
//! order 127.0.0.20+, canary 127.0.0.30), instances of a service share a port, and the
//! gateway finds them by DNS, from a small DNS server this stack runs on loopback and updates
//! as instances come and go (as Compose or a Kubernetes headless Service would).
//!
//! Start: create the databases if missing → `catalog migrate`, `catalog seed` (first run),
//! `order migrate` as one-off processes → instances → wait until every one is ready. Stop:
//! SIGTERM to the gateway, then to every other instance; each drains and exits 0.

use std::{
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use anyhow::Context;
use dockyard_testkit::{LocalDns, TokenIssuer};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::process::{Child, Command};

use crate::{database, dev_keys, logs};

const CATALOG_DNS: &str = "catalog.dockyard.internal";
const CANARY_DNS: &str = "catalog-canary.dockyard.internal";
const ORDER_DNS: &str = "order.dockyard.internal";

/// What to start, and where.
#[derive(Debug, Clone)]
pub struct Options {
    pub catalog_instances: usize,
    pub order_instances: usize,
    /// One more catalog instance, as the canary pool, taking `canary_weight` % of clients.
    pub canary: bool,
    pub canary_weight: u8,
    /// The gateway's port on 127.0.0.1 (`0`: any free port).
    pub gateway_port: u16,
    /// The gateway's admin API port on 127.0.0.1 (`0`: any free port).
    pub admin_port: u16,
    /// The PostgreSQL server; each service gets its own database on it.
    pub database_url: String,
    pub catalog_database: String,
    pub order_database: String,
    pub amqp_url: String,
    pub amqp_exchange: String,
    /// Where the service binaries are (`target/debug` or `target/release`).
    pub bin_dir: PathBuf,
    pub admin_token: String,
    /// `LOG_FORMAT` of every instance.
    pub log_format: String,
    /// Print the instances' output (off in tests).
    pub show_logs: bool,
    /// More variables for catalog and order instances (e.g. `ORDER_PENDING_TIMEOUT`).
    pub service_env: Vec<(&'static str, String)>,
    /// More variables for the gateway (e.g. `RATE_LIMIT_PER_SEC`).
    pub gateway_env: Vec<(&'static str, String)>,
    /// Without `show_logs`, write the instances' output here (prefixed) instead of dropping it.
    pub log_file: Option<PathBuf>,
    /// The gateway verifies bearer tokens signed with the local key ([`dev_keys`]) and applies
    /// [`dev_keys::POLICIES`]; the services require its identity headers (`REQUIRE_IDENTITY`).
    pub auth: bool,
    /// Run the console on this port of 127.0.0.1 (`Some(0)`: any free port), started first,
    /// with every other instance exporting its traces to it (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub console_port: Option<u16>,
}

/// One running process.
#[derive(Debug)]
pub struct Instance {
    pub name: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    child: Child,
    /// How it was started, so it can be started again.
    binary: String,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
}

impl Instance {
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.ip, self.port)
    }

    fn pid(&self) -> Option<Pid> {
        self.child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw)
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }
}

/// The running platform.
#[derive(Debug)]
pub struct Stack {
    options: Options,
    log_file: Option<std::sync::Arc<std::sync::Mutex<std::fs::File>>>,
    dns: LocalDns,
    catalog_port: u16,
    order_port: u16,
    pub gateway_url: String,
    admin_port: u16,
    instances: Vec<Instance>,
    started: usize,
    /// The key tokens are signed with and the JWKS the gateway reads, when `auth` is on.
    auth: Option<(TokenIssuer, PathBuf)>,
    /// The console's URL, when it runs.
    pub console_url: Option<String>,
}

/// A free TCP port on `ip`.
fn free_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

fn ip(base: u8, index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, base + u8::try_from(index).unwrap_or(0))
}

/// The workspace's `target/<profile>` directory.
pub fn bin_dir(release: bool) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    target.join(if release { "release" } else { "debug" })
}

/// Builds the services and the console (`cargo build`), in release mode if asked.
pub fn build(release: bool) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = std::process::Command::new(cargo);
    command.args([
        "build", "-p", "catalog", "-p", "order", "-p", "gateway", "-p", "console",
    ]);
    // `cargo xtask` runs us under `cargo run`, which sets the variables a crate sees at run
    // time (`CARGO_PKG_NAME=xtask`, `CARGO_MANIFEST_DIR`, …). Build scripts such as ring's
    // rerun when those change, so passing them on rebuilt ring, rustls, sqlx and every service
    // on each `cargo xtask up` after a plain `cargo build`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || matches!(
                name.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "OUT_DIR"
            )
        {
            command.env_remove(name.as_ref());
        }
    }
    if release {
        command.arg("--release");
    }
    let status = command.status().context("running cargo build")?;
    anyhow::ensure!(status.success(), "cargo build failed ({status})");
    Ok(())
}

impl Stack {
    /// Prepares the databases and starts every instance; returns once all are ready.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let console = options.console_port.is_some().then_some("console");
        for binary in ["catalog", "order", "gateway"].into_iter().chain(console) {
            let path = options.bin_dir.join(binary);
            anyhow::ensure!(
                path.exists(),
                "{} is missing: build the services first",
                path.display()
            );
        }
        let dns = LocalDns::start().await?;
        let gateway_port = match options.gateway_port {
            0 => free_port(Ipv4Addr::LOCALHOST)?,
            port => port,
        };
        let log_file = match &options.log_file {
            Some(path) => Some(std::sync::Arc::new(std::sync::Mutex::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            ))),
            None => None,
        };
        let auth = if options.auth {
            Some(dev_keys::ensure().context("the local token signing key")?)
        } else {
            None
        };
        let mut stack = Self {
            auth,
            log_file,
            catalog_port: free_port(ip(10, 0))?,
            order_port: free_port(ip(20, 0))?,
            gateway_url: format!("http://127.0.0.1:{gateway_port}"),
            admin_port: match options.admin_port {
                0 => free_port(Ipv4Addr::LOCALHOST)?,
                port => port,
            },
            dns,
            options,
            instances: Vec::new(),
            started: 0,
            console_url: None,
        };
        stack.prepare_databases().await?;
        if let Some(port) = stack.options.console_port {
            stack.start_console(port)?;
        }
        for _ in 0..stack.options.catalog_instances {
            stack.add_catalog().await?;
        }
        if stack.options.canary {
            let (ip, port) = (ip(30, 0), stack.catalog_port);
            let env = stack.catalog_env();
            let canary = stack.spawn("canary", ip, port, "catalog", &["serve"], &env)?;
            stack.instances.push(canary);
            stack.dns.set(CANARY_DNS, &[ip]);
        }
        for index in 0..stack.options.order_instances {
            let env = stack.order_env();
            let order = stack.spawn(
                &format!("order-{}", index + 1),
                ip(20, index),
                stack.order_port,
                "order",
                &["serve"],
                &env,
            )?;
            stack.instances.push(order);
        }
        stack.publish_dns();
        stack.start_gateway(gateway_port)?;
        stack.wait_ready().await?;
        Ok(stack)
    }

    async fn prepare_databases(&self) -> anyhow::Result<()> {
        let options = &self.options;
        let fresh_catalog = database::ensure(&options.database_url, &options.catalog_database)
            .await
            .context("creating the catalog database (is PostgreSQL up? see DATABASE_URL)")?;
        database::ensure(&options.database_url, &options.order_database).await?;
        let catalog_env = [(
            "DATABASE_URL",
            database::url_of(&options.database_url, &options.catalog_database)?,
        )];
        let order_env = [(
            "DATABASE_URL",
            database::url_of(&options.database_url, &options.order_database)?,
        )];
        self.one_off("catalog", "migrate", &catalog_env).await?;
        if fresh_catalog {
            self.one_off("catalog", "seed", &catalog_env).await?;
        }
        self.one_off("order", "migrate", &order_env).await
    }

    /// Runs `binary command` to completion (factor 12: admin tasks as one-off processes).
    async fn one_off(
        &self,
        binary: &str,
        command: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<()> {
        let output = Command::new(self.options.bin_dir.join(binary))
            .arg(command)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("LOG_FORMAT", &self.options.log_format)
            .output()
            .await?;
        if self.options.show_logs {
            let prefix = logs::prefix(7, &format!("{binary} {command}"));
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                println!("{prefix} {line}");
            }
        }
        anyhow::ensure!(
            output.status.success(),
            "`{binary} {command}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(())
    }

    fn common_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("AMQP_URL", self.options.amqp_url.clone()),
            ("AMQP_EXCHANGE", self.options.amqp_exchange.clone()),
            ("LOG_FORMAT", self.options.log_format.clone()),
            ("HTTP_WORKERS", "1".to_owned()),
            ("DATABASE_MAX_CONNECTIONS", "5".to_owned()),
        ];
        if self.auth.is_some() {
            env.push(("REQUIRE_IDENTITY", "true".to_owned()));
        }
        env.extend(self.tracing_env());
        env.extend(self.options.service_env.iter().cloned());
        env
    }

    /// Where an instance's spans go: the console, when it runs, half a second after they end
    /// (the batch exporter's default waits five).
    fn tracing_env(&self) -> Vec<(&'static str, String)> {
        self.console_url
            .iter()
            .flat_map(|url| {
                [
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", url.clone()),
                    ("OTEL_BSP_SCHEDULE_DELAY", "500".to_owned()),
                ]
            })
            .collect()
    }

    fn start_console(&mut self, port: u16) -> anyhow::Result<()> {
        let port = match port {
            0 => free_port(Ipv4Addr::LOCALHOST)?,
            port => port,
        };
        let env = vec![
            ("GATEWAY_ADMIN_URL", self.admin_url()),
            ("ADMIN_TOKEN", self.options.admin_token.clone()),
            ("LOG_FORMAT", self.options.log_format.clone()),
            ("HTTP_WORKERS", "1".to_owned()),
        ];
        let console = self.spawn(
            "console",
            Ipv4Addr::LOCALHOST,
            port,
            "console",
            &["serve"],
            &env,
        )?;
        self.console_url = Some(console.url());
        self.instances.push(console);
        Ok(())
    }

    /// The process id of instance `name`.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.instances
            .iter()
            .find(|i| i.name == name)
            .and_then(|i| i.child.id())
    }

    /// A bearer token for `subject` holding `scopes`, valid for an hour; `None` without auth.
    pub fn token(&self, subject: &str, scopes: &[&str]) -> Option<String> {
        self.auth
            .as_ref()
            .map(|(issuer, _)| dev_keys::token(issuer, subject, scopes, Duration::from_secs(3600)))
    }

    fn catalog_env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.common_env();
        env.push((
            "DATABASE_URL",
            database::url_of(&self.options.database_url, &self.options.catalog_database)
                .expect("checked at start"),
        ));
        env
    }

    fn order_env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.common_env();
        env.push((
            "DATABASE_URL",
            database::url_of(&self.options.database_url, &self.options.order_database)
                .expect("checked at start"),
        ));
        // East-west calls go through the gateway too: balanced, retried, broken-circuit.
        env.push(("CATALOG_URL", format!("{}/api/catalog", self.gateway_url)));
        env
    }

    /// Where an instance's stdout and stderr go: a pipe to us when we show or keep its lines,
    /// otherwise nowhere. Reading lines only to drop them would cost a wake-up of this process
    /// per line, taken from the cores the instances are measured on (a catalog under
    /// `catalog-bench` writes ~30k access-log lines a second).
    fn output(&self) -> Stdio {
        if self.options.show_logs || self.log_file.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    }

    fn spawn(
        &mut self,
        name: &str,
        ip: Ipv4Addr,
        port: u16,
        binary: &str,
        args: &[&str],
        env: &[(&'static str, String)],
    ) -> anyhow::Result<Instance> {
        let mut child = Command::new(self.options.bin_dir.join(binary))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("HOST", ip.to_string())
            .env("PORT", port.to_string())
            // Their output is a pipe to us when shown or kept; colour it when we show it on a
            // terminal.
            .env(
                "CLICOLOR_FORCE",
                if self.options.show_logs && logs::colour() {
                    "1"
                } else {
                    "0"
                },
            )
            .stdin(Stdio::null())
            .stdout(self.output())
            .stderr(self.output())
            // Its own process group: Ctrl-C reaches only us, and we stop instances in order.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let prefix = logs::prefix(self.started, name);
        self.started += 1;
        if self.options.show_logs {
            if let Some(stdout) = stdout {
                logs::relay(prefix.clone(), stdout);
            }
            if let Some(stderr) = stderr {
                logs::relay(prefix, stderr);
            }
        } else if let Some(file) = &self.log_file {
            let plain = format!("{name:<11}|");
            if let Some(stdout) = stdout {
                logs::relay_to(plain.clone(), stdout, std::sync::Arc::clone(file));
            }
            if let Some(stderr) = stderr {
                logs::relay_to(plain, stderr, std::sync::Arc::clone(file));
            }
        }
        Ok(Instance {
            name: name.to_owned(),
            ip,
            port,
            child,
            binary: binary.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: env.to_vec(),
        })
    }

    fn start_gateway(&mut self, port: u16) -> anyhow::Result<()> {
        let mut env = vec![
            (
                "ROUTES",
                format!(
                    "/api/catalog=http://{CATALOG_DNS}:{};/api/orders=http://{ORDER_DNS}:{}",
                    self.catalog_port, self.order_port
                ),
            ),
            ("DISCOVERY_NAMESERVER", self.dns.address()),
            ("DISCOVERY_INTERVAL_MS", "500".to_owned()),
            ("HEALTH_CHECK_INTERVAL_MS", "500".to_owned()),
            ("ADMIN_TOKEN", self.options.admin_token.clone()),
            ("ADMIN_PORT", self.admin_port.to_string()),
            ("LOG_FORMAT", self.options.log_format.clone()),
            // Like a preStop delay: readiness turns 503 this long before the listener closes,
            // so whatever balances traffic onto the gateway stops sending first.
            ("SHUTDOWN_DELAY_MS", "300".to_owned()),
        ];
        env.extend(self.tracing_env());
        if let Some((_, jwks)) = &self.auth {
            env.extend([
                ("AUTH_JWKS_FILE", jwks.display().to_string()),
                ("AUTH_ISSUER", dev_keys::ISSUER.to_owned()),
                ("AUTH_AUDIENCE", dev_keys::AUDIENCE.to_owned()),
                ("AUTH_POLICIES", dev_keys::POLICIES.to_owned()),
            ]);
        }
        env.extend(self.options.gateway_env.iter().cloned());
        if self.options.canary {
            env.push((
                "CANARY_ROUTES",
                format!("/api/catalog=http://{CANARY_DNS}:{}", self.catalog_port),
            ));
            env.push(("CANARY_WEIGHT", self.options.canary_weight.to_string()));
        }
        let gateway = self.spawn(
            "gateway",
            Ipv4Addr::LOCALHOST,
            port,
            "gateway",
            &["serve"],
            &env,
        )?;
        self.instances.push(gateway);
        Ok(())
    }

    fn ips_of(&self, prefix: &str) -> Vec<Ipv4Addr> {
        self.instances
            .iter()
            .filter(|i| i.name.starts_with(prefix))
            .map(|i| i.ip)
            .collect()
    }

    /// Points the service names at the current instances.
    fn publish_dns(&self) {
        self.dns.set(CATALOG_DNS, &self.ips_of("catalog-"));
        self.dns.set(ORDER_DNS, &self.ips_of("order-"));
    }

    /// Starts one more catalog instance and publishes it; the gateway picks it up on its next
    /// discovery round, after a passing health check.
    pub async fn add_catalog(&mut self) -> anyhow::Result<String> {
        self.add_catalog_with(&[]).await
    }

    /// [`Stack::add_catalog`], with `overrides` of its environment (say, a `DATABASE_URL`
    /// through a proxy a test cuts).
    pub async fn add_catalog_with(
        &mut self,
        overrides: &[(&'static str, String)],
    ) -> anyhow::Result<String> {
        let index = self
            .instances
            .iter()
            .filter(|i| i.name.starts_with("catalog-"))
            .count();
        let name = format!("catalog-{}", index + 1);
        let mut env = self.catalog_env();
        env.retain(|(key, _)| !overrides.iter().any(|(k, _)| k == key));
        env.extend(overrides.iter().cloned());
        let instance = self.spawn(
            &name,
            ip(10, index),
            self.catalog_port,
            "catalog",
            &["serve"],
            &env,
        )?;
        wait_until_ready(&instance.url()).await?;
        self.instances.push(instance);
        self.publish_dns();
        Ok(name)
    }

    /// Kills instance `name` with SIGKILL (a crash: no drain), leaving it in DNS as a crashed
    /// pod stays in DNS until an orchestrator notices.
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let instance = self
            .instances
            .iter_mut()
            .find(|i| i.name == name)
            .with_context(|| format!("no instance {name}"))?;
        instance.signal(Signal::SIGKILL);
        instance.child.wait().await?;
        Ok(())
    }

    /// Restarts instance `name` as an orchestrator rolls a pod in place: SIGTERM, wait until
    /// it has drained and exited, start a new process on the same address; returns once the
    /// new one is ready, with the old process's exit status.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<ExitStatus> {
        Ok(self.replace(name, Signal::SIGTERM).await?.0)
    }

    /// [`Stack::restart`], returning how long the new process took from its start to its
    /// first ready answer (readiness polled every millisecond).
    pub async fn restart_timed(&mut self, name: &str) -> anyhow::Result<Duration> {
        Ok(self.replace(name, Signal::SIGTERM).await?.1)
    }

    /// Crashes instance `name` (SIGKILL: no drain) and starts a new process in its place, as
    /// an orchestrator restarts a crashed container; returns once the new one is ready.
    pub async fn crash_and_restart(&mut self, name: &str) -> anyhow::Result<ExitStatus> {
        Ok(self.replace(name, Signal::SIGKILL).await?.0)
    }

    /// Crashes every instance in `names` at once (SIGKILL) and starts a new process for each,
    /// so all of them are down together, as when a node with all of a service's replicas
    /// fails; returns once every new one is ready.
    pub async fn crash_together(&mut self, names: &[&str]) -> anyhow::Result<()> {
        let mut old = Vec::new();
        for name in names {
            let index = self
                .instances
                .iter()
                .position(|i| i.name == *name)
                .with_context(|| format!("no instance {name}"))?;
            let instance = self.instances.remove(index);
            instance.signal(Signal::SIGKILL);
            old.push((index, instance));
        }
        let mut new = Vec::new();
        for (index, mut instance) in old {
            instance.child.wait().await?;
            let args: Vec<&str> = instance.args.iter().map(String::as_str).collect();
            let started = self.spawn(
                &instance.name,
                instance.ip,
                instance.port,
                &instance.binary,
                &args,
                &instance.env,
            )?;
            new.push((index, started));
        }
        for (_, instance) in &new {
            wait_until_ready(&instance.url()).await?;
        }
        // Back where they were, in the order they were taken out.
        for (index, instance) in new.into_iter().rev() {
            self.instances
                .insert(index.min(self.instances.len()), instance);
        }
        Ok(())
    }

    async fn replace(
        &mut self,
        name: &str,
        signal: Signal,
    ) -> anyhow::Result<(ExitStatus, Duration)> {
        let index = self
            .instances
            .iter()
            .position(|i| i.name == name)
            .with_context(|| format!("no instance {name}"))?;
        let mut old = self.instances.remove(index);
        old.signal(signal);
        let Ok(status) = tokio::time::timeout(Duration::from_secs(40), old.child.wait()).await
        else {
            old.signal(Signal::SIGKILL);
            old.child.wait().await?;
            anyhow::bail!("{name} did not exit within 40 s of {signal}");
        };
        let status = status?;
        let args: Vec<&str> = old.args.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let new = self.spawn(&old.name, old.ip, old.port, &old.binary, &args, &old.env)?;
        let probe = format!("{}/health/ready", new.url());
        let client = reqwest::Client::new();
        let ready = async {
            loop {
                if client
                    .get(&probe)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    return started.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let took = tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .with_context(|| format!("{name} was not ready within 60 s of its restart"))?;
        self.instances.insert(index, new);
        Ok((status, took))
    }

    /// The gateway's admin API.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The URL of instance `name`.
    pub fn url_of(&self, name: &str) -> Option<String> {
        self.instances
            .iter()
            .find(|i| i.name == name)
            .map(Instance::url)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        for instance in &self.instances {
            wait_until_ready(&instance.url())
                .await
                .with_context(|| format!("{} did not become ready", instance.name))?;
        }
        // Through the gateway: routes resolved and instances checked.
        let probe = format!("{}/api/catalog/products?limit=1", self.gateway_url);
        wait_for(|| async { get_ok(&probe).await })
            .await
            .context("the gateway does not reach the catalog")?;
        Ok(())
    }

    /// SIGTERM to the gateway first (no new requests come in), then to every service instance,
    /// then to the console (it receives their last spans); returns each instance's exit status.
    pub async fn stop(mut self) -> Vec<(String, ExitStatus)> {
        let mut statuses = Vec::new();
        let (gateways, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.instances)
            .into_iter()
            .partition(|i| i.name == "gateway");
        let (consoles, services): (Vec<_>, Vec<_>) =
            others.into_iter().partition(|i| i.name == "console");
        for group in [gateways, services, consoles] {
            for instance in &group {
                instance.signal(Signal::SIGTERM);
            }
            for mut instance in group {
                let drained = tokio::time::timeout(Duration::from_secs(40), instance.child.wait());
                let status = if let Ok(Ok(status)) = drained.await {
                    status
                } else {
                    instance.signal(Signal::SIGKILL);
                    instance.child.wait().await.unwrap_or_default()
                };
                statuses.push((instance.name, status));
            }
        }
        statuses
    }
}

async fn get_ok(url: &str) -> bool {
    match reqwest::get(url).await {
        Ok(response) => response.status().is_success(),
        Err(_) => false,
    }
}

async fn wait_for<F, Fut>(mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if ready().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("not ready within 60 s")
}

async fn wait_until_ready(url: &str) -> anyhow::Result<()> {
    let probe = format!("{url}/health/ready");
    wait_for(|| async { get_ok(&probe).await }).await
}
