//! # dockyard-resilience
//!
//! Resilience policies as pure state machines: no I/O, no async runtime, no clock of their
//! own. Callers pass `now`, so every transition is tested deterministically with made-up
//! instants instead of sleeps, and the same logic serves the order service's catalog client
//! and the gateway.
//!
//! # Layout
//! - [`breaker`]: a circuit breaker: closed (failure-rate window) → open (growing back-off)
//!   → half-open (limited probes) → closed.
//! - [`budget`]: a retry budget (retries at most a fraction of requests) and full-jitter
//!   exponential back-off.

pub mod breaker;
pub mod budget;

pub use breaker::{BreakerConfig, CircuitBreaker, Permit, Rejected, State};
pub use budget::{BudgetConfig, RetryBudget, full_jitter};
