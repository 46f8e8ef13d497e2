//! The catalog's read path against its ceiling: `GET /products/{id}` on one catalog instance
//! (release build, 2 HTTP workers) driven by `wrk -t2 -c32`, each request for one of
//! `--products` products at random (a wrk script), and `pgbench -S -c32 -j2` (the same kind of
//! single-row primary-key read of a random account, with no HTTP at all) on the same
//! PostgreSQL, in one run. Prints both rates and their ratio (`bench/catalog.sh`).

use std::{path::PathBuf, process::Command};

use anyhow::Context;

use crate::{database, products, sandbox::Sandbox, stack};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub seconds: u64,
    pub connections: usize,
    pub http_workers: usize,
    /// Products created; each request reads one of them at random (as `pgbench -S` reads a
    /// random account).
    pub products: usize,
    pub bin_dir: PathBuf,
}

/// Runs both passes and prints the comparison.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let sandbox = Sandbox::new("catalogbench");
    let pgbench_db = format!("{}_pgbench", sandbox.catalog_database);
    let result = run_in(&sandbox, &pgbench_db, &options).await;
    if let Err(error) = database::drop(&sandbox.server_url, &pgbench_db).await {
        eprintln!("could not drop database {pgbench_db}: {error:#}");
    }
    sandbox.cleanup().await;
    result
}

async fn run_in(sandbox: &Sandbox, pgbench_db: &str, options: &Options) -> anyhow::Result<()> {
    let mut stack_options = sandbox.options(1, options.bin_dir.clone());
    stack_options.service_env = vec![
        ("DATABASE_MAX_CONNECTIONS", options.connections.to_string()),
        ("HTTP_WORKERS", options.http_workers.to_string()),
    ];
    // Reads of one catalog instance are measured, not the edge.
    stack_options.auth = false;
    let platform = stack::Stack::start(stack_options).await?;
    let catalog = platform
        .url_of("catalog-1")
        .context("no catalog instance")?;
    let ids = products::create(
        &format!("{catalog}/products"),
        "Read",
        options.products.max(1),
        250,
        10,
        None,
    )
    .await?;
    // Each request reads a product at random, from a wrk script listing them.
    let script = std::env::temp_dir().join(format!("{}.lua", sandbox.exchange));
    std::fs::write(&script, wrk_script(&ids))?;
    let script = script.to_string_lossy().into_owned();
    let url = catalog.clone();
    let connections = options.connections.to_string();
    let duration = format!("{}s", options.seconds);
    // Warm-up: pools filled, caches hot.
    output(
        "wrk",
        &[
            "-t2",
            &format!("-c{connections}"),
            "-d2s",
            "-s",
            &script,
            &url,
        ],
    )?;
    let wrk = output(
        "wrk",
        &[
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{duration}"),
            "--latency",
            "-s",
            &script,
            &url,
        ],
    )?;
    let http = number_after(&wrk, "Requests/sec:").context("wrk printed no Requests/sec")?;
    let http_p99 = wrk
        .lines()
        .find_map(|line| line.trim().strip_prefix("99%"))
        .map_or_else(|| "?".to_owned(), |p| p.trim().to_owned());
    platform.stop().await;
    let _ = std::fs::remove_file(&script);

    database::ensure(&sandbox.server_url, pgbench_db).await?;
    let pg_url = database::url_of(&sandbox.server_url, pgbench_db)?;
    output("pgbench", &["-i", "-q", "-s", "10", &pg_url])?;
    let seconds = options.seconds.to_string();
    let pgbench = output(
        "pgbench",
        &[
            "-S",
            "-n",
            "-c",
            &connections,
            "-j",
            "2",
            "-T",
            &seconds,
            &pg_url,
        ],
    )?;
    let tps = pgbench
        .lines()
        .find(|line| line.starts_with("tps = "))
        .and_then(|line| number_after(line, "tps = "))
        .context("pgbench printed no tps")?;

    println!();
    println!("{:<44} {:>12} {:>10}", "read", "per second", "p99");
    println!(
        "{:<44} {:>12.0} {:>10}",
        format!(
            "catalog GET /products/{{id}} of {} (wrk -t2 -c{connections})",
            ids.len()
        ),
        http,
        http_p99
    );
    println!(
        "{:<44} {:>12.0} {:>10}",
        format!("pgbench -S -c{connections} -j2"),
        tps,
        ""
    );
    println!("ratio catalog / pgbench: {:.2}", http / tps);
    Ok(())
}

/// A wrk script whose every request reads one of `ids` at random.
fn wrk_script(ids: &[String]) -> String {
    let quoted: Vec<String> = ids.iter().map(|id| format!("\"{id}\"")).collect();
    format!(
        "ids = {{{}}}\nrequest = function()\n  return wrk.format(\"GET\", \"/products/\" .. ids[math.random(#ids)])\nend\n",
        quoted.join(",")
    )
}

/// Runs `program` to completion; its standard output.
fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The number that follows `label` in `text`.
fn number_after(text: &str, label: &str) -> Option<f64> {
    let rest = &text[text.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_read_from_wrk_and_pgbench_output() {
        let wrk = "  2 threads and 32 connections\nRequests/sec:  12345.67\nTransfer/sec: 3MB\n";
        assert_eq!(number_after(wrk, "Requests/sec:"), Some(12_345.67));
        let pgbench =
            "latency average = 2.1 ms\ntps = 14712.345678 (without initial connection time)\n";
        assert_eq!(number_after(pgbench, "tps = "), Some(14_712.345_678));
        assert_eq!(number_after(pgbench, "nothing"), None);
    }
}
