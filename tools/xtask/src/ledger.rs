//! The client-side ledger of a fault run, and the checker that judges a run by it.
//!
//! Each load client writes down every placement it made: its `Idempotency-Key`, the units it
//! asked for, every attempt (when, and what it was told: accepted with an order id, refused
//! with a status, or no answer at all) and whether it cancelled the order. After the platform
//! has drained, [`judge`] compares that ledger with what the databases hold ([`Snapshot`]):
//! the run is judged by what the clients were told, not by counts the implementation keeps.
//!
//! The checker is pure, so it is tested with ledgers that are lost, doubled, wrongly rejected,
//! phantom or empty, and must fail each.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use uuid::Uuid;

/// What one attempt of a placement was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `202` with the order's id.
    Accepted(Uuid),
    /// A `503` marked as load shedding (`dockyard-shed`: the order service's admission
    /// control).
    Shed,
    /// Any other status.
    Refused(u16),
    /// No answer: the connection failed or the client's time-out passed.
    NoAnswer,
}

/// One attempt, `at` the time since the ledger was opened.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub at: Duration,
    pub answer: Answer,
}

/// One placement: an order a client wanted, under one key, however many attempts it took.
#[derive(Debug, Clone)]
pub struct Placement {
    pub key: String,
    /// Units of every line together.
    pub units: i64,
    pub attempts: Vec<Attempt>,
    /// The client cancelled the order, and the service said it did (`200`).
    pub cancelled: bool,
}

impl Placement {
    /// The order id the client was given, if any attempt was accepted.
    pub fn accepted(&self) -> Option<Uuid> {
        self.attempts.iter().find_map(|a| match a.answer {
            Answer::Accepted(id) => Some(id),
            _ => None,
        })
    }
}

/// The ledger every client of a run writes to.
#[derive(Debug)]
pub struct Ledger {
    opened: Instant,
    placements: Mutex<Vec<Placement>>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            opened: Instant::now(),
            placements: Mutex::new(Vec::new()),
        }
    }
}

impl Ledger {
    /// Time since the ledger was opened: what attempts and windows are measured in.
    pub fn now(&self) -> Duration {
        self.opened.elapsed()
    }

    pub fn record(&self, placement: Placement) {
        self.placements.lock().expect("the ledger").push(placement);
    }

    pub fn placements(&self) -> Vec<Placement> {
        self.placements.lock().expect("the ledger").clone()
    }
}

/// A span of the run in which a fault was declared to cost failed attempts (an outage the
/// fault cannot avoid, such as every instance of a service being down at once).
#[derive(Debug, Clone)]
pub struct Window {
    pub fault: String,
    pub from: Duration,
    pub to: Duration,
}

impl Window {
    pub fn contains(&self, at: Duration) -> bool {
        self.from <= at && at <= self.to
    }
}

/// One order as the order service's database holds it.
#[derive(Debug, Clone)]
pub struct StoredOrder {
    pub id: Uuid,
    pub status: String,
    pub reason: Option<String>,
    pub units: i64,
}

/// What the databases hold once the run has drained.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub orders: Vec<StoredOrder>,
    /// The order each answered key names (`idempotency_keys`).
    pub keys: HashMap<String, Uuid>,
    /// Units the catalog's stock went down by over the run.
    pub stock_taken: i64,
}

/// One verdict of [`judge`].
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub expected: String,
    pub observed: String,
    pub holds: bool,
    /// What went wrong, for the report (at most a few examples).
    pub detail: Vec<String>,
}

impl Check {
    /// A check that holds or not, with what was observed.
    pub fn yes(name: &'static str, holds: bool, observed: impl Into<String>) -> Self {
        Self {
            name,
            expected: "yes".into(),
            observed: observed.into(),
            holds,
            detail: Vec::new(),
        }
    }

    /// A count that must be zero; a few of the counted things as its detail.
    pub fn count(name: &'static str, observed: usize, detail: Vec<String>) -> Self {
        Self {
            name,
            expected: "0".into(),
            observed: observed.to_string(),
            holds: observed == 0,
            detail: detail.into_iter().take(5).collect(),
        }
    }
}

/// How a run is judged.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    /// Accepted placements at least: a run that placed (almost) nothing proves nothing.
    pub min_accepted: usize,
    /// Spans in which failed attempts and given-up placements are allowed.
    pub windows: Vec<Window>,
}

/// Judges a run: every accepted order exists exactly once and ended; with ample stock every
/// accepted order is confirmed (or cancelled, when its client cancelled it); no order exists
/// that no client was told of; the stock went down by exactly the confirmed units; no attempt
/// failed and no placement was given up outside the declared windows.
pub fn judge(placements: &[Placement], snapshot: &Snapshot, expect: &Expectations) -> Vec<Check> {
    let accepted: Vec<(&Placement, Uuid)> = placements
        .iter()
        .filter_map(|p| p.accepted().map(|id| (p, id)))
        .collect();
    let mut checks = vec![Check {
        name: "orders accepted (a run that placed none proves nothing)",
        expected: format!(">= {}", expect.min_accepted),
        observed: accepted.len().to_string(),
        holds: accepted.len() >= expect.min_accepted.max(1),
        detail: Vec::new(),
    }];
    checks.extend(orders(placements, &accepted, snapshot));
    checks.extend(failures(placements, &expect.windows));
    checks
}

/// What became of the orders: each accepted one once and ended as it should, no phantom, and
/// the stock to match.
fn orders(
    placements: &[Placement],
    accepted: &[(&Placement, Uuid)],
    snapshot: &Snapshot,
) -> Vec<Check> {
    let stored: HashMap<Uuid, &StoredOrder> = snapshot.orders.iter().map(|o| (o.id, o)).collect();
    let told: HashSet<Uuid> = accepted.iter().map(|(_, id)| *id).collect();
    let mut lost = Vec::new();
    let mut mismatched = Vec::new();
    let mut unfinished = Vec::new();
    let mut wrong_end = Vec::new();
    let mut expected_units = 0;
    for (placement, id) in accepted {
        // Every attempt that was accepted names the same order, the one its key names.
        let answers: HashSet<Uuid> = placement
            .attempts
            .iter()
            .filter_map(|a| match a.answer {
                Answer::Accepted(id) => Some(id),
                _ => None,
            })
            .collect();
        if answers.len() > 1 || snapshot.keys.get(&placement.key).is_some_and(|k| k != id) {
            mismatched.push(format!("key {} told {answers:?}", placement.key));
        }
        let Some(order) = stored.get(id) else {
            lost.push(format!("{id} (key {})", placement.key));
            continue;
        };
        let expected = if placement.cancelled {
            "cancelled"
        } else {
            "confirmed"
        };
        match order.status.as_str() {
            "pending" => unfinished.push(id.to_string()),
            status if status != expected => wrong_end.push(format!(
                "{id} {status} ({}), expected {expected}",
                order.reason.as_deref().unwrap_or("no reason")
            )),
            _ => {}
        }
        if order.status == "confirmed" {
            expected_units += placement.units;
        }
    }
    // Orders of placements their client gave up on may exist: the answer was lost, not the
    // order. Any other order no client was told of is a phantom (a double).
    let excused: HashSet<Uuid> = placements
        .iter()
        .filter(|p| p.accepted().is_none())
        .filter_map(|p| snapshot.keys.get(&p.key).copied())
        .collect();
    for id in &excused {
        if let Some(order) = stored.get(id).filter(|o| o.status == "confirmed") {
            expected_units += order.units;
        }
    }
    let phantoms: Vec<String> = snapshot
        .orders
        .iter()
        .filter(|o| !told.contains(&o.id) && !excused.contains(&o.id))
        .map(|o| format!("{} {}", o.id, o.status))
        .collect();
    let confirmed_units: i64 = snapshot
        .orders
        .iter()
        .filter(|o| o.status == "confirmed")
        .map(|o| o.units)
        .sum();
    vec![
        Check::count("accepted orders lost", lost.len(), lost),
        Check::count(
            "keys answered with two orders",
            mismatched.len(),
            mismatched,
        ),
        Check::count("orders no client was told of", phantoms.len(), phantoms),
        Check::count(
            "accepted orders still pending",
            unfinished.len(),
            unfinished,
        ),
        Check::count(
            "accepted orders not confirmed (or cancelled by their client)",
            wrong_end.len(),
            wrong_end,
        ),
        Check {
            name: "stock taken == units of confirmed orders",
            expected: expected_units.to_string(),
            observed: snapshot.stock_taken.to_string(),
            holds: snapshot.stock_taken == expected_units && confirmed_units == expected_units,
            detail: vec![format!(
                "confirmed in the order database: {confirmed_units}"
            )],
        },
    ]
}

/// Attempts that failed, and placements given up, outside the declared windows.
fn failures(placements: &[Placement], windows: &[Window]) -> Vec<Check> {
    let outside = |at: Duration| !windows.iter().any(|w| w.contains(at));
    let failed: Vec<String> = placements
        .iter()
        .flat_map(|p| p.attempts.iter().map(move |a| (p, a)))
        .filter(|(_, a)| !matches!(a.answer, Answer::Accepted(_)) && outside(a.at))
        .map(|(p, a)| {
            format!(
                "key {} at {:.1} s: {:?}",
                p.key,
                a.at.as_secs_f64(),
                a.answer
            )
        })
        .collect();
    let gave_up: Vec<String> = placements
        .iter()
        .filter(|p| p.accepted().is_none())
        .filter(|p| p.attempts.last().is_none_or(|a| outside(a.at)))
        .map(|p| format!("key {} after {} attempt(s)", p.key, p.attempts.len()))
        .collect();
    vec![
        Check::count(
            "failed attempts outside declared windows",
            failed.len(),
            failed,
        ),
        Check::count(
            "placements given up outside declared windows",
            gave_up.len(),
            gave_up,
        ),
    ]
}

/// Reads what [`judge`] compares the ledger with: every order and answered key of the order
/// database, and how far the stock of `products` (each created with `stock_each` units) went
/// down in the catalog's.
pub async fn snapshot(
    orders: &sqlx::PgPool,
    catalog: &sqlx::PgPool,
    products: &[String],
    stock_each: i64,
) -> anyhow::Result<Snapshot> {
    let rows: Vec<(Uuid, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT id, status, reason,
                (SELECT COALESCE(sum((line->>'quantity')::bigint), 0)::bigint
                 FROM jsonb_array_elements(lines) AS line)
         FROM orders",
    )
    .fetch_all(orders)
    .await?;
    let keys: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT key, response->>'id' FROM idempotency_keys WHERE status IS NOT NULL",
    )
    .fetch_all(orders)
    .await?;
    let ids: Vec<Uuid> = products.iter().filter_map(|p| p.parse().ok()).collect();
    let left: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(stock), 0)::bigint FROM products WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(catalog)
    .await?;
    Ok(Snapshot {
        orders: rows
            .into_iter()
            .map(|(id, status, reason, units)| StoredOrder {
                id,
                status,
                reason,
                units,
            })
            .collect(),
        keys: keys
            .into_iter()
            .filter_map(|(key, id)| Some((key, id?.parse().ok()?)))
            .collect(),
        stock_taken: i64::try_from(ids.len()).unwrap_or(0) * stock_each - left,
    })
}

/// Prints the checks as a table, with the details of those that failed; `true` if all hold.
pub fn report(checks: &[Check]) -> bool {
    println!(
        "\n{:<62} {:>10} {:>10}  holds",
        "invariant", "expected", "observed"
    );
    for check in checks {
        println!(
            "{:<62} {:>10} {:>10}  {}",
            check.name,
            check.expected,
            check.observed,
            if check.holds { "yes" } else { "NO" }
        );
        if !check.holds {
            for line in &check.detail {
                println!("    {line}");
            }
        }
    }
    checks.iter().all(|c| c.holds)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn placement(key: &str, answers: &[(u64, Answer)]) -> Placement {
        Placement {
            key: key.to_owned(),
            units: 2,
            attempts: answers
                .iter()
                .map(|(at, answer)| Attempt {
                    at: S * u32::try_from(*at).unwrap(),
                    answer: *answer,
                })
                .collect(),
            cancelled: false,
        }
    }

    fn order(id: Uuid, status: &str) -> StoredOrder {
        StoredOrder {
            id,
            status: status.to_owned(),
            reason: (status == "rejected").then(|| "timeout".to_owned()),
            units: 2,
        }
    }

    /// Two placements, both confirmed, one after a refused attempt inside a window.
    fn good_run() -> (Vec<Placement>, Snapshot, Expectations) {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let placements = vec![
            placement("a", &[(1, Answer::Accepted(a))]),
            placement("b", &[(5, Answer::Refused(503)), (6, Answer::Accepted(b))]),
        ];
        let snapshot = Snapshot {
            orders: vec![order(a, "confirmed"), order(b, "confirmed")],
            keys: [("a".to_owned(), a), ("b".to_owned(), b)].into(),
            stock_taken: 4,
        };
        let expect = Expectations {
            min_accepted: 2,
            windows: vec![Window {
                fault: "test".into(),
                from: 4 * S,
                to: 5 * S,
            }],
        };
        (placements, snapshot, expect)
    }

    fn failing(checks: &[Check]) -> Vec<&'static str> {
        checks.iter().filter(|c| !c.holds).map(|c| c.name).collect()
    }

    #[test]
    fn a_good_run_holds_every_check() {
        let (placements, snapshot, expect) = good_run();
        assert_eq!(
            failing(&judge(&placements, &snapshot, &expect)),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn a_lost_order_fails() {
        let (placements, mut snapshot, expect) = good_run();
        snapshot.orders.remove(1);
        snapshot.stock_taken = 2;
        assert_eq!(
            failing(&judge(&placements, &snapshot, &expect)),
            ["accepted orders lost"]
        );
    }

    #[test]
    fn a_doubled_order_fails() {
        let (placements, mut snapshot, expect) = good_run();
        snapshot.orders.push(order(Uuid::now_v7(), "confirmed"));
        snapshot.stock_taken = 6;
        let failed = failing(&judge(&placements, &snapshot, &expect));
        assert!(
            failed.contains(&"orders no client was told of"),
            "{failed:?}"
        );
        assert!(failed.contains(&"stock taken == units of confirmed orders"));
    }

    #[test]
    fn a_key_answered_with_two_orders_fails() {
        let (mut placements, snapshot, expect) = good_run();
        placements[0].attempts.push(Attempt {
            at: 2 * S,
            answer: Answer::Accepted(Uuid::now_v7()),
        });
        assert_eq!(
            failing(&judge(&placements, &snapshot, &expect)),
            ["keys answered with two orders"]
        );
    }

    #[test]
    fn a_wrongly_rejected_order_fails_and_says_why() {
        let (placements, mut snapshot, expect) = good_run();
        snapshot.orders[0].status = "rejected".into();
        snapshot.orders[0].reason = Some("timeout".into());
        snapshot.stock_taken = 2;
        let checks = judge(&placements, &snapshot, &expect);
        assert_eq!(
            failing(&checks),
            ["accepted orders not confirmed (or cancelled by their client)"]
        );
        let check = checks.iter().find(|c| !c.holds).unwrap();
        assert!(check.detail[0].contains("timeout"), "{:?}", check.detail);
    }

    #[test]
    fn a_pending_order_fails() {
        let (placements, mut snapshot, expect) = good_run();
        snapshot.orders[1].status = "pending".into();
        snapshot.stock_taken = 2;
        assert_eq!(
            failing(&judge(&placements, &snapshot, &expect)),
            ["accepted orders still pending"]
        );
    }

    #[test]
    fn a_cancelled_order_must_be_cancelled_and_takes_no_stock() {
        let (mut placements, mut snapshot, expect) = good_run();
        placements[0].cancelled = true;
        snapshot.orders[0].status = "cancelled".into();
        snapshot.stock_taken = 2;
        assert_eq!(
            failing(&judge(&placements, &snapshot, &expect)),
            Vec::<&str>::new()
        );
        snapshot.orders[0].status = "confirmed".into();
        snapshot.stock_taken = 4;
        assert!(!failing(&judge(&placements, &snapshot, &expect)).is_empty());
    }

    #[test]
    fn stock_that_does_not_match_fails() {
        let (placements, mut snapshot, expect) = good_run();
        snapshot.stock_taken = 5;
        assert_eq!(
            failing(&judge(&placements, &snapshot, &expect)),
            ["stock taken == units of confirmed orders"]
        );
    }

    #[test]
    fn an_empty_run_fails() {
        let (_, _, expect) = good_run();
        let failed = failing(&judge(&[], &Snapshot::default(), &expect));
        assert_eq!(
            failed,
            ["orders accepted (a run that placed none proves nothing)"]
        );
        let failed = failing(&judge(&[], &Snapshot::default(), &Expectations::default()));
        assert_eq!(failed.len(), 1, "even with no minimum set");
    }

    #[test]
    fn failures_count_only_outside_the_declared_windows() {
        let (mut placements, snapshot, mut expect) = good_run();
        placements[1].attempts[0].answer = Answer::NoAnswer;
        assert_eq!(
            failing(&judge(&placements, &snapshot, &expect)),
            Vec::<&str>::new()
        );
        expect.windows.clear();
        assert_eq!(
            failing(&judge(&placements, &snapshot, &expect)),
            ["failed attempts outside declared windows"]
        );
    }

    #[test]
    fn a_placement_given_up_fails_unless_inside_a_window_and_its_order_is_no_phantom() {
        let (mut placements, mut snapshot, mut expect) = good_run();
        let lost_answer = Uuid::now_v7();
        placements.push(placement(
            "c",
            &[(4, Answer::NoAnswer), (5, Answer::NoAnswer)],
        ));
        snapshot.orders.push(order(lost_answer, "cancelled"));
        snapshot.keys.insert("c".into(), lost_answer);
        assert_eq!(
            failing(&judge(&placements, &snapshot, &expect)),
            Vec::<&str>::new()
        );
        expect.windows.clear();
        let failed = failing(&judge(&placements, &snapshot, &expect));
        assert!(
            failed.contains(&"placements given up outside declared windows"),
            "{failed:?}"
        );
    }
}
