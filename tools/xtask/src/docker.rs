//! Docker and Compose for the container commands (`images`, `compose-test`): the engine made
//! to answer, and the `docker` / `docker compose` invocations of one Compose project.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context;
use tokio::process::Command;

/// The repository's root (the build context and where `compose.yaml` is).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `docker` client: Debian's (`/usr/bin/docker`), which finds the `compose` and `buildx`
/// plugins, when it exists (a newer client earlier on the PATH may lack buildx); else the
/// one on the PATH. `DOCKER` overrides both.
pub fn client() -> PathBuf {
    if let Some(docker) = std::env::var_os("DOCKER") {
        return PathBuf::from(docker);
    }
    let debian = Path::new("/usr/bin/docker");
    if debian.exists() {
        debian.to_owned()
    } else {
        PathBuf::from("docker")
    }
}

/// Runs `command`; its standard output, or an error with the end of what it printed.
pub async fn output(mut command: Command) -> anyhow::Result<String> {
    let shown = format!("{:?}", command.as_std());
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {shown}"))?;
    if !output.status.success() {
        let tail = |bytes: &[u8]| {
            let text = String::from_utf8_lossy(bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        anyhow::bail!(
            "{shown} failed ({}):\n{}\n{}",
            output.status,
            tail(&output.stdout),
            tail(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether an engine answers.
pub async fn engine_answers() -> bool {
    let mut info = Command::new(client());
    info.arg("info").stdout(Stdio::null()).stderr(Stdio::null());
    info.status().await.is_ok_and(|s| s.success())
}

/// Makes an engine answer: when none does, installs and starts Debian's
/// (`deploy/offline/engine.sh`, which needs root on a Debian host).
pub async fn ensure_engine() -> anyhow::Result<()> {
    if engine_answers().await {
        return Ok(());
    }
    println!("no Docker engine answers: installing and starting one (deploy/offline/engine.sh)");
    let mut install = Command::new("bash");
    install.arg(repo_root().join("deploy/offline/engine.sh"));
    let status = install.status().await?;
    anyhow::ensure!(
        status.success(),
        "deploy/offline/engine.sh failed ({status})"
    );
    for _ in 0..60 {
        if engine_answers().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    anyhow::bail!("the Docker engine does not answer")
}

/// Builds the local base images from Debian packages when they are missing
/// (`deploy/offline/images.sh`; a no-op for those that exist).
pub async fn ensure_local_images() -> anyhow::Result<()> {
    let mut images = Command::new("bash");
    images
        .arg(repo_root().join("deploy/offline/images.sh"))
        .env("DOCKER", client());
    let status = images.status().await?;
    anyhow::ensure!(
        status.success(),
        "deploy/offline/images.sh failed ({status})"
    );
    Ok(())
}

/// `cargo xtask images`: an engine, then the local base images.
pub async fn images() -> anyhow::Result<()> {
    ensure_engine().await?;
    ensure_local_images().await
}

/// One Compose project of the repository's `compose.yaml`.
#[derive(Debug, Clone)]
pub struct Project {
    pub name: String,
    /// `--env-file` (e.g. `deploy/offline.env`).
    pub env_file: Option<PathBuf>,
    /// More variables for Compose's interpolation (published ports, the admin token).
    pub env: Vec<(String, String)>,
}

impl Project {
    /// `docker …`.
    pub fn docker(&self, args: &[&str]) -> Command {
        let mut command = Command::new(client());
        command.args(args).current_dir(repo_root());
        command
    }

    /// `docker compose -p NAME [--env-file F] …`, from the repository's root.
    pub fn compose(&self, args: &[&str]) -> Command {
        let mut command = Command::new(client());
        command.arg("compose").arg("-p").arg(&self.name);
        if let Some(env_file) = &self.env_file {
            command.arg("--env-file").arg(env_file);
        }
        command
            .args(args)
            .current_dir(repo_root())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    /// The ids of the running containers of `service`.
    pub async fn containers(&self, service: &str) -> anyhow::Result<Vec<String>> {
        Ok(output(self.compose(&["ps", "-q", service]))
            .await?
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// `docker inspect -f FORMAT ID`, trimmed.
    pub async fn inspect(&self, id: &str, format: &str) -> anyhow::Result<String> {
        Ok(output(self.docker(&["inspect", "-f", format, id]))
            .await?
            .trim()
            .to_owned())
    }

    /// `psql` in the `postgres` container, on `database`: rows, fields split on `\x1f`.
    pub async fn psql(&self, database: &str, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
        let rows = output(self.compose(&[
            "exec", "-T", "postgres", "psql", "-U", "dockyard", "-d", database, "-At", "-F",
            "\u{1f}", "-c", sql,
        ]))
        .await?;
        Ok(rows
            .lines()
            .map(|row| row.split('\u{1f}').map(str::to_owned).collect())
            .collect())
    }
}
