//! Load clients of the fault runs (the chaos suite, the outage tests): customers placing keyed
//! orders through the gateway and writing every attempt to a [`Ledger`], and readers counting
//! every read that failed and when.

use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    dev_keys,
    ledger::{Answer, Attempt, Check, Ledger, Placement, Window},
};

/// How a customer behaves.
#[derive(Debug, Clone)]
pub struct Customer {
    pub gateway: String,
    pub id: Uuid,
    pub token: Option<String>,
    pub products: Vec<String>,
    /// Which product the first order takes (customers spread over the products).
    pub first_product: usize,
    /// Pause between two placements.
    pub pace: Duration,
    /// A placement is retried with its key for this long before it is given up.
    pub patience: Duration,
    /// Every `cancel_every`-th accepted order is cancelled (`0`: none).
    pub cancel_every: usize,
}

/// Places orders until `stop`, each retried with its key until accepted or `patience` has
/// passed, and writes every placement to `ledger`.
pub async fn customer(me: Customer, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let authorized =
        |request: reqwest::RequestBuilder| dev_keys::with_token(request, me.token.as_deref());
    let mut accepted = 0_usize;
    let mut n = 0_usize;
    while !stop.load(Ordering::Relaxed) {
        let product = &me.products[(me.first_product + n) % me.products.len()];
        let units = 1 + n % 3;
        n += 1;
        let key = Uuid::new_v4().to_string();
        let body =
            json!({"customer_id": me.id, "lines": [{"product_id": product, "quantity": units}]});
        let first = tokio::time::Instant::now();
        let mut placement = Placement {
            key: key.clone(),
            units: i64::try_from(units).unwrap_or(0),
            attempts: Vec::new(),
            cancelled: false,
        };
        let id = loop {
            let at = ledger.now();
            let sent = authorized(client.post(format!("{}/api/orders/orders", me.gateway)))
                .header("idempotency-key", &key)
                .json(&body)
                .send()
                .await;
            let answer = match sent {
                Ok(response) if response.status() == 202 => {
                    match response.json::<Value>().await.ok().and_then(|order| {
                        order["id"].as_str().and_then(|id| id.parse::<Uuid>().ok())
                    }) {
                        Some(id) => Answer::Accepted(id),
                        None => Answer::NoAnswer,
                    }
                }
                Ok(response) if response.headers().contains_key("dockyard-shed") => Answer::Shed,
                Ok(response) => Answer::Refused(response.status().as_u16()),
                Err(_) => Answer::NoAnswer,
            };
            placement.attempts.push(Attempt { at, answer });
            if let Answer::Accepted(id) = answer {
                break Some(id);
            }
            if first.elapsed() > me.patience {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if let Some(id) = id {
            accepted += 1;
            if me.cancel_every > 0 && accepted.is_multiple_of(me.cancel_every) {
                placement.cancelled = cancel(&client, &me, id).await;
            }
        }
        ledger.record(placement);
        tokio::time::sleep(me.pace).await;
    }
}

/// Cancels order `id`, retrying for `patience`; `true` once the order is cancelled. `200` says
/// so; `409` says it had ended already — perhaps by this very cancellation, whose answer was
/// lost (the gateway restarted), so the client then reads the order to learn how it ended.
async fn cancel(client: &reqwest::Client, me: &Customer, id: Uuid) -> bool {
    let order = format!("{}/api/orders/orders/{id}", me.gateway);
    let first = tokio::time::Instant::now();
    while first.elapsed() < me.patience {
        let sent =
            dev_keys::with_token(client.post(format!("{order}/cancel")), me.token.as_deref())
                .send()
                .await;
        match sent.map(|r| r.status().as_u16()) {
            Ok(200) => return true,
            Ok(409) => {
                let read = dev_keys::with_token(client.get(&order), me.token.as_deref())
                    .send()
                    .await;
                if let Ok(response) = read
                    && response.status() == 200
                    && let Ok(seen) = response.json::<Value>().await
                {
                    return seen["status"] == "cancelled";
                }
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// What a reader saw: every read, when each failed one was sent, and how long each took.
#[derive(Debug, Default)]
pub struct Reads {
    pub total: usize,
    pub failed: Vec<(Duration, String)>,
    /// Each read: when it was sent, and how long its answer took.
    pub timings: Vec<(Duration, Duration)>,
}

impl Reads {
    /// The reads that failed outside `windows`, as a check; at least `min_total` reads made.
    pub fn check(&self, windows: &[Window], min_total: usize) -> Check {
        let failed: Vec<String> = self
            .failed
            .iter()
            .filter(|(at, _)| !windows.iter().any(|w| w.contains(*at)))
            .map(|(at, why)| format!("at {:.1} s: {why}", at.as_secs_f64()))
            .collect();
        Check {
            name: "reads failed outside declared windows",
            expected: "0".into(),
            observed: format!("{} of {}", failed.len(), self.total),
            holds: failed.is_empty() && self.total >= min_total,
            detail: failed.into_iter().take(5).collect(),
        }
    }

    /// The `quantile` (0–1) of the latencies of reads sent within `from..to`.
    pub fn latency(&self, from: Duration, to: Duration, quantile: f64) -> Option<Duration> {
        let mut within: Vec<Duration> = self
            .timings
            .iter()
            .filter(|(at, _)| from <= *at && *at <= to)
            .map(|(_, took)| *took)
            .collect();
        within.sort_unstable();
        let last = within.len().checked_sub(1)?;
        // A rank, rounded up; never past the last.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((last as f64) * quantile).ceil() as usize;
        within.get(rank.min(last)).copied()
    }
}

/// A client of its own address reading `product` every `pace` until `stop`.
pub async fn reader(
    gateway: String,
    product: String,
    ip: [u8; 4],
    pace: Duration,
    (ledger, reads): (Arc<Ledger>, Arc<Mutex<Reads>>),
    stop: Arc<AtomicBool>,
) {
    let client = client_from(ip);
    while !stop.load(Ordering::Relaxed) {
        let at = ledger.now();
        let sent = std::time::Instant::now();
        let read = client
            .get(format!("{gateway}/api/catalog/products/{product}"))
            .send()
            .await;
        let failure = match read {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(response.status().to_string()),
            Err(error) => Some(error.to_string()),
        };
        {
            let mut reads = reads.lock().expect("the reads");
            reads.total += 1;
            reads.timings.push((at, sent.elapsed()));
            if let Some(failure) = failure {
                reads.failed.push((at, failure));
            }
        }
        tokio::time::sleep(pace).await;
    }
}

/// A client whose connections come from `ip` (a loopback address of its own, so the gateway's
/// per-client rate limit counts it alone).
pub fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client")
}
