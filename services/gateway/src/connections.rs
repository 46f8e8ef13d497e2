//! The data plane's client connections: the time limits of a public edge, and a budget of
//! connections below the process's descriptor limit.
//!
//! **Time limits** (each an environment variable with a default; nginx's and `HAProxy`'s
//! equivalents in `docs/architecture.md`):
//! - `HEADER_TIMEOUT` (10 s): a request head must arrive whole within it of its first byte
//!   (of the connection's start, for its first request). Past it the client gets
//!   `408 Request Timeout` and the connection closes: a slow-headers client ("slowloris")
//!   holds a connection for 10 s, not for as long as it trickles bytes.
//! - `KEEPALIVE_IDLE_TIMEOUT` (15 s): a kept-alive connection with no request in flight and
//!   no byte of a next one is closed after it.
//! - `BODY_TIMEOUT` (15 s): a request body that stalls — the gateway waiting to read it and
//!   no byte coming — is cut after it.
//!
//! Each connection's state lives in a [`Conn`] that its reader ([`crate::framing::Guarded`],
//! which already follows each request's framing), its service (requests in flight) and one
//! sweeper task share. The sweeper looks at every connection every [`SWEEP_EVERY`], marks
//! the ones past a limit and wakes their reader, which writes the `408` if one is owed and
//! ends the connection with an error: no timer per connection or per read.
//!
//! **The budget** (`MAX_CONNECTIONS`, by default half of the descriptors the process may open
//! less a reserve of [`RESERVED_DESCRIPTORS`], as `HAProxy` derives its `maxconn`: a proxied
//! request holds a client and an upstream connection; the reserve is for health checks, DNS,
//! the admin listener, the database-free rest of the process). At the budget, a new
//! connection makes room by closing the idlest one — no request in flight, then the oldest
//! unfinished head — and when none can go, it is closed at once. One client holding a
//! thousand silent sockets thus costs everyone else nothing: their connections replace the
//! silent ones. An `accept` that fails for want of descriptors pauses the listener briefly,
//! counts in `dockyard_gateway_accept_errors_total` and warns at most every few seconds.

use std::{
    collections::HashMap,
    io,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use dockyard_runtime::metrics::Metrics;
use futures_util::task::AtomicWaker;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use tokio_util::sync::CancellationToken;

/// How often the sweeper looks at every connection: limits hold to within this.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Descriptors kept out of the connection budget.
pub const RESERVED_DESCRIPTORS: u64 = 128;
/// At most one warning about failing `accept`s this often.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// What a client gets when its request head took too long.
pub const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// The limits, parsed from the environment ([`crate::config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header: Duration,
    pub idle: Duration,
    pub body: Duration,
    /// Open client connections at most.
    pub max_connections: usize,
}

/// The descriptors this process may open: its soft `RLIMIT_NOFILE`, raised to the hard limit
/// first (as servers do: the soft limit is often 1,024 for compatibility with `select`, which
/// nothing here uses).
pub fn descriptor_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// The default budget for a process that may open `nofile` descriptors.
pub fn budget(nofile: u64) -> usize {
    usize::try_from((nofile.saturating_sub(RESERVED_DESCRIPTORS) / 2).max(16)).unwrap_or(16)
}

/// Milliseconds since the first call: the connections' clock.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Where a connection's byte stream is, as its reader follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// No byte of the next request head yet.
    Waiting = 0,
    /// Part of a request head.
    Head = 1,
    /// A request body.
    Body = 2,
    /// The reader stopped following the framing (an upgrade, a head hyper refuses).
    Untracked = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Waiting,
            1 => Self::Head,
            2 => Self::Body,
            _ => Self::Untracked,
        }
    }
}

/// Why a connection is being closed by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Expiry {
    /// The request head did not arrive in time: `408`.
    Header = 1,
    /// Kept alive and idle too long.
    Idle = 2,
    /// The request body stalled.
    Body = 3,
    /// Closed to make room for a new connection at the budget.
    Evicted = 4,
}

impl Expiry {
    fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Header),
            2 => Some(Self::Idle),
            3 => Some(Self::Body),
            4 => Some(Self::Evicted),
            _ => None,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::Header => "header_timeout",
            Self::Idle => "idle_timeout",
            Self::Body => "body_timeout",
            Self::Evicted => "evicted",
        }
    }
}

/// Not waiting: the `reading_since` of a reader that is not blocked on the client.
const NOT_READING: u64 = u64::MAX;

/// One client connection's state.
#[derive(Debug)]
pub struct Conn {
    born: u64,
    phase: AtomicU8,
    /// When the current head's first byte arrived.
    head_since: AtomicU64,
    /// Since when the reader has been waiting for the client's bytes ([`NOT_READING`]: it is
    /// not waiting).
    reading_since: AtomicU64,
    /// When the last response finished (or the connection began).
    idle_since: AtomicU64,
    in_flight: AtomicU32,
    served: AtomicBool,
    expiry: AtomicU8,
    reader: AtomicWaker,
}

impl Conn {
    pub fn new() -> Self {
        let now = now_ms();
        Self {
            born: now,
            phase: AtomicU8::new(Phase::Waiting as u8),
            head_since: AtomicU64::new(now),
            reading_since: AtomicU64::new(NOT_READING),
            idle_since: AtomicU64::new(now),
            in_flight: AtomicU32::new(0),
            served: AtomicBool::new(false),
            expiry: AtomicU8::new(0),
            reader: AtomicWaker::new(),
        }
    }

    /// Why the connection is to be closed, once it is.
    pub fn expired(&self) -> Option<Expiry> {
        Expiry::from_u8(self.expiry.load(Ordering::Acquire))
    }

    /// The reader found no byte to read: it waits for the client from now on (unless it did
    /// already), and `waker` wakes it if the connection expires meanwhile.
    pub fn waiting(&self, waker: &std::task::Waker) {
        self.reader.register(waker);
        let _ = self.reading_since.compare_exchange(
            NOT_READING,
            now_ms(),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Bytes arrived, after which the stream is in `phase`.
    pub fn progressed(&self, phase: Phase) {
        self.reading_since.store(NOT_READING, Ordering::Release);
        let before = Phase::from_u8(self.phase.swap(phase as u8, Ordering::AcqRel));
        if phase == Phase::Head && before != Phase::Head {
            self.head_since.store(now_ms(), Ordering::Release);
        }
    }

    /// A request reached the service; the guard ends it when dropped (with its response's
    /// body, or with the service's future if that is dropped first).
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    fn expire(&self, expiry: Expiry) -> bool {
        let set = self
            .expiry
            .compare_exchange(0, expiry as u8, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if set {
            self.reader.wake();
        }
        set
    }

    /// The limit this connection is past at `now`, if any.
    fn overdue(&self, limits: &Limits, now: u64) -> Option<Expiry> {
        let past = |since: u64, limit: Duration| {
            since != NOT_READING
                && now.saturating_sub(since) >= u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)
        };
        let reading_since = self.reading_since.load(Ordering::Acquire);
        let busy = self.in_flight.load(Ordering::Acquire) > 0;
        match Phase::from_u8(self.phase.load(Ordering::Acquire)) {
            Phase::Body => past(reading_since, limits.body).then_some(Expiry::Body),
            Phase::Head => past(self.head_since.load(Ordering::Acquire), limits.header)
                .then_some(Expiry::Header),
            Phase::Waiting if busy => None,
            Phase::Waiting if !self.served.load(Ordering::Acquire) => {
                past(self.born, limits.header).then_some(Expiry::Idle)
            }
            Phase::Waiting => {
                past(self.idle_since.load(Ordering::Acquire), limits.idle).then_some(Expiry::Idle)
            }
            Phase::Untracked => (!busy && past(reading_since, limits.idle)).then_some(Expiry::Idle),
        }
    }

    /// How readily it is closed to make room (lower first), or `None` if it must not be: a
    /// request is in flight.
    fn eviction_rank(&self) -> Option<(u8, u64)> {
        if self.expired().is_some() {
            return None;
        }
        let busy = self.in_flight.load(Ordering::Acquire) > 0;
        match Phase::from_u8(self.phase.load(Ordering::Acquire)) {
            Phase::Waiting if !busy => Some((0, self.idle_since.load(Ordering::Acquire))),
            Phase::Head => Some((1, self.head_since.load(Ordering::Acquire))),
            _ => None,
        }
    }
}

impl Default for Conn {
    fn default() -> Self {
        Self::new()
    }
}

/// A request in flight on a connection; see [`Conn::request`].
#[derive(Debug)]
pub struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.idle_since.store(now_ms(), Ordering::Release);
        conn.served.store(true, Ordering::Release);
        conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Every open client connection, the budget, and their metrics.
#[derive(Debug)]
pub struct Connections {
    limits: Limits,
    table: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    open: Gauge,
    closed: Family<ReasonLabels, Counter>,
    accept_errors: Counter,
    /// When the last warning about failing `accept`s went out, and how many failed since.
    warned: Mutex<(Option<Instant>, u64)>,
    /// Connections marked by the sweeper, for tests and logs.
    swept: AtomicUsize,
}

impl Connections {
    /// Registers `dockyard_gateway_connections_open`,
    /// `dockyard_gateway_connections_closed_total{reason}` and
    /// `dockyard_gateway_accept_errors_total`.
    pub fn new(limits: Limits, metrics: &mut Metrics) -> Arc<Self> {
        let connections = Arc::new(Self {
            limits,
            table: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            open: Gauge::default(),
            closed: Family::default(),
            accept_errors: Counter::default(),
            warned: Mutex::new((None, 0)),
            swept: AtomicUsize::new(0),
        });
        metrics.register(
            "gateway_connections_open",
            "Client connections open on the data plane",
            connections.open.clone(),
        );
        metrics.register(
            "gateway_connections_closed",
            "Client connections the gateway closed or refused, by reason (header_timeout, idle_timeout, body_timeout, evicted, refused)",
            connections.closed.clone(),
        );
        metrics.register(
            "gateway_accept_errors",
            "Failed accepts of client connections (out of descriptors and the like)",
            connections.accept_errors.clone(),
        );
        connections
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A new connection: registered, after making room at the budget by closing the idlest
    /// connection; `None` when none can be closed (the caller closes the new one at once).
    pub fn admit(self: &Arc<Self>) -> Option<Registered> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.len() >= self.limits.max_connections {
            let victim = table
                .values()
                .filter_map(|conn| conn.eviction_rank().map(|rank| (rank, conn)))
                .min_by_key(|(rank, _)| *rank)
                .map(|(_, conn)| Arc::clone(conn));
            let Some(victim) = victim else {
                drop(table);
                self.count_closed("refused");
                return None;
            };
            victim.expire(Expiry::Evicted);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new());
        table.insert(id, Arc::clone(&conn));
        self.open
            .set(i64::try_from(table.len()).unwrap_or(i64::MAX));
        Some(Registered {
            id,
            conn,
            connections: Arc::clone(self),
        })
    }

    /// Marks every connection past a limit and wakes its reader.
    pub fn sweep(&self) {
        let now = now_ms();
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        for conn in table.values() {
            if conn.expired().is_none()
                && let Some(expiry) = conn.overdue(&self.limits, now)
                && conn.expire(expiry)
            {
                self.swept.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sweeps every [`SWEEP_EVERY`] until `stop`.
    pub async fn run_sweeper(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => self.sweep(),
            }
        }
    }

    /// An `accept` failed: counted, warned about at most every [`WARN_EVERY`]; out of
    /// descriptors, the idlest connection is closed to free one.
    pub fn accept_failed(self: &Arc<Self>, error: &io::Error) {
        self.accept_errors.inc();
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        warned.1 += 1;
        if warned.0.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            tracing::warn!(%error, failed = warned.1, "accepting connections fails; pausing the listener");
            *warned = (Some(Instant::now()), 0);
        }
        drop(warned);
        let out_of_descriptors = [nix::errno::Errno::EMFILE, nix::errno::Errno::ENFILE]
            .iter()
            .any(|errno| error.raw_os_error() == Some(*errno as i32));
        if out_of_descriptors {
            let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, victim)) = table
                .values()
                .filter_map(|conn| conn.eviction_rank().map(|rank| (rank, conn)))
                .min_by_key(|(rank, _)| *rank)
            {
                victim.expire(Expiry::Evicted);
            }
        }
    }

    fn count_closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A connection's place in [`Connections`]; removed when dropped (the connection ended).
#[derive(Debug)]
pub struct Registered {
    id: u64,
    pub conn: Arc<Conn>,
    connections: Arc<Connections>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut table = self
            .connections
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        table.remove(&self.id);
        self.connections
            .open
            .set(i64::try_from(table.len()).unwrap_or(i64::MAX));
        drop(table);
        if let Some(expiry) = self.conn.expired() {
            self.connections.count_closed(expiry.reason());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(15),
        body: Duration::from_secs(15),
        max_connections: 2,
    };

    fn at(conn: &Conn, seconds: u64) -> Option<Expiry> {
        conn.overdue(&LIMITS, conn.born + seconds * 1000)
    }

    #[test]
    fn a_silent_new_connection_gets_the_header_timeout() {
        let conn = Conn::new();
        assert_eq!(at(&conn, 9), None);
        assert_eq!(
            at(&conn, 10),
            Some(Expiry::Idle),
            "nothing sent: closed, no 408"
        );
    }

    #[test]
    fn a_head_must_arrive_whole_within_the_header_timeout_of_its_first_byte() {
        let conn = Conn::new();
        conn.progressed(Phase::Head);
        conn.head_since.store(conn.born, Ordering::Release);
        conn.progressed(Phase::Head); // more bytes: the head's clock does not restart
        assert_eq!(at(&conn, 9), None);
        assert_eq!(at(&conn, 10), Some(Expiry::Header));
    }

    #[test]
    fn a_request_in_flight_is_never_idle_and_the_idle_clock_starts_when_it_ends() {
        let conn = Arc::new(Conn::new());
        conn.progressed(Phase::Waiting); // a head without a body, complete
        let request = conn.request();
        assert_eq!(
            at(&conn, 100),
            None,
            "a slow upstream is not an idle client"
        );
        assert_eq!(
            conn.eviction_rank(),
            None,
            "and its connection is not evicted"
        );
        drop(request);
        conn.idle_since
            .store(conn.born + 100_000, Ordering::Release);
        assert_eq!(at(&conn, 114), None);
        assert_eq!(at(&conn, 115), Some(Expiry::Idle));
    }

    #[test]
    fn a_body_is_cut_only_while_the_gateway_waits_for_its_bytes() {
        let conn = Arc::new(Conn::new());
        conn.progressed(Phase::Body);
        let _request = conn.request();
        assert_eq!(
            at(&conn, 60),
            None,
            "not reading: the upstream is slow, not the client"
        );
        conn.reading_since.store(conn.born, Ordering::Release);
        assert_eq!(at(&conn, 14), None);
        assert_eq!(at(&conn, 15), Some(Expiry::Body));
    }

    #[test]
    fn at_the_budget_the_idlest_connection_makes_room_and_busy_ones_never_do() {
        let connections = Connections::new(LIMITS, &mut Metrics::new());
        let busy = connections.admit().unwrap();
        let _in_flight = busy.conn.request();
        let idle = connections.admit().unwrap();
        let third = connections.admit().expect("room made");
        assert_eq!(idle.conn.expired(), Some(Expiry::Evicted));
        assert_eq!(busy.conn.expired(), None);
        drop(idle);
        let _in_flight_too = third.conn.request();
        assert!(
            connections.admit().is_none(),
            "only busy ones left: refused"
        );
        assert_eq!(connections.open(), 2);
    }
}
