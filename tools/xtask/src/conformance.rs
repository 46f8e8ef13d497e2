//! `cargo xtask conformance`: schemathesis, with every check, against a live platform of its
//! own (a [`Sandbox`]): the catalog and the order service directly and through the gateway,
//! and the gateway's admin API. Each API's document is taken from the running service's
//! `/openapi.json`; `.ci/schemathesis.toml` holds the few expectations the APIs set on
//! purpose. Needs `schemathesis` on `PATH` (or `SCHEMATHESIS`); `.ci/run` installs it.

use std::{path::Path, process::Stdio};

use anyhow::Context;

use dockyard_runtime::identity;

use crate::{dev_keys, sandbox::Sandbox, stack};

/// One schemathesis run.
struct Target {
    label: String,
    /// Where the document comes from.
    document: String,
    /// The base URL requests go to.
    base: String,
    headers: Vec<String>,
}

/// Runs every target; prints a table; `Ok(true)` when all passed.
pub async fn run(bin_dir: std::path::PathBuf) -> anyhow::Result<bool> {
    let sandbox = Sandbox::new("conformance");
    let result = run_in(&sandbox, bin_dir).await;
    sandbox.cleanup().await;
    result
}

async fn run_in(sandbox: &Sandbox, bin_dir: std::path::PathBuf) -> anyhow::Result<bool> {
    let options = sandbox.options(1, bin_dir);
    let token = options.admin_token.clone();
    let platform = stack::Stack::start(options).await?;
    // One caller for every request: a customer who may also edit the catalog. Directly, the
    // services get the identity headers the gateway would send; through it, a token.
    let caller = uuid::Uuid::now_v7().to_string();
    let scopes = [dev_keys::CATALOG_WRITE];
    let bearer = platform
        .token(&caller, &scopes)
        .map(|token| format!("Authorization: Bearer {token}"));
    let identity = vec![
        format!("{}: {caller}", identity::SUBJECT_HEADER),
        format!("{}: {}", identity::SCOPES_HEADER, scopes.join(" ")),
    ];
    let catalog = platform.url_of("catalog-1").context("no catalog")?;
    let order = platform.url_of("order-1").context("no order service")?;
    let gateway = platform.gateway_url.clone();
    let admin = platform.admin_url();
    let targets = [
        ("catalog", &catalog, catalog.clone()),
        (
            "catalog via gateway",
            &catalog,
            format!("{gateway}/api/catalog"),
        ),
        ("order", &order, order.clone()),
        ("order via gateway", &order, format!("{gateway}/api/orders")),
    ]
    .into_iter()
    .map(|(label, service, base)| Target {
        headers: if base.starts_with(&gateway) {
            bearer.iter().cloned().collect()
        } else {
            identity.clone()
        },
        label: label.to_owned(),
        document: format!("{service}/openapi.json"),
        base,
    })
    .chain(std::iter::once(Target {
        label: "gateway admin".to_owned(),
        document: format!("{admin}/openapi.json"),
        base: admin.clone(),
        headers: vec![format!("Authorization: Bearer {token}")],
    }))
    .collect::<Vec<_>>();
    let directory = std::env::temp_dir().join(format!("dockyard-{}", sandbox.exchange));
    std::fs::create_dir_all(&directory)?;
    let mut results = Vec::new();
    for target in &targets {
        let passed = schemathesis(target, &directory).await;
        results.push((target.label.clone(), passed));
    }
    let _ = std::fs::remove_dir_all(&directory);
    platform.stop().await;
    println!("\nconformance (schemathesis, every check):");
    for (label, passed) in &results {
        let verdict = match passed {
            Ok(true) => "passed".to_owned(),
            Ok(false) => "FAILED".to_owned(),
            Err(error) => format!("ERROR {error:#}"),
        };
        println!("  {label:<22} {verdict}");
    }
    Ok(results.iter().all(|(_, passed)| matches!(passed, Ok(true))))
}

async fn schemathesis(target: &Target, directory: &Path) -> anyhow::Result<bool> {
    let document = reqwest::get(&target.document)
        .await?
        .error_for_status()?
        .text()
        .await?;
    let file = directory.join(format!("{}.json", target.label.replace(' ', "-")));
    std::fs::write(&file, document)?;
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.ci/schemathesis.toml");
    let program = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".to_owned());
    println!("\n== schemathesis: {} ({}) ==", target.label, target.base);
    let mut command = tokio::process::Command::new(&program);
    command
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(&file)
        .args(["--url", &target.base, "--checks", "all"])
        .stdin(Stdio::null());
    for header in &target.headers {
        command.args(["--header", header]);
    }
    let status = command
        .status()
        .await
        .with_context(|| format!("running {program} (pip install schemathesis)"))?;
    Ok(status.success())
}
