//! The load generator: simulated users through the gateway, each in a loop: browse a page of
//! products, look at one, and now and then place an order (with an idempotency key), read it
//! back, and sometimes cancel it. Bounded by a duration and optionally a request count; the
//! report gives req/s, p50/p95/p99 per endpoint and the answers by status.

// Report arithmetic: request counts and microseconds stay far below 2^52, and a percentile's
// rank is a small positive number, so these casts lose nothing.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use dockyard_testkit::TokenIssuer;
use serde_json::{Value, json};

use crate::dev_keys;

#[derive(Debug, Clone)]
pub struct Options {
    pub gateway: String,
    pub users: usize,
    pub duration: Duration,
    /// Stop after this many requests, if sooner.
    pub max_requests: Option<u64>,
    /// Signs each user's token (its customer id as `sub`); `None`: no tokens are sent.
    pub signer: Option<Arc<TokenIssuer>>,
}

/// What one endpoint saw.
#[derive(Debug, Default, Clone)]
pub struct EndpointStats {
    pub latencies_us: Vec<u64>,
    /// Answers by status; `0` is a transport error (no answer).
    pub statuses: BTreeMap<u16, u64>,
}

/// The whole run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub elapsed: Duration,
    pub endpoints: BTreeMap<&'static str, EndpointStats>,
}

impl Report {
    pub fn requests(&self) -> u64 {
        self.endpoints
            .values()
            .map(|e| e.latencies_us.len() as u64)
            .sum()
    }

    /// Server errors and transport errors: what a user would call a failure.
    pub fn failures(&self) -> u64 {
        self.endpoints
            .values()
            .flat_map(|e| e.statuses.iter())
            .filter(|(status, _)| **status == 0 || **status >= 500)
            .map(|(_, count)| count)
            .sum()
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = self.elapsed.as_secs_f64();
        writeln!(
            f,
            "{} requests in {seconds:.1} s: {:.0} req/s, {} failed (5xx or no answer)",
            self.requests(),
            self.requests() as f64 / seconds,
            self.failures()
        )?;
        writeln!(
            f,
            "{:<34} {:>8} {:>8} {:>9} {:>9} {:>9}  statuses",
            "endpoint", "count", "req/s", "p50 ms", "p95 ms", "p99 ms"
        )?;
        for (name, stats) in &self.endpoints {
            let mut sorted = stats.latencies_us.clone();
            sorted.sort_unstable();
            let statuses: Vec<String> = stats
                .statuses
                .iter()
                .map(|(status, count)| match status {
                    0 => format!("error×{count}"),
                    _ => format!("{status}×{count}"),
                })
                .collect();
            writeln!(
                f,
                "{name:<34} {:>8} {:>8.1} {:>9.2} {:>9.2} {:>9.2}  {}",
                sorted.len(),
                sorted.len() as f64 / seconds,
                percentile(&sorted, 0.50),
                percentile(&sorted, 0.95),
                percentile(&sorted, 0.99),
                statuses.join(" ")
            )?;
        }
        Ok(())
    }
}

struct Shared {
    report: Mutex<Report>,
    sent: AtomicU64,
    stop: AtomicBool,
    options: Options,
}

impl Shared {
    /// Sends one request, records it under `endpoint`; the body if it was a 2xx JSON answer.
    async fn call(
        &self,
        endpoint: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Option<Value> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let sent = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        if self.options.max_requests.is_some_and(|max| sent >= max) {
            self.stop.store(true, Ordering::Relaxed);
        }
        let started = Instant::now();
        let result = request.send().await;
        let (status, body) = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.json::<Value>().await.ok();
                (status, body)
            }
            Err(_) => (0, None),
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut report = self
            .report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let seen = report.endpoints.entry(endpoint).or_default();
        seen.latencies_us.push(micros);
        *seen.statuses.entry(status).or_default() += 1;
        body.filter(|_| (200..300).contains(&status))
    }
}

async fn user(shared: Arc<Shared>, client: reqwest::Client) {
    let base = shared.options.gateway.trim_end_matches('/').to_owned();
    let customer = uuid::Uuid::now_v7();
    let token = shared.options.signer.as_ref().map(|signer| {
        dev_keys::token(
            signer,
            &customer.to_string(),
            &[],
            Duration::from_secs(3600),
        )
    });
    let authorized =
        |request: reqwest::RequestBuilder| dev_keys::with_token(request, token.as_deref());
    while !shared.stop.load(Ordering::Relaxed) {
        let page = shared
            .call(
                "GET /api/catalog/products",
                client.get(format!("{base}/api/catalog/products?limit=20")),
            )
            .await;
        let ids: Vec<String> = page
            .as_ref()
            .and_then(|p| p["items"].as_array())
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if ids.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let product = &ids[fastrand::usize(..ids.len())];
        shared
            .call(
                "GET /api/catalog/products/{id}",
                client.get(format!("{base}/api/catalog/products/{product}")),
            )
            .await;
        if fastrand::u8(..10) >= 3 {
            continue;
        }
        let lines: Vec<Value> = (0..fastrand::usize(1..=2))
            .map(|_| json!({"product_id": ids[fastrand::usize(..ids.len())], "quantity": 1}))
            .collect();
        let placed = shared
            .call(
                "POST /api/orders/orders",
                authorized(client.post(format!("{base}/api/orders/orders")))
                    .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                    .json(&json!({"customer_id": customer, "lines": lines})),
            )
            .await;
        let Some(id) = placed.as_ref().and_then(|o| o["id"].as_str()) else {
            continue;
        };
        shared
            .call(
                "GET /api/orders/orders/{id}",
                authorized(client.get(format!("{base}/api/orders/orders/{id}"))),
            )
            .await;
        if fastrand::u8(..10) < 2 {
            shared
                .call(
                    "POST /api/orders/orders/{id}/cancel",
                    authorized(client.post(format!("{base}/api/orders/orders/{id}/cancel"))),
                )
                .await;
        }
    }
}

/// Runs the load; `progress` shows a bar on the terminal.
pub async fn run(options: Options, progress: bool) -> Report {
    let shared = Arc::new(Shared {
        report: Mutex::new(Report::default()),
        sent: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        options: options.clone(),
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a plain HTTP client builds");
    let started = Instant::now();
    let users: Vec<_> = (0..options.users)
        .map(|_| tokio::spawn(user(Arc::clone(&shared), client.clone())))
        .collect();
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new(options.duration.as_secs().max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} s  {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar
    });
    while started.elapsed() < options.duration && !shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(bar) = &bar {
            bar.set_position(started.elapsed().as_secs());
            let failures = shared
                .report
                .lock()
                .map(|r| r.failures())
                .unwrap_or_default();
            bar.set_message(format!(
                "{} requests, {failures} failed",
                shared.sent.load(Ordering::Relaxed)
            ));
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    for user in users {
        let _ = user.await;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut report = shared.report.lock().map(|r| r.clone()).unwrap_or_default();
    report.elapsed = started.elapsed();
    report
}
