//! A retry budget: retries may add at most a fixed fraction to the load a dependency already
//! gets, plus a small floor so a quiet service can still retry.
//!
//! Every first attempt deposits `ratio` of a token; every retry withdraws one whole token.
//! With `ratio = 0.2`, retries stay under 20% of requests however many attempts each request
//! is allowed: when a dependency fails everywhere, retries cannot multiply its load (the
//! "retry storm"). The floor, `min_per_second` tokens refilled over time, lets a low-traffic
//! caller retry the odd failure. This is Finagle's retry budget.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Tuning of a [`RetryBudget`].
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed per first attempt, in `[0, 1]` (0.2: retries add at most 20% load).
    pub ratio: f64,
    /// Retries allowed per second regardless of traffic.
    pub min_per_second: f64,
    /// Most retry tokens deposits can add up to, so a long quiet spell of successes cannot
    /// fund a burst of retries later.
    pub cap: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10.0,
            cap: 100.0,
        }
    }
}

/// Deposits are counted in thousandths of a token, in integers, so 100 deposits of 0.2 make
/// exactly 20 tokens.
const MILLI: f64 = 1000.0;

#[derive(Debug)]
struct Balance {
    deposits_milli: u64,
    floor: f64,
    refilled_at: Instant,
}

/// A thread-safe retry budget; share it with an `Arc`.
#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    balance: Mutex<Balance>,
}

impl RetryBudget {
    pub fn new(config: BudgetConfig, now: Instant) -> Self {
        let floor = config.min_per_second;
        Self {
            config,
            balance: Mutex::new(Balance {
                deposits_milli: 0,
                floor,
                refilled_at: now,
            }),
        }
    }

    fn balance(&self) -> std::sync::MutexGuard<'_, Balance> {
        self.balance
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a first attempt.
    pub fn deposit(&self) {
        let (ratio, cap) = (milli(self.config.ratio), milli(self.config.cap));
        let mut balance = self.balance();
        balance.deposits_milli = (balance.deposits_milli + ratio).min(cap);
    }

    /// Takes the token for one retry, if the budget has one.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let mut balance = self.balance();
        let elapsed = now
            .saturating_duration_since(balance.refilled_at)
            .as_secs_f64();
        balance.floor =
            (balance.floor + elapsed * self.config.min_per_second).min(self.config.min_per_second);
        balance.refilled_at = now;
        if balance.deposits_milli >= 1000 {
            balance.deposits_milli -= 1000;
            true
        } else if balance.floor >= 1.0 {
            balance.floor -= 1.0;
            true
        } else {
            false
        }
    }
}

/// `tokens` in thousandths, rounded (negative or NaN: 0).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // clamped to u64's range
fn milli(tokens: f64) -> u64 {
    (tokens * MILLI).round().clamp(0.0, 1e15) as u64
}

/// "Full jitter" exponential back-off: a random delay in `[0, min(cap, base × 2^attempt)]`.
/// Spreading retries at random keeps clients that failed together from retrying together.
pub fn full_jitter(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(cap);
    ceiling.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(now: Instant) -> RetryBudget {
        RetryBudget::new(
            BudgetConfig {
                ratio: 0.2,
                min_per_second: 2.0,
                cap: 100.0,
            },
            now,
        )
    }

    #[test]
    fn retries_are_capped_at_the_ratio_of_requests_once_the_floor_is_spent() {
        let now = Instant::now();
        let budget = budget(now);
        assert!(
            budget.try_withdraw(now) && budget.try_withdraw(now),
            "the floor"
        );
        assert!(!budget.try_withdraw(now), "floor spent, no deposits");

        for _ in 0..100 {
            budget.deposit();
        }
        let retries = (0..100).filter(|_| budget.try_withdraw(now)).count();
        assert_eq!(retries, 20, "100 requests at 20% buy 20 retries");
    }

    #[test]
    fn the_floor_refills_with_time_but_does_not_accumulate() {
        let start = Instant::now();
        let budget = budget(start);
        assert!(budget.try_withdraw(start) && budget.try_withdraw(start));
        assert!(!budget.try_withdraw(start + Duration::from_millis(100)));
        assert!(budget.try_withdraw(start + Duration::from_millis(600)));

        let later = start + Duration::from_secs(3600);
        let retries = (0..10).filter(|_| budget.try_withdraw(later)).count();
        assert_eq!(retries, 2, "an idle hour refills only the per-second floor");
    }

    #[test]
    fn deposits_are_capped() {
        let now = Instant::now();
        let budget = RetryBudget::new(
            BudgetConfig {
                ratio: 1.0,
                min_per_second: 0.0,
                cap: 3.0,
            },
            now,
        );
        for _ in 0..1000 {
            budget.deposit();
        }
        assert_eq!((0..10).filter(|_| budget.try_withdraw(now)).count(), 3);
    }

    #[test]
    fn jittered_delays_stay_under_the_growing_ceiling_and_the_cap() {
        let (base, cap) = (Duration::from_millis(10), Duration::from_millis(100));
        for attempt in 0..20 {
            let ceiling = (base * 2u32.pow(attempt.min(16))).min(cap);
            for _ in 0..50 {
                assert!(full_jitter(attempt, base, cap) <= ceiling);
            }
        }
        let spread: std::collections::HashSet<_> =
            (0..50).map(|_| full_jitter(3, base, cap)).collect();
        assert!(spread.len() > 40, "delays are random, not fixed");
    }
}
