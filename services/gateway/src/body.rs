//! The client's request body on its way upstream: buffered (for requests that may be retried)
//! or streamed, cut at `MAX_BODY_BYTES` either way.
//!
//! A body refused for its size is answered `413` before the client has finished sending it.
//! Closing the connection at once would reset it with the client's bytes unread, and a client
//! still writing would see a broken pipe instead of the answer; so the rest is read and thrown
//! away first, up to [`DRAIN_MAX_BYTES`] and [`DRAIN_MAX_TIME`] (a "lingering close").

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use actix_web::http::StatusCode as ProblemStatus;
use dockyard_runtime::problem::Problem;
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

/// How much of a refused body is read and thrown away before the answer.
pub const DRAIN_MAX_BYTES: usize = 1024 * 1024;
/// How long that may take.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(1);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Set by a streamed body when the *client* is at fault: it sent more than the limit, or its
/// body could not be read. A failed attempt is then the client's, not the upstream's.
#[derive(Debug, Default)]
pub struct ClientFault {
    over_limit: AtomicBool,
    unreadable: AtomicBool,
    /// The body stalled past `BODY_TIMEOUT` ([`crate::connections`]).
    stalled: AtomicBool,
    /// The rest of a body cut at the limit, to be drained before the answer.
    rest: Mutex<Option<Incoming>>,
}

impl ClientFault {
    /// The client's problem, if the body failed the attempt; drains what is left of it first.
    pub async fn problem(&self, limit: usize) -> Option<Problem> {
        if self.over_limit.load(Ordering::Acquire) {
            let rest = self.rest.lock().expect("the lock is never poisoned").take();
            if let Some(rest) = rest {
                drain(rest).await;
            }
            Some(too_large(limit))
        } else if self.stalled.load(Ordering::Acquire) {
            Some(stalled())
        } else if self.unreadable.load(Ordering::Acquire) {
            Some(Problem::bad_request("the request body could not be read"))
        } else {
            None
        }
    }
}

/// `408`: the client stopped sending its body for longer than `BODY_TIMEOUT`.
fn stalled() -> Problem {
    Problem::new(ProblemStatus::REQUEST_TIMEOUT)
        .detail("the request body stalled: no byte came for longer than the body time-out")
}

/// Whether reading the body failed because the connection's body time-out cut it.
fn timed_out(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The problem of a body that could not be read: `408` if it stalled, else `400`.
fn unreadable(error: &hyper::Error) -> Problem {
    if timed_out(error) {
        stalled()
    } else {
        Problem::bad_request(format!("could not read the body: {error}"))
    }
}

pub fn too_large(limit: usize) -> Problem {
    Problem::new(ProblemStatus::PAYLOAD_TOO_LARGE)
        .detail(format!("the request body is larger than {limit} bytes"))
}

/// Reads and discards what is left of a refused body, within the drain bounds.
pub async fn drain(mut body: Incoming) {
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, async {
        let mut read = 0;
        while read <= DRAIN_MAX_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
}

/// The whole body, for a request that may be sent more than once; `413` past `limit`.
pub async fn buffer(mut body: Incoming, limit: usize) -> Result<Bytes, Problem> {
    let mut buffered = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| unreadable(&e))?;
        if let Some(data) = frame.data_ref() {
            if buffered.len() + data.len() > limit {
                drain(body).await;
                return Err(too_large(limit));
            }
            buffered.extend_from_slice(data);
        }
    }
    Ok(Bytes::from(buffered))
}

/// The body streamed upstream as it arrives, cut at `limit`; `fault` records why it was cut.
pub fn stream(body: Incoming, limit: usize, fault: Arc<ClientFault>) -> Capped {
    Capped {
        inner: Some(body),
        seen: 0,
        limit,
        fault,
    }
}

/// A request body for the upstream: buffered (sent again on a retry) or streamed.
pub type Outgoing = http_body_util::Either<http_body_util::Full<Bytes>, Capped>;

#[derive(Debug, thiserror::Error)]
#[error("the request body is over the limit")]
struct OverLimit;

/// [`stream`]'s body.
#[derive(Debug)]
pub struct Capped {
    inner: Option<Incoming>,
    seen: usize,
    limit: usize,
    fault: Arc<ClientFault>,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                this.seen += frame.data_ref().map_or(0, Bytes::len);
                if this.seen > this.limit {
                    this.fault.over_limit.store(true, Ordering::Release);
                    *this.fault.rest.lock().expect("the lock is never poisoned") =
                        this.inner.take();
                    return Poll::Ready(Some(Err(Box::new(OverLimit))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                if timed_out(&error) {
                    this.fault.stalled.store(true, Ordering::Release);
                }
                this.fault.unreadable.store(true, Ordering::Release);
                Poll::Ready(Some(Err(Box::new(error))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
