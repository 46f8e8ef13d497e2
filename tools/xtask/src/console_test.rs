//! `cargo xtask console-test`: the console in a real browser. Starts a platform of its own (a
//! [`Sandbox`]: catalog ×2, a canary, order, gateway and the console, every instance exporting
//! its traces to the console), then runs `tools/xtask/browser/console_test.py`, which drives
//! Debian's headless Chromium through chromedriver (selenium) against the console's page:
//! every instance has its card; a catalog instance killed with SIGKILL turns unhealthy on the
//! page within 5 s; the canary slider changes the weight the gateway's `/upstreams` reports;
//! an order placed through the gateway is found by its id and its trace has spans of the
//! gateway, order and catalog. Screenshots go to `target/console-test/`.
//!
//! Needs `chromium`, `chromium-driver` (Debian) and Python with `selenium`; `.ci/run` installs
//! them. `CONSOLE_TEST_PYTHON` names another interpreter; `CHROMIUM` and `CHROMEDRIVER` other
//! binaries.

use std::{path::PathBuf, process::Stdio};

use anyhow::Context;

use crate::{sandbox::Sandbox, stack};

/// Runs the browser test; `Ok(true)` when it passed.
pub async fn run(bin_dir: PathBuf, screenshot: Option<PathBuf>) -> anyhow::Result<bool> {
    let sandbox = Sandbox::new("console");
    let result = run_in(&sandbox, bin_dir, screenshot).await;
    sandbox.cleanup().await;
    result
}

async fn run_in(
    sandbox: &Sandbox,
    bin_dir: PathBuf,
    screenshot: Option<PathBuf>,
) -> anyhow::Result<bool> {
    let mut options = sandbox.options(2, bin_dir);
    options.canary = true;
    options.canary_weight = 10;
    options.console_port = Some(0);
    let admin_token = options.admin_token.clone();
    let platform = stack::Stack::start(options).await?;
    let customer = uuid::Uuid::now_v7().to_string();
    let customer_token = platform
        .token(&customer, &[])
        .context("the sandbox verifies tokens")?;
    let victim = "catalog-2";
    let instances: Vec<String> = ["catalog-1", "catalog-2", "canary", "order-1"]
        .iter()
        .map(|name| platform.url_of(name).with_context(|| format!("no {name}")))
        .collect::<anyhow::Result<_>>()?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let artifacts = root.join("../../target/console-test");
    std::fs::create_dir_all(&artifacts)?;
    let python = std::env::var("CONSOLE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(root.join("browser/console_test.py"))
        .env(
            "CONSOLE_URL",
            platform.console_url.clone().context("no console")?,
        )
        .env("GATEWAY_URL", &platform.gateway_url)
        .env("ADMIN_URL", platform.admin_url())
        .env("ADMIN_TOKEN", &admin_token)
        .env("CUSTOMER_ID", &customer)
        .env("CUSTOMER_TOKEN", &customer_token)
        .env("INSTANCES", instances.join(","))
        .env(
            "KILL_PID",
            platform
                .pid_of(victim)
                .with_context(|| format!("no process {victim}"))?
                .to_string(),
        )
        .env("KILL_URL", platform.url_of(victim).context("no victim")?)
        .env("ARTIFACTS", &artifacts)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(screenshot) = &screenshot {
        command.env("SCREENSHOT", screenshot);
    }
    let status = command
        .status()
        .await
        .with_context(|| format!("running {python}"))?;
    platform.stop().await;
    println!(
        "console test: {} (screenshots in {})",
        if status.success() { "passed" } else { "FAILED" },
        artifacts.display()
    );
    Ok(status.success())
}
