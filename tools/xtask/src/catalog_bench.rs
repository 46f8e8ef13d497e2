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
    let http_errors = wrk_errors(&wrk);
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
    let pg_failed = number_after(&pgbench, "number of failed transactions:").unwrap_or(0.0);

    println!();
    report(
        &format!(
            "catalog GET /products/{{id}} of {} (wrk -t2 -c{connections})",
            ids.len()
        ),
        (http, &http_p99, http_errors),
        &format!("pgbench -S -c{connections} -j2"),
        (tps, pg_failed),
    )
}

/// The table of one run; an error when either side counted failures (the run is invalid).
fn report(
    http_label: &str,
    (http, http_p99, http_errors): (f64, &str, u64),
    pg_label: &str,
    (tps, pg_failed): (f64, f64),
) -> anyhow::Result<()> {
    println!(
        "{:<44} {:>12} {:>10} {:>7}",
        "read", "per second", "p99", "errors"
    );
    println!("{http_label:<44} {http:>12.0} {http_p99:>10} {http_errors:>7}");
    println!("{pg_label:<44} {tps:>12.0} {:>10} {pg_failed:>7}", "");
    println!("ratio catalog / pgbench: {:.2}", http / tps);
    anyhow::ensure!(
        http_errors == 0 && pg_failed == 0.0,
        "INVALID RUN: {http_errors} failed reads (non-2xx or socket errors), {pg_failed} failed pgbench transactions"
    );
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

/// The errors wrk counted: answers other than 2xx/3xx, and socket errors (connect, read,
/// write, timeout).
fn wrk_errors(text: &str) -> u64 {
    let non_2xx = number_after(text, "Non-2xx or 3xx responses:").unwrap_or(0.0);
    let socket: f64 = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Socket errors:"))
        .map_or(0.0, |rest| {
            rest.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<f64>().ok())
                .sum()
        });
    // Counts are whole numbers well below 2^52.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let errors = (non_2xx + socket) as u64;
    errors
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
    fn wrk_errors_count_non_2xx_answers_and_socket_errors() {
        assert_eq!(wrk_errors("Requests/sec:  12345.67\n"), 0);
        let failing = "  Socket errors: connect 0, read 3, write 1, timeout 2\n  Non-2xx or 3xx responses: 40\nRequests/sec: 10.0\n";
        assert_eq!(wrk_errors(failing), 46);
    }

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
