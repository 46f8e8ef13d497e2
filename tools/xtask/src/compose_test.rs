//! `cargo xtask compose-test`: the platform as a user meets it first, `docker compose up`, on
//! a real Docker Engine.
//!
//! 1. The engine answers (installed and started when none does, `deploy/offline/engine.sh`);
//!    with `--env-file deploy/offline.env`, the local base images exist
//!    (`deploy/offline/images.sh`).
//! 2. The four service images are built from the project's Dockerfile through Compose: cold
//!    (`--cold`: `BuildKit`'s cache emptied first) and then warm, after a one-line change in
//!    `services/order` (the cache mounts keep cargo's registry and target directory: only our
//!    changed crates compile). Both times are recorded.
//! 3. `docker compose up -d --wait`, then the README's walk-through through the published
//!    gateway port: stock 120 → 118 → 120, the order confirmed at 2580 EUR and cancelled,
//!    PATCH `401` without a token and `200` with a `catalog:write` one.
//! 4. `--scale catalog=4`: four healthy endpoints in the gateway's `/upstreams` (found through
//!    Docker's DNS) within 10 s, reads reaching all four; back to two under a read load with no
//!    failed read.
//! 5. Self-healing: a catalog container's process killed with SIGKILL from the host under a
//!    keyed order load; Docker restarts it (`restart: unless-stopped`), the gateway puts it back
//!    in rotation, and the client-side ledger shows no failed request, no order lost or doubled.
//! 6. `docker compose stop` under load: every service container exits 0 within its grace
//!    period and logs no ERROR line; started again, nothing accepted was lost.
//! 7. `docker inspect` of every service container: non-root, read-only root filesystem, every
//!    capability dropped, `no-new-privileges`, healthy by the binary's own `healthcheck`.
//! 8. The observability profile's Prometheus (the local image offline) scrapes every replica
//!    with all targets up; the console received the containers' traces.
//!
//! It prints a table (image sizes, build times, time to healthy, the gateway's req/s through
//! the published port) and every check; the project's containers, networks and volumes are
//! removed at the end, also when a check failed.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    clients::{self, Customer, Reads},
    dev_keys,
    docker::{self, Project, output},
    ledger::{self, Check, Expectations, Ledger, Snapshot, StoredOrder, Window},
    products,
};

/// The Compose project the test runs (not `dockyard`: a user's own stack is left alone).
const PROJECT: &str = "dockyard-compose-test";
/// The services built from the Dockerfile, and the longest-running ones among Compose's.
const IMAGES: [&str; 4] = ["catalog", "order", "gateway", "console"];
/// Image size target (uncompressed).
const IMAGE_TARGET_BYTES: u64 = 50 * 1000 * 1000;
const STOCK: i64 = 1_000_000;
/// The line the warm build's change appends to `services/order/src/lib.rs` (and removes).
const ONE_LINE_CHANGE: &str = "// compose-test: a one-line change for the warm build\n";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Compose's `--env-file` (`deploy/offline.env` on a host without a registry).
    pub env_file: Option<PathBuf>,
    /// Empty `BuildKit`'s cache first, so the first build is a cold one.
    pub cold: bool,
}

/// A measurement for the table.
#[derive(Debug)]
struct Figure {
    what: String,
    value: String,
}

/// Runs everything; `Ok(true)` when every check holds. The project is taken down at the end
/// whatever happened.
pub async fn run(options: Options) -> anyhow::Result<bool> {
    let stack = prepare(PROJECT, options.env_file.clone()).await?;
    let outcome = stack.run_all(&options).await;
    let down = stack.down().await;
    let (figures, checks) = outcome?;
    down.context("docker compose down")?;
    println!("\n{:<58} value", "measured");
    for figure in &figures {
        println!("{:<58} {}", figure.what, figure.value);
    }
    Ok(ledger::report(&checks))
}

/// An engine, the local images when `env_file` names them, the dev keys, and the project
/// `name` on free loopback ports, not started yet.
pub(crate) async fn prepare(name: &str, env_file: Option<PathBuf>) -> anyhow::Result<Stack> {
    docker::ensure_engine().await?;
    if env_file.is_some() {
        docker::ensure_local_images().await?;
    }
    let (issuer, _) = dev_keys::ensure().context("the local token signing key")?;
    let ports: Vec<u16> = (0..4)
        .map(|_| {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        })
        .collect::<std::io::Result<_>>()?;
    let admin_token = format!("compose-test-{}", Uuid::new_v4().simple());
    let project = Project {
        name: name.to_owned(),
        env_file,
        env: vec![
            ("TAG".into(), "compose-test".into()),
            ("GATEWAY_PUBLISH".into(), format!("127.0.0.1:{}", ports[0])),
            ("ADMIN_PUBLISH".into(), format!("127.0.0.1:{}", ports[1])),
            ("CONSOLE_PUBLISH".into(), format!("127.0.0.1:{}", ports[2])),
            (
                "PROMETHEUS_PUBLISH".into(),
                format!("127.0.0.1:{}", ports[3]),
            ),
            ("ADMIN_TOKEN".into(), admin_token.clone()),
            // Every client of the published port arrives from the bridge's address (Docker's
            // userland proxy): one rate-limit bucket for all of them, which the load phases
            // and the req/s measurement would exhaust.
            ("GATEWAY_RATE_LIMIT_PER_SEC".into(), "100000".into()),
            ("GATEWAY_RATE_LIMIT_BURST".into(), "100000".into()),
        ],
    };
    Ok(Stack {
        project,
        gateway: format!("http://127.0.0.1:{}", ports[0]),
        admin: format!("http://127.0.0.1:{}", ports[1]),
        console: format!("http://127.0.0.1:{}", ports[2]),
        prometheus: format!("http://127.0.0.1:{}", ports[3]),
        admin_token,
        token: Box::new(move |subject: &str, scopes: &[&str]| {
            dev_keys::token(&issuer, subject, scopes, Duration::from_secs(3600))
        }),
    })
}

type TokenFn = Box<dyn Fn(&str, &[&str]) -> String + Send + Sync>;

/// What a load phase placed orders with: its products and its customers.
pub(crate) struct Load {
    pub products: Vec<String>,
    pub customers: Vec<Uuid>,
}

/// The project and how to reach it.
pub(crate) struct Stack {
    pub project: Project,
    pub gateway: String,
    pub admin: String,
    pub console: String,
    pub prometheus: String,
    pub admin_token: String,
    pub token: TokenFn,
}

impl Stack {
    /// Takes the project down: its containers, networks and volumes.
    pub(crate) async fn down(&self) -> anyhow::Result<()> {
        println!("{}: taking the project down", self.project.name);
        output(self.project.compose(&[
            "--profile",
            "observability",
            "down",
            "--volumes",
            "--remove-orphans",
            "--timeout",
            "30",
        ]))
        .await
        .map(drop)
    }

    async fn run_all(&self, options: &Options) -> anyhow::Result<(Vec<Figure>, Vec<Check>)> {
        let mut figures = Vec::new();
        let mut checks = Vec::new();
        let (cold, warm, recompiled) = self.build(options.cold).await?;
        checks.push(Check {
            name: "the warm build compiles only the changed crate and its dependents",
            expected: "order".into(),
            observed: recompiled.join(" "),
            holds: recompiled == ["order"],
            detail: Vec::new(),
        });
        figures.push(Figure {
            what: format!(
                "build of the 4 images, {}",
                if options.cold { "cold" } else { "first" }
            ),
            value: format!("{:.0} s", cold.as_secs_f64()),
        });
        figures.push(Figure {
            what: "build again after a one-line change in services/order".into(),
            value: format!("{:.0} s", warm.as_secs_f64()),
        });
        for service in IMAGES {
            let image = format!("ghcr.io/dockyard/{service}:compose-test");
            let size: u64 =
                output(
                    self.project
                        .docker(&["image", "inspect", "-f", "{{.Size}}", &image]),
                )
                .await?
                .trim()
                .parse()?;
            figures.push(Figure {
                what: format!("image size, {service}"),
                value: format!(
                    "{:.1} MB",
                    f64::from(u32::try_from(size / 1000).unwrap_or(u32::MAX)) / 1e3
                ),
            });
            checks.push(Check {
                name: "image size ≤ 50 MB (uncompressed)",
                expected: format!("≤ {IMAGE_TARGET_BYTES}"),
                observed: format!("{service}: {size}"),
                holds: size <= IMAGE_TARGET_BYTES,
                detail: Vec::new(),
            });
        }
        checks.extend(self.no_secret_in_layers(options).await?);
        let started = Instant::now();
        output(
            self.project
                .compose(&["up", "-d", "--wait", "--wait-timeout", "180"]),
        )
        .await?;
        figures.push(Figure {
            what: "`docker compose up -d --wait` until every service is healthy".into(),
            value: format!("{:.1} s", started.elapsed().as_secs_f64()),
        });
        checks.extend(self.walkthrough().await?);
        checks.extend(self.scale().await?);
        checks.extend(self.inspect_containers().await?);
        // Through the published port (Docker's userland proxy in the path), and straight to
        // the gateway container's address on the Compose network (no proxy).
        let gateway_ip = match self.project.containers("gateway").await?.first() {
            Some(id) => {
                self.project
                    .inspect(
                        id,
                        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                    )
                    .await?
            }
            None => String::new(),
        };
        for (what, base) in [
            (
                "published port, through Docker's userland proxy",
                self.gateway.clone(),
            ),
            (
                "the container's address, no proxy",
                format!("http://{gateway_ip}:8080"),
            ),
        ] {
            if let Some(rate) = self.requests_per_second(&base).await? {
                figures.push(Figure {
                    what: format!("gateway req/s, {what} (wrk -t2 -c32, 5 s)"),
                    value: rate,
                });
            }
        }
        checks.extend(self.self_healing().await?);
        checks.extend(self.observability().await?);
        checks.extend(self.stop_under_load().await?);
        Ok((figures, checks))
    }

    /// Builds the images through Compose, cold (or first) and after a one-line change; both
    /// times.
    async fn build(&self, cold: bool) -> anyhow::Result<(Duration, Duration, Vec<String>)> {
        if cold {
            println!("compose-test: emptying BuildKit's cache (a cold build)");
            output(
                self.project
                    .docker(&["builder", "prune", "--all", "--force"]),
            )
            .await?;
        }
        let build = || async {
            let started = Instant::now();
            let printed = output(self.project.compose(&[
                "--progress",
                "plain",
                "build",
                "catalog",
                "order",
                "gateway",
                "console",
            ]))
            .await?;
            anyhow::Ok((started.elapsed(), printed))
        };
        println!("compose-test: building the images");
        let (first, _) = build().await?;
        println!(
            "compose-test: built in {:.0} s; again after a one-line change",
            first.as_secs_f64()
        );
        let lib = docker::repo_root().join("services/order/src/lib.rs");
        let original = std::fs::read_to_string(&lib)?;
        std::fs::write(&lib, format!("{original}{ONE_LINE_CHANGE}"))?;
        let warm = build().await;
        std::fs::write(&lib, &original)?;
        let (warm, printed) = warm?;
        Ok((first, warm, compiled(&printed)))
    }

    /// No certificate of the CA bundle handed to the build (`BUILD_CA_FILE`) that is not also
    /// in the runtime's own public bundle — the proxy's — is in any image: not in a file of
    /// the image's filesystem (every layer, as `docker export` flattens them), not in its
    /// history.
    async fn no_secret_in_layers(&self, options: &Options) -> anyhow::Result<Vec<Check>> {
        let bundle = options
            .env_file
            .as_ref()
            .and_then(|file| std::fs::read_to_string(docker::repo_root().join(file)).ok())
            .and_then(|env| {
                env.lines()
                    .find_map(|l| l.strip_prefix("BUILD_CA_FILE=").map(str::to_owned))
            })
            .or_else(|| std::env::var("BUILD_CA_FILE").ok());
        let Some(bundle) = bundle.and_then(|path| std::fs::read_to_string(path).ok()) else {
            return Ok(vec![Check::yes(
                "no CA of the build in any image layer",
                true,
                "no CA bundle was handed to the build",
            )]);
        };
        let work =
            std::env::temp_dir().join(format!("compose-test-layers-{}", Uuid::new_v4().simple()));
        let mut found = Vec::new();
        let mut needles: Option<Vec<String>> = None;
        for service in IMAGES {
            let image = format!("ghcr.io/dockyard/{service}:compose-test");
            let root = work.join(service);
            std::fs::create_dir_all(&root)?;
            let id = output(self.project.docker(&["create", &image]))
                .await?
                .trim()
                .to_owned();
            let tar = work.join(format!("{service}.tar"));
            let exported =
                output(
                    self.project
                        .docker(&["export", "-o", &tar.to_string_lossy(), &id]),
                )
                .await;
            output(self.project.docker(&["rm", &id])).await?;
            exported?;
            let mut untar = tokio::process::Command::new("tar");
            untar.arg("-xf").arg(&tar).arg("-C").arg(&root);
            output(untar).await?;
            // The proxy's certificates: in the bundle the build was given, not in the image's.
            let needles = needles.get_or_insert_with(|| {
                let public =
                    std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt"))
                        .unwrap_or_default();
                certificates(&bundle)
                    .into_iter()
                    .filter(|cert| !public.contains(cert.as_str()))
                    .filter_map(|cert| cert.lines().nth(2).map(str::to_owned))
                    .collect()
            });
            for file in files(&root)? {
                let bytes = std::fs::read(&file)?;
                if needles
                    .iter()
                    .any(|needle| contains(&bytes, needle.as_bytes()))
                {
                    found.push(format!(
                        "{service}: {}",
                        file.strip_prefix(&root).unwrap_or(&file).display()
                    ));
                }
            }
            let history = output(self.project.docker(&[
                "history",
                "--no-trunc",
                "--format",
                "{{.CreatedBy}}",
                &image,
            ]))
            .await?;
            if history.contains("BEGIN CERTIFICATE")
                || needles.iter().any(|n| history.contains(n.as_str()))
            {
                found.push(format!("{service}: its history"));
            }
        }
        let _ = std::fs::remove_dir_all(&work);
        let looked_for = needles.map_or(0, |n| n.len());
        Ok(vec![Check {
            name: "no certificate of the build's CA bundle (the proxy's) in any image layer",
            expected: "0".into(),
            observed: format!(
                "{} found ({looked_for} certificate(s) looked for)",
                found.len()
            ),
            holds: found.is_empty() && looked_for > 0,
            detail: found,
        }])
    }

    /// The README's walk-through, through the published gateway port.
    #[allow(clippy::too_many_lines)] // the README's steps, in their order
    async fn walkthrough(&self) -> anyhow::Result<Vec<Check>> {
        println!("compose-test: the README's walk-through");
        let client = reqwest::Client::new();
        let gw = &self.gateway;
        let customer = Uuid::now_v7();
        let token = (self.token)(&customer.to_string(), &[]);
        let page: Value = client
            .get(format!("{gw}/api/catalog/products?limit=1"))
            .send()
            .await?
            .json()
            .await?;
        let mug = page["items"][0]["id"]
            .as_str()
            .context("a product")?
            .to_owned();
        let stock = async || -> anyhow::Result<i64> {
            let product: Value = client
                .get(format!("{gw}/api/catalog/products/{mug}"))
                .send()
                .await?
                .json()
                .await?;
            product["stock"].as_i64().context("a stock")
        };
        let first_stock = stock().await?;
        let placed: Value = client
            .post(format!("{gw}/api/orders/orders"))
            .bearer_auth(&token)
            .header("idempotency-key", Uuid::new_v4().to_string())
            .json(&json!({"lines": [{"product_id": mug, "quantity": 2}]}))
            .send()
            .await?
            .json()
            .await?;
        let order = placed["id"].as_str().context("an order id")?.to_owned();
        let order_url = format!("{gw}/api/orders/orders/{order}");
        let mut seen = Value::Null;
        for _ in 0..100 {
            seen = client
                .get(&order_url)
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            if seen["status"] != "pending" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let reserved_stock = stock().await?;
        let cancelled: Value = client
            .post(format!("{order_url}/cancel"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let mut restored = 0;
        for _ in 0..100 {
            restored = stock().await?;
            if restored == first_stock {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let patch = |token: Option<String>| {
            let request = client
                .patch(format!("{gw}/api/catalog/products/{mug}"))
                .header("if-match", "*")
                .json(&json!({"stock": 120}));
            dev_keys::with_token(request, token.as_deref()).send()
        };
        let anonymous = patch(None).await?.status().as_u16();
        let editor = (self.token)("compose-test-editor", &[dev_keys::CATALOG_WRITE]);
        let written = patch(Some(editor)).await?.status().as_u16();
        Ok(vec![
            Check::yes(
                "walk-through: the first product's stock is 120",
                first_stock == 120,
                first_stock.to_string(),
            ),
            Check::yes(
                "walk-through: the order is confirmed at 2580 EUR",
                seen["status"] == "confirmed"
                    && seen["total"] == json!({"amount_minor": 2580, "currency": "EUR"}),
                format!("{} {}", seen["status"], seen["total"]),
            ),
            Check::yes(
                "walk-through: stock 118 once confirmed",
                reserved_stock == 118,
                reserved_stock.to_string(),
            ),
            Check::yes(
                "walk-through: the order is cancelled",
                cancelled["status"] == "cancelled",
                cancelled["status"].to_string(),
            ),
            Check::yes(
                "walk-through: stock 120 again",
                restored == 120,
                restored.to_string(),
            ),
            Check::yes(
                "walk-through: PATCH without a token is 401",
                anonymous == 401,
                anonymous.to_string(),
            ),
            Check::yes(
                "walk-through: PATCH with catalog:write is 200",
                written == 200,
                written.to_string(),
            ),
        ])
    }

    /// The gateway's view of the catalog route's blue pool: each endpoint's URL and state.
    pub(crate) async fn catalog_endpoints(&self) -> anyhow::Result<Vec<(String, String)>> {
        let view: Value = reqwest::Client::new()
            .get(format!("{}/upstreams", self.admin))
            .bearer_auth(&self.admin_token)
            .send()
            .await?
            .json()
            .await?;
        let route = view["routes"]
            .as_array()
            .and_then(|routes| routes.iter().find(|r| r["route"] == "catalog"))
            .context("the catalog route")?;
        Ok(route["pools"][0]["endpoints"]
            .as_array()
            .map(|endpoints| {
                endpoints
                    .iter()
                    .map(|e| {
                        (
                            e["url"].as_str().unwrap_or_default().to_owned(),
                            e["state"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits up to `within` for exactly `count` catalog endpoints, all healthy; how long it
    /// took, if it happened.
    pub(crate) async fn healthy_catalogs(
        &self,
        count: usize,
        within: Duration,
    ) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Ok(endpoints) = self.catalog_endpoints().await
                && endpoints.len() == count
                && endpoints.iter().all(|(_, state)| state == "healthy")
            {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// `docker compose up --scale catalog=N`, waiting for every container to be healthy.
    pub(crate) async fn scale_catalog(&self, replicas: usize) -> anyhow::Result<()> {
        let scale = format!("catalog={replicas}");
        output(
            self.project
                .compose(&["up", "-d", "--wait", "--no-recreate", "--scale", &scale]),
        )
        .await
        .map(drop)
    }

    /// Successful attempts per catalog endpoint, from the gateway's metrics.
    async fn catalog_attempts(&self) -> anyhow::Result<std::collections::HashMap<String, f64>> {
        let text = reqwest::get(format!("{}/metrics", self.admin))
            .await?
            .text()
            .await?;
        let mut counts = std::collections::HashMap::new();
        for line in text.lines().filter(|l| {
            l.starts_with("dockyard_gateway_upstream_attempts_total{")
                && l.contains("route=\"catalog\"")
                && l.contains("outcome=\"2xx\"")
        }) {
            let endpoint = line
                .split("endpoint=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
                .to_owned();
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            *counts.entry(endpoint).or_insert(0.0) += value;
        }
        Ok(counts)
    }

    /// Scale out to four catalogs and back to two under a read load.
    async fn scale(&self) -> anyhow::Result<Vec<Check>> {
        println!("compose-test: --scale catalog=4, then back to 2 under a read load");
        self.scale_catalog(4).await?;
        let found = self.healthy_catalogs(4, Duration::from_secs(10)).await;
        let before = self.catalog_attempts().await?;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()?;
        for _ in 0..80 {
            client
                .get(format!("{}/api/catalog/products?limit=1", self.gateway))
                .send()
                .await?;
        }
        let after = self.catalog_attempts().await?;
        // The metrics name an endpoint by its authority, `/upstreams` by its URL.
        let reached = self
            .catalog_endpoints()
            .await?
            .iter()
            .map(|(url, _)| {
                url.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_owned()
            })
            .filter(|authority| {
                after.get(authority).copied().unwrap_or(0.0)
                    > before.get(authority).copied().unwrap_or(0.0)
            })
            .count();

        let ledger = Arc::new(Ledger::default());
        let reads = Arc::new(Mutex::new(Reads::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let product = self.first_product().await?;
        let reader = tokio::spawn(clients::reader(
            self.gateway.clone(),
            product,
            [127, 0, 0, 1],
            Duration::from_millis(10),
            (Arc::clone(&ledger), Arc::clone(&reads)),
            Arc::clone(&stop),
        ));
        self.scale_catalog(2).await?;
        let back = self.healthy_catalogs(2, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        reader.await.context("the reader panicked")?;
        let reads = reads.lock().expect("the reads");
        Ok(vec![
            Check::yes(
                "scale to 4: four healthy catalog endpoints within 10 s (Docker's DNS)",
                found.is_some(),
                found.map_or_else(
                    || "not within 10 s".to_owned(),
                    |t| format!("{:.1} s", t.as_secs_f64()),
                ),
            ),
            Check::yes(
                "scale to 4: reads reach all four",
                reached == 4,
                format!("{reached} of 4"),
            ),
            Check::yes(
                "scale back to 2: two healthy endpoints",
                back.is_some(),
                back.map_or_else(
                    || "not within 10 s".to_owned(),
                    |t| format!("{:.1} s", t.as_secs_f64()),
                ),
            ),
            Check {
                name: "scale back to 2 under reads: failed reads",
                ..reads.check(&[], 51)
            },
        ])
    }

    pub(crate) async fn first_product(&self) -> anyhow::Result<String> {
        let page: Value = reqwest::get(format!("{}/api/catalog/products?limit=1", self.gateway))
            .await?
            .json()
            .await?;
        Ok(page["items"][0]["id"]
            .as_str()
            .context("a product")?
            .to_owned())
    }

    /// Every Dockyard container: non-root, read-only, no capabilities, no privilege
    /// escalation, healthy by its binary's own `healthcheck`.
    async fn inspect_containers(&self) -> anyhow::Result<Vec<Check>> {
        let mut wrong = Vec::new();
        let mut seen = 0;
        for service in IMAGES {
            for id in self.project.containers(service).await? {
                seen += 1;
                let inspected: Value =
                    serde_json::from_str(&output(self.project.docker(&["inspect", &id])).await?)?;
                let c = &inspected[0];
                let mut fault = |what: &str| wrong.push(format!("{service} {}: {what}", &id[..12]));
                if c["Config"]["User"] != "65532:65532" {
                    fault(&format!("user {}", c["Config"]["User"]));
                }
                if c["HostConfig"]["ReadonlyRootfs"] != true {
                    fault("root filesystem writable");
                }
                if !c["HostConfig"]["CapDrop"]
                    .as_array()
                    .is_some_and(|caps| caps.iter().any(|x| x == "ALL"))
                {
                    fault("capabilities not all dropped");
                }
                if !c["HostConfig"]["SecurityOpt"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|x| x == "no-new-privileges:true"))
                {
                    fault("no-new-privileges not set");
                }
                if c["State"]["Health"]["Status"] != "healthy" {
                    fault(&format!("health {}", c["State"]["Health"]["Status"]));
                }
                let expected = json!(["CMD", format!("/app/{service}"), "healthcheck"]);
                if c["Config"]["Healthcheck"]["Test"] != expected {
                    fault(&format!(
                        "health check {}",
                        c["Config"]["Healthcheck"]["Test"]
                    ));
                }
            }
        }
        Ok(vec![
            Check::yes(
                "containers inspected (catalog ×2, order, gateway, console)",
                seen == 5,
                seen.to_string(),
            ),
            Check {
                name: "containers: non-root, read-only, no capabilities, no-new-privileges, healthy",
                expected: "0 faults".into(),
                observed: format!("{} faults", wrong.len()),
                holds: wrong.is_empty(),
                detail: wrong,
            },
        ])
    }

    /// A short wrk run against the gateway at `base`, if wrk is installed.
    async fn requests_per_second(&self, base: &str) -> anyhow::Result<Option<String>> {
        let product = self.first_product().await?;
        let mut wrk = tokio::process::Command::new("wrk");
        wrk.args([
            "-t2",
            "-c32",
            "-d5s",
            &format!("{base}/api/catalog/products/{product}"),
        ]);
        let Ok(text) = output(wrk).await else {
            return Ok(None);
        };
        let rate = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .map_or("?", str::trim);
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
            .collect();
        Ok(Some(if errors.is_empty() {
            format!("{rate} (0 errors)")
        } else {
            format!("{rate} (INVALID: {})", errors.join("; "))
        }))
    }

    /// Customers placing keyed orders and a reader, until `stop`.
    pub(crate) async fn load(
        &self,
        ledger: &Arc<Ledger>,
        reads: &Arc<Mutex<Reads>>,
        stop: &Arc<AtomicBool>,
    ) -> anyhow::Result<(Load, Vec<tokio::task::JoinHandle<()>>)> {
        let editor = (self.token)("compose-test-editor", &[dev_keys::CATALOG_WRITE]);
        let products = products::create(
            &format!("{}/api/catalog/products", self.gateway),
            "Containers",
            4,
            100,
            STOCK,
            Some(&editor),
        )
        .await?;
        let mut tasks = Vec::new();
        let mut customers = Vec::new();
        for n in 0..2 {
            let id = Uuid::now_v7();
            customers.push(id);
            let me = Customer {
                gateway: self.gateway.clone(),
                id,
                token: Some((self.token)(&id.to_string(), &[])),
                products: products.clone(),
                first_product: n,
                pace: Duration::from_millis(50),
                patience: Duration::from_secs(30),
                cancel_every: 0,
            };
            tasks.push(tokio::spawn(clients::customer(
                me,
                Arc::clone(ledger),
                Arc::clone(stop),
            )));
        }
        tasks.push(tokio::spawn(clients::reader(
            self.gateway.clone(),
            products[0].clone(),
            [127, 0, 0, 1],
            Duration::from_millis(20),
            (Arc::clone(ledger), Arc::clone(reads)),
            Arc::clone(stop),
        )));
        Ok((
            Load {
                products,
                customers,
            },
            tasks,
        ))
    }

    /// Reads what the ledger is judged against, from the `postgres` container: the orders of
    /// the load's customers (other phases' orders share the database), their answered keys,
    /// and the stock of the load's products.
    pub(crate) async fn snapshot(&self, load: &Load) -> anyhow::Result<Snapshot> {
        let customers = load
            .customers
            .iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let orders = self
            .project
            .psql(
                "orders",
                &format!(
                    "SELECT id, status, COALESCE(reason, ''),
                            (SELECT COALESCE(sum((line->>'quantity')::bigint), 0)
                             FROM jsonb_array_elements(lines) AS line)
                     FROM orders WHERE customer_id = ANY('{{{customers}}}')"
                ),
            )
            .await?;
        let keys = self
            .project
            .psql(
                "orders",
                &format!(
                    "SELECT key, response->>'id' FROM idempotency_keys
                     WHERE status IS NOT NULL
                       AND request->>'customer_id' = ANY('{{{customers}}}')"
                ),
            )
            .await?;
        let products = &load.products;
        let ids = products.join(",");
        let left = self
            .project
            .psql(
                "catalog",
                &format!(
                    "SELECT COALESCE(sum(stock), 0) FROM products WHERE id = ANY('{{{ids}}}')"
                ),
            )
            .await?;
        let left: i64 = left
            .first()
            .and_then(|row| row.first())
            .and_then(|v| v.parse().ok())
            .context("the stock")?;
        Ok(Snapshot {
            orders: orders
                .into_iter()
                .filter_map(|row| {
                    Some(StoredOrder {
                        id: row.first()?.parse().ok()?,
                        status: row.get(1)?.clone(),
                        reason: row.get(2).filter(|r| !r.is_empty()).cloned(),
                        units: row.get(3)?.parse().ok()?,
                    })
                })
                .collect(),
            keys: keys
                .into_iter()
                .filter_map(|row| Some((row.first()?.clone(), row.get(1)?.parse().ok()?)))
                .collect(),
            stock_taken: i64::try_from(products.len()).unwrap_or(0) * STOCK - left,
        })
    }

    /// Judges the ledger (retrying while the last orders end and the stock follows).
    pub(crate) async fn judged(
        &self,
        ledger: &Ledger,
        load: &Load,
        expect: &Expectations,
    ) -> anyhow::Result<Vec<Check>> {
        let placements = ledger.placements();
        let mut checks = Vec::new();
        for _ in 0..60 {
            checks = ledger::judge(&placements, &self.snapshot(load).await?, expect);
            if checks.iter().all(|c| c.holds) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(checks)
    }

    /// A catalog container's process killed from the host under load; Docker restarts it.
    async fn self_healing(&self) -> anyhow::Result<Vec<Check>> {
        println!("compose-test: SIGKILL of a catalog container's process under a keyed order load");
        let (ledger, reads, stop) = (
            Arc::new(Ledger::default()),
            Arc::new(Mutex::new(Reads::default())),
            Arc::new(AtomicBool::new(false)),
        );
        let (load, tasks) = self.load(&ledger, &reads, &stop).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let victim = self
            .project
            .containers("catalog")
            .await?
            .into_iter()
            .next()
            .context("a catalog container")?;
        let restarts = self.project.inspect(&victim, "{{.RestartCount}}").await?;
        let pid: i32 = self
            .project
            .inspect(&victim, "{{.State.Pid}}")
            .await?
            .parse()?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let killed = Instant::now();
        let mut restarted = None;
        while killed.elapsed() < Duration::from_secs(60) {
            let state = self
                .project
                .inspect(
                    &victim,
                    "{{.RestartCount}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                )
                .await?;
            if state != format!("{restarts} healthy") && state.ends_with(" healthy") {
                restarted = Some(killed.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let in_rotation = self.healthy_catalogs(2, Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.context("a load task panicked")?;
        }
        let expect = Expectations {
            min_accepted: 50,
            windows: Vec::new(),
        };
        let mut checks = vec![
            Check::yes(
                "self-healing: Docker restarted the killed catalog, healthy again",
                restarted.is_some(),
                restarted.map_or_else(
                    || "not within 60 s".to_owned(),
                    |t| format!("in {:.1} s", t.as_secs_f64()),
                ),
            ),
            Check::yes(
                "self-healing: the gateway put it back in rotation",
                in_rotation.is_some(),
                in_rotation.map_or_else(
                    || "not within 20 s".to_owned(),
                    |t| format!("{:.1} s after", t.as_secs_f64()),
                ),
            ),
        ];
        checks.extend(self.judged(&ledger, &load, &expect).await?);
        let reads = reads.lock().expect("the reads");
        checks.push(Check {
            name: "self-healing: failed reads",
            ..reads.check(&[], 0)
        });
        Ok(checks)
    }

    /// Prometheus (the observability profile) scrapes every replica; the console has traces.
    async fn observability(&self) -> anyhow::Result<Vec<Check>> {
        println!("compose-test: the observability profile's Prometheus, and the console's traces");
        output(self.project.compose(&[
            "--profile",
            "observability",
            "up",
            "-d",
            "--no-recreate",
            "prometheus",
        ]))
        .await?;
        let mut targets = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Ok(response) = reqwest::get(format!("{}/api/v1/targets", self.prometheus)).await
                && let Ok(view) = response.json::<Value>().await
            {
                targets = view["data"]["activeTargets"]
                    .as_array()
                    .map(|all| {
                        all.iter()
                            .map(|t| {
                                (
                                    t["labels"]["job"].as_str().unwrap_or("?").to_owned(),
                                    t["health"] == "up",
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let catalogs = targets.iter().filter(|(job, _)| job == "catalog").count();
                if catalogs == 2 && targets.iter().all(|(_, up)| *up) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let traces: Value = reqwest::get(format!("{}/api/traces?limit=100", self.console))
            .await?
            .json()
            .await?;
        let through = traces["traces"].as_array().is_some_and(|all| {
            all.iter().any(|t| {
                let services = &t["services"];
                ["gateway", "order", "catalog"].iter().all(|s| {
                    services
                        .as_array()
                        .is_some_and(|list| list.iter().any(|x| x == *s))
                })
            })
        });
        let down: Vec<String> = targets
            .iter()
            .filter(|(_, up)| !up)
            .map(|(job, _)| job.clone())
            .collect();
        Ok(vec![
            Check {
                name: "Prometheus: every target up (catalog ×2, order, gateway, itself)",
                expected: "0 down".into(),
                observed: format!("{} targets, {} down", targets.len(), down.len()),
                holds: targets.len() >= 5 && down.is_empty(),
                detail: down,
            },
            Check::yes(
                "console: a trace through gateway, order and catalog",
                through,
                format!("{} traces", traces["traces"].as_array().map_or(0, Vec::len)),
            ),
        ])
    }

    /// `docker compose stop` under load: every service container exits 0 within its grace,
    /// no ERROR line; started again, nothing lost.
    async fn stop_under_load(&self) -> anyhow::Result<Vec<Check>> {
        println!("compose-test: docker compose stop under load, then start");
        let (ledger, reads, stop) = (
            Arc::new(Ledger::default()),
            Arc::new(Mutex::new(Reads::default())),
            Arc::new(AtomicBool::new(false)),
        );
        let (load, tasks) = self.load(&ledger, &reads, &stop).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut ids = Vec::new();
        for service in IMAGES {
            for id in self.project.containers(service).await? {
                ids.push((service, id));
            }
        }
        let from = ledger.now();
        let started = Instant::now();
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            .to_string();
        output(self.project.compose(&["stop"])).await?;
        let stopped_in = started.elapsed();
        let mut exits = Vec::new();
        for (service, id) in &ids {
            let code = self.project.inspect(id, "{{.State.ExitCode}}").await?;
            if code != "0" {
                exits.push(format!("{service} {}: exit {code}", &id[..12]));
            }
        }
        let logs = output(self.project.compose(&[
            "logs",
            "--no-color",
            "--since",
            &since,
            "catalog",
            "order",
            "gateway",
            "console",
        ]))
        .await?;
        let errors: Vec<String> = logs
            .lines()
            .filter(|l| l.contains("\"level\":\"ERROR\""))
            .map(|l| l.chars().take(300).collect())
            .collect();
        output(self.project.compose(&["start"])).await?;
        output(
            self.project
                .compose(&["up", "-d", "--wait", "--no-recreate"]),
        )
        .await?;
        let to = ledger.now() + Duration::from_secs(3);
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.context("a load task panicked")?;
        }
        let expect = Expectations {
            min_accepted: 50,
            windows: vec![Window {
                fault: "the stack is stopped".into(),
                from,
                to,
            }],
        };
        let mut checks = vec![
            Check {
                name: "stop: every service container exits 0",
                expected: "0 others".into(),
                observed: format!("{} of {} not 0", exits.len(), ids.len()),
                holds: exits.is_empty() && !ids.is_empty(),
                detail: exits,
            },
            Check::yes(
                "stop: within the grace period (30 s)",
                stopped_in < Duration::from_secs(30),
                format!("{:.1} s", stopped_in.as_secs_f64()),
            ),
            Check {
                name: "stop: no ERROR line in the services' logs",
                expected: "0".into(),
                observed: errors.len().to_string(),
                holds: errors.is_empty(),
                detail: errors.into_iter().take(5).collect(),
            },
        ];
        checks.extend(self.judged(&ledger, &load, &expect).await?);
        Ok(checks)
    }
}

/// The PEM certificates of a bundle.
fn certificates(bundle: &str) -> Vec<String> {
    bundle
        .split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|rest| rest.split("-----END CERTIFICATE-----").next())
        .map(|body| format!("-----BEGIN CERTIFICATE-----{body}-----END CERTIFICATE-----"))
        .collect()
}

/// Every regular file under `root`.
fn files(root: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                found.push(entry.path());
            }
        }
    }
    Ok(found)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The crates cargo compiled, from a plain-progress build's output (`Compiling name vX`).
fn compiled(printed: &str) -> Vec<String> {
    let mut crates: Vec<String> = printed
        .lines()
        .filter_map(|line| line.split("Compiling ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    crates.sort();
    crates.dedup();
    crates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_is_split_into_its_certificates() {
        let bundle = "# a comment\n-----BEGIN CERTIFICATE-----\nAAA\nBBB\n-----END CERTIFICATE-----\n\
                      -----BEGIN CERTIFICATE-----\nCCC\n-----END CERTIFICATE-----\n";
        let certificates = certificates(bundle);
        assert_eq!(certificates.len(), 2);
        assert_eq!(certificates[0].lines().nth(2), Some("BBB"));
        assert!(contains(b"xxBBByy", b"BBB"));
        assert!(!contains(b"xxBByy", b"BBB"));
    }

    #[test]
    fn the_crates_a_build_compiled_are_read_from_its_output() {
        let printed = "#12 3.1    Compiling order v0.1.0 (/src/services/order)\n\
                       #12 9.0     Finished `release` profile\n\
                       #13 1.0    Compiling order v0.1.0 (/src/services/order)\n";
        assert_eq!(compiled(printed), ["order"]);
        assert!(compiled("#12 0.2 Finished").is_empty());
    }
}
