//! A circuit breaker.
//!
//! - **Closed**: every call goes through; the outcomes of the last `window` calls are kept.
//!   When at least `minimum_calls` are known and the failure rate reaches `failure_rate`, the
//!   breaker opens.
//! - **Open**: calls are refused at once with the time left ([`Rejected::retry_after`]), so a
//!   caller can take its fallback path or answer 503 with `Retry-After` instead of waiting on a
//!   dead dependency. The open time doubles on each consecutive trip, up to `max_open_for`.
//! - **Half-open**: after the open time, up to `half_open_probes` calls go through as probes.
//!   A successful probe closes the breaker (with an empty window); a failed one opens it again.
//!
//! A [`Permit`] dropped without an outcome (its caller was cancelled) frees its probe slot and
//! records nothing: a cancellation says nothing about the dependency.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Tuning of a [`CircuitBreaker`].
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// How many recent outcomes the failure rate is computed over.
    pub window: usize,
    /// Fewer outcomes than this never trip the breaker (one failure is not a rate).
    pub minimum_calls: usize,
    /// Failure rate in (0, 1] at which the breaker opens.
    pub failure_rate: f64,
    /// Open time after the first trip; doubled on each consecutive trip.
    pub open_for: Duration,
    /// Upper bound of the open time.
    pub max_open_for: Duration,
    /// Concurrent probes allowed while half-open.
    pub half_open_probes: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: 20,
            minimum_calls: 5,
            failure_rate: 0.5,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
            half_open_probes: 1,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid circuit breaker configuration: {0}")]
pub struct InvalidConfig(&'static str);

impl BreakerConfig {
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.window == 0 || self.minimum_calls == 0 || self.minimum_calls > self.window {
            return Err(InvalidConfig("need 0 < minimum_calls <= window"));
        }
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(InvalidConfig("failure_rate must be in (0, 1]"));
        }
        if self.half_open_probes == 0 {
            return Err(InvalidConfig("half_open_probes must be at least 1"));
        }
        if self.open_for.is_zero() || self.max_open_for < self.open_for {
            return Err(InvalidConfig("need 0 < open_for <= max_open_for"));
        }
        Ok(())
    }
}

/// The breaker's state, for metrics and admin views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

/// A refused call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open; retry in {retry_after:?}")]
pub struct Rejected {
    /// When a call may be let through again (at least one second is advised to HTTP clients).
    pub retry_after: Duration,
}

#[derive(Debug)]
enum Phase {
    /// Recent outcomes, `true` for failure.
    Closed {
        outcomes: VecDeque<bool>,
    },
    Open {
        until: Instant,
        trips: u32,
    },
    HalfOpen {
        probes: usize,
        trips: u32,
    },
}

/// A thread-safe circuit breaker; share it with an `Arc`.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    phase: Mutex<Phase>,
}

/// Permission for one call. Report its outcome with [`Permit::success`] or
/// [`Permit::failure`].
#[derive(Debug)]
#[must_use = "report the call's outcome"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    reported: bool,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Result<Self, InvalidConfig> {
        config.validate()?;
        Ok(Self {
            phase: Mutex::new(Phase::Closed {
                outcomes: VecDeque::with_capacity(config.window),
            }),
            config,
        })
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        // The state stays consistent even if a holder panicked: every update is one assignment.
        self.phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks to make a call at `now`.
    pub fn try_acquire(&self, now: Instant) -> Result<Permit<'_>, Rejected> {
        let mut phase = self.phase();
        let probe = match &mut *phase {
            Phase::Closed { .. } => false,
            Phase::Open { until, trips } => {
                if now < *until {
                    return Err(Rejected {
                        retry_after: *until - now,
                    });
                }
                *phase = Phase::HalfOpen {
                    probes: 1,
                    trips: *trips,
                };
                true
            }
            Phase::HalfOpen { probes, .. } => {
                if *probes >= self.config.half_open_probes {
                    return Err(Rejected {
                        retry_after: self.config.open_for,
                    });
                }
                *probes += 1;
                true
            }
        };
        Ok(Permit {
            breaker: self,
            probe,
            reported: false,
        })
    }

    /// Ends an open period early: the next call is a probe. For callers that learn by other
    /// means (an active health check) that the dependency is back. Returns whether it was open.
    pub fn end_open_period(&self, now: Instant) -> bool {
        let mut phase = self.phase();
        match &mut *phase {
            Phase::Open { until, .. } if now < *until => {
                *until = now;
                true
            }
            _ => false,
        }
    }

    /// The state at `now` (an expired open period reads as half-open).
    pub fn state(&self, now: Instant) -> State {
        match &*self.phase() {
            Phase::Closed { .. } => State::Closed,
            Phase::Open { until, .. } if now < *until => State::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }

    fn open_time(&self, trips: u32) -> Duration {
        let factor = 2u32.saturating_pow(trips.saturating_sub(1));
        self.config
            .open_for
            .saturating_mul(factor)
            .min(self.config.max_open_for)
    }

    fn record(&self, probe: bool, failed: bool, now: Instant) {
        let mut phase = self.phase();
        match &mut *phase {
            Phase::Closed { outcomes } if !probe => {
                if outcomes.len() == self.config.window {
                    outcomes.pop_front();
                }
                outcomes.push_back(failed);
                let failures = outcomes.iter().filter(|f| **f).count();
                #[allow(clippy::cast_precision_loss)] // windows are small
                let rate = failures as f64 / outcomes.len() as f64;
                if outcomes.len() >= self.config.minimum_calls && rate >= self.config.failure_rate {
                    *phase = Phase::Open {
                        until: now + self.open_time(1),
                        trips: 1,
                    };
                }
            }
            Phase::HalfOpen { probes, trips } if probe => {
                if failed {
                    let trips = trips.saturating_add(1);
                    *phase = Phase::Open {
                        until: now + self.open_time(trips),
                        trips,
                    };
                } else {
                    *probes -= 1;
                    *phase = Phase::Closed {
                        outcomes: VecDeque::with_capacity(self.config.window),
                    };
                }
            }
            // Late outcomes of calls let through before a transition say nothing new.
            _ => {}
        }
    }

    fn release_probe(&self) {
        if let Phase::HalfOpen { probes, .. } = &mut *self.phase() {
            *probes = probes.saturating_sub(1);
        }
    }
}

impl Permit<'_> {
    /// The call succeeded.
    pub fn success(mut self, now: Instant) {
        self.reported = true;
        self.breaker.record(self.probe, false, now);
    }

    /// The call failed in a way that says the dependency is unhealthy (timeout, refused
    /// connection, 5xx), not a client error.
    pub fn failure(mut self, now: Instant) {
        self.reported = true;
        self.breaker.record(self.probe, true, now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            window: 10,
            minimum_calls: 4,
            failure_rate: 0.5,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(12),
            half_open_probes: 1,
        })
        .unwrap()
    }

    fn fail(breaker: &CircuitBreaker, now: Instant) {
        breaker.try_acquire(now).unwrap().failure(now);
    }

    fn succeed(breaker: &CircuitBreaker, now: Instant) {
        breaker.try_acquire(now).unwrap().success(now);
    }

    #[test]
    fn failures_below_minimum_calls_never_trip() {
        let (breaker, now) = (breaker(), Instant::now());
        for _ in 0..3 {
            fail(&breaker, now);
        }
        assert_eq!(breaker.state(now), State::Closed);
        fail(&breaker, now);
        assert_eq!(
            breaker.state(now),
            State::Open,
            "4 of 4 failed: trips at minimum_calls"
        );
    }

    #[test]
    fn an_open_period_ended_early_lets_one_probe_through() {
        let (breaker, now) = (breaker(), Instant::now());
        for _ in 0..4 {
            fail(&breaker, now);
        }
        assert_eq!(breaker.state(now), State::Open);

        assert!(breaker.end_open_period(now));

        let probe = breaker.try_acquire(now).expect("the probe");
        assert!(breaker.try_acquire(now).is_err(), "one probe at a time");
        probe.success(now);
        assert_eq!(breaker.state(now), State::Closed);
        assert!(!breaker.end_open_period(now), "nothing to end when closed");
    }

    #[test]
    fn trips_exactly_at_the_failure_rate() {
        let (breaker, now) = (breaker(), Instant::now());
        for _ in 0..4 {
            succeed(&breaker, now);
        }
        for _ in 0..3 {
            fail(&breaker, now);
        }
        assert_eq!(breaker.state(now), State::Closed, "3 of 7 is below 50%");
        fail(&breaker, now);
        assert_eq!(breaker.state(now), State::Open, "4 of 8 is 50%");
    }

    #[test]
    fn old_successes_leaving_the_window_do_not_mask_recent_failures() {
        let (breaker, now) = (breaker(), Instant::now());
        for _ in 0..10 {
            succeed(&breaker, now);
        }
        for _ in 0..4 {
            fail(&breaker, now);
        }
        assert_eq!(breaker.state(now), State::Closed, "4 of the last 10 failed");
        fail(&breaker, now);
        assert_eq!(
            breaker.state(now),
            State::Open,
            "5 of the last 10 (of 15 in all) failed"
        );
    }

    #[test]
    fn open_refuses_with_the_time_left_then_lets_one_probe_through() {
        let (breaker, start) = (breaker(), Instant::now());
        for _ in 0..4 {
            fail(&breaker, start);
        }

        let refused = breaker
            .try_acquire(start + Duration::from_secs(2))
            .unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(3));

        let later = start + Duration::from_secs(5);
        assert_eq!(breaker.state(later), State::HalfOpen);
        let probe = breaker.try_acquire(later).unwrap();
        assert!(breaker.try_acquire(later).is_err(), "one probe at a time");
        probe.success(later);
        assert_eq!(breaker.state(later), State::Closed);
        succeed(&breaker, later);
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_up_to_the_cap() {
        let (breaker, mut now) = (breaker(), Instant::now());
        for _ in 0..4 {
            fail(&breaker, now);
        }
        let mut open_times = Vec::new();
        for _ in 0..3 {
            let refused = breaker.try_acquire(now).unwrap_err();
            open_times.push(refused.retry_after);
            now += refused.retry_after;
            breaker.try_acquire(now).unwrap().failure(now);
        }
        assert_eq!(
            open_times,
            [
                Duration::from_secs(5),
                Duration::from_secs(10),
                Duration::from_secs(12)
            ]
        );
    }

    #[test]
    fn a_dropped_probe_frees_its_slot_and_records_nothing() {
        let (breaker, now) = (breaker(), Instant::now());
        for _ in 0..4 {
            fail(&breaker, now);
        }
        let later = now + Duration::from_secs(5);
        drop(breaker.try_acquire(later).unwrap());
        assert_eq!(breaker.state(later), State::HalfOpen);
        breaker.try_acquire(later).unwrap().success(later);
        assert_eq!(breaker.state(later), State::Closed);
    }

    #[test]
    fn late_outcomes_from_before_a_trip_are_ignored() {
        let (breaker, now) = (breaker(), Instant::now());
        let slow = breaker.try_acquire(now).unwrap();
        for _ in 0..4 {
            fail(&breaker, now);
        }
        slow.success(now);
        assert_eq!(
            breaker.state(now),
            State::Open,
            "a stale success does not close it"
        );
    }

    #[test]
    fn nonsense_configurations_are_refused() {
        let bad = [
            BreakerConfig {
                failure_rate: 0.0,
                ..BreakerConfig::default()
            },
            BreakerConfig {
                failure_rate: 1.5,
                ..BreakerConfig::default()
            },
            BreakerConfig {
                minimum_calls: 30,
                ..BreakerConfig::default()
            },
            BreakerConfig {
                half_open_probes: 0,
                ..BreakerConfig::default()
            },
            BreakerConfig {
                max_open_for: Duration::from_secs(1),
                ..BreakerConfig::default()
            },
        ];
        for config in bad {
            assert!(CircuitBreaker::new(config.clone()).is_err(), "{config:?}");
        }
        assert!(CircuitBreaker::new(BreakerConfig::default()).is_ok());
    }
}
