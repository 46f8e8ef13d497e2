//! What a consumer is doing, for readiness and metrics.
//!
//! - **Stuck**: an event has been in the handler for longer than [`STUCK_AFTER`]. Readiness
//!   is down (`consumer: down`, naming the event) until it finishes.
//! - **Dead letters growing**: a dead letter appeared (this consumer gave up on an event, or
//!   the dead-letter queue, read every few seconds, grew) within [`GROWING_FOR`]. Readiness
//!   stays up but says `degraded`, with the count: the process serves, an operator should
//!   look (`dlq list`). Both states hold for minutes, not polls, so neither flaps.
//!
//! Metrics: `dockyard_consumer_events_total{consumer, outcome}`,
//! `dockyard_consumer_in_flight{consumer}`, `dockyard_consumer_dead_letters{consumer}`.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use dockyard_runtime::{
    health::{ReadinessCheck, Verdict},
    metrics::Metrics,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use uuid::Uuid;

use crate::consumer::Handled;

/// An event in the handler for this long makes the consumer stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(30);
/// A dead letter this recent makes the consumer degraded.
pub const GROWING_FOR: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    consumer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    consumer: String,
    outcome: &'static str,
}

#[derive(Debug, Default)]
struct DeadLetters {
    count: u64,
    last_new: Option<Instant>,
}

/// One consumer's live state; shared by the consume loop, readiness and metrics.
#[derive(Debug)]
pub struct ConsumerStatus {
    consumer: &'static str,
    /// The events in the handler now, and since when.
    current: Mutex<HashMap<Uuid, Instant>>,
    dead_letters: Mutex<DeadLetters>,
    events: Family<OutcomeLabels, Counter>,
    in_flight: Family<ConsumerLabels, Gauge>,
    dead_letter_gauge: Family<ConsumerLabels, Gauge>,
}

impl ConsumerStatus {
    pub fn new(consumer: &'static str) -> Self {
        Self {
            consumer,
            current: Mutex::new(HashMap::new()),
            dead_letters: Mutex::new(DeadLetters::default()),
            events: Family::default(),
            in_flight: Family::default(),
            dead_letter_gauge: Family::default(),
        }
    }

    /// Adds this consumer's metrics to the process's registry.
    pub fn register(&self, metrics: &mut Metrics) {
        metrics.register(
            "consumer_events",
            "Events a consumer finished, by outcome (applied, duplicate, requeued, dead_lettered)",
            self.events.clone(),
        );
        metrics.register(
            "consumer_in_flight",
            "Events in a consumer's handler now",
            self.in_flight.clone(),
        );
        metrics.register(
            "consumer_dead_letters",
            "Messages waiting in a consumer's dead-letter queue",
            self.dead_letter_gauge.clone(),
        );
    }

    fn labels(&self) -> ConsumerLabels {
        ConsumerLabels {
            consumer: self.consumer.to_owned(),
        }
    }

    pub(crate) fn started(&self, id: Uuid, now: Instant) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current.insert(id, now);
        self.in_flight
            .get_or_create(&self.labels())
            .set(i64::try_from(current.len()).unwrap_or(i64::MAX));
    }

    pub(crate) fn ended(&self, id: Uuid) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current.remove(&id);
        self.in_flight
            .get_or_create(&self.labels())
            .set(i64::try_from(current.len()).unwrap_or(i64::MAX));
    }

    pub(crate) fn finish(&self) {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.in_flight.get_or_create(&self.labels()).set(0);
    }

    pub(crate) fn handled(&self, handled: Handled, now: Instant) {
        self.events
            .get_or_create(&OutcomeLabels {
                consumer: self.consumer.to_owned(),
                outcome: handled.as_str(),
            })
            .inc();
        if handled == Handled::DeadLettered {
            let mut dead = self
                .dead_letters
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            dead.count += 1;
            dead.last_new = Some(now);
            self.dead_letter_gauge
                .get_or_create(&self.labels())
                .set(i64::try_from(dead.count).unwrap_or(i64::MAX));
        }
    }

    /// The dead-letter queue's depth as just read.
    pub(crate) fn dead_letters_seen(&self, count: u32, now: Instant) {
        let mut dead = self
            .dead_letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if u64::from(count) > dead.count {
            dead.last_new = Some(now);
        }
        dead.count = u64::from(count);
        self.dead_letter_gauge
            .get_or_create(&self.labels())
            .set(i64::from(count));
    }

    /// The readiness verdict at `now`.
    pub fn verdict(&self, now: Instant) -> Verdict {
        let oldest = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .min_by_key(|(_, since)| **since)
            .map(|(id, since)| (*id, *since));
        if let Some((id, since)) = oldest {
            let busy = now.saturating_duration_since(since);
            if busy >= STUCK_AFTER {
                return Verdict::Down(format!(
                    "stuck: event {id} has been in the handler for {} s",
                    busy.as_secs()
                ));
            }
        }
        let dead = self
            .dead_letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match dead.last_new {
            Some(last) if now.saturating_duration_since(last) < GROWING_FOR => {
                Verdict::Degraded(format!(
                    "dead letters growing: {} waiting, the last {} s ago; see `{} dlq list`",
                    dead.count,
                    now.saturating_duration_since(last).as_secs(),
                    self.consumer
                ))
            }
            _ => Verdict::Up,
        }
    }
}

/// Readiness of a consumer: see the module documentation.
#[derive(Debug, Clone)]
pub struct ConsumerCheck(pub Arc<ConsumerStatus>);

impl ReadinessCheck for ConsumerCheck {
    fn name(&self) -> &'static str {
        "consumer"
    }

    fn check(&self) -> Pin<Box<dyn Future<Output = Verdict> + Send + '_>> {
        Box::pin(async move { self.0.verdict(Instant::now()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_held_past_the_limit_makes_the_consumer_stuck_until_it_ends() {
        let (status, start) = (ConsumerStatus::new("catalog"), Instant::now());
        let (slow, quick) = (Uuid::now_v7(), Uuid::now_v7());
        status.started(slow, start);
        status.started(quick, start + STUCK_AFTER / 2);
        assert_eq!(status.verdict(start + STUCK_AFTER / 2), Verdict::Up);
        let stuck = status.verdict(start + STUCK_AFTER);
        assert!(
            matches!(&stuck, Verdict::Down(reason) if reason.contains(&slow.to_string())),
            "{stuck:?}"
        );
        status.ended(slow);
        assert_eq!(
            status.verdict(start + STUCK_AFTER),
            Verdict::Up,
            "the other is younger"
        );
    }

    #[test]
    fn new_dead_letters_degrade_for_a_while_then_the_verdict_recovers() {
        let (status, start) = (ConsumerStatus::new("order"), Instant::now());
        status.dead_letters_seen(0, start);
        assert_eq!(status.verdict(start), Verdict::Up);

        status.handled(Handled::DeadLettered, start);
        let degraded = status.verdict(start + Duration::from_secs(1));
        assert!(
            matches!(&degraded, Verdict::Degraded(reason) if reason.contains("1 waiting")),
            "{degraded:?}"
        );
        status.dead_letters_seen(1, start + Duration::from_secs(5));
        assert!(matches!(
            status.verdict(start + GROWING_FOR.saturating_sub(Duration::from_secs(1))),
            Verdict::Degraded(_)
        ));
        assert_eq!(
            status.verdict(start + GROWING_FOR),
            Verdict::Up,
            "not growing any more"
        );

        status.dead_letters_seen(3, start + GROWING_FOR);
        assert!(
            matches!(status.verdict(start + GROWING_FOR), Verdict::Degraded(reason) if reason.contains("3 waiting"))
        );
    }
}
