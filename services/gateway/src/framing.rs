//! Refusing requests whose framing is ambiguous, before the HTTP parser sees them.
//!
//! A request with both `Content-Length` and `Transfer-Encoding` is the classic
//! request-smuggling vector: two hops that frame it differently disagree on where the next
//! request starts. hyper follows RFC 9112 §6.3 (the transfer coding wins, the length is dropped,
//! the connection closes after the answer), which is safe, but it hides that the request was
//! ambiguous. The gateway refuses such requests outright with `400`, as it always has.
//!
//! [`Guarded`] wraps a client connection and follows its requests' framing as the bytes
//! arrive: each head (parsed with `httparse`, the parser hyper uses), then its body by length
//! or by chunks. When a head carries both headers, its last byte is replaced with one no HTTP
//! parser accepts, so hyper answers `400 Bad Request` and closes the connection. Anything it
//! cannot follow (a protocol upgrade, a head hyper will refuse anyway) ends the watch for that
//! connection.
//!
//! What it follows also tells the connection's time limits where the stream is (waiting for a
//! head, in one, in a body; [`crate::connections`]), and when the sweeper marks the connection
//! as past a limit, its next read ends it: with a `408` written first when a head was late.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connections::{Conn, Expiry, Phase, REQUEST_TIMEOUT};

/// Longest request head followed; hyper refuses longer ones (its read buffer is this size).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines followed; hyper refuses requests with more.
const MAX_HEADERS: usize = 100;

/// A connection whose requests' framing is watched.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    scanner: Scanner,
    conn: std::sync::Arc<Conn>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, conn: std::sync::Arc<Conn>) -> Self {
        Self {
            inner,
            scanner: Scanner::default(),
            conn,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    /// Ends the connection past a limit: a `408` first if a head was late (best effort: the
    /// client sent little, so the socket has room), then an error hyper closes it on.
    fn expire(&mut self, cx: &mut Context<'_>, expiry: Expiry) -> Poll<io::Result<()>> {
        if expiry == Expiry::Header {
            let _ = Pin::new(&mut self.inner).poll_write(cx, REQUEST_TIMEOUT);
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            expiry.reason(),
        )))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(expiry) = this.conn.expired() {
            return this.expire(cx, expiry);
        }
        let before = buf.filled().len();
        if Pin::new(&mut this.inner).poll_read(cx, buf)?.is_pending() {
            this.conn.waiting(cx.waker());
            // Marked between the check above and the waker's registration: no wake-up comes.
            if let Some(expiry) = this.conn.expired() {
                return this.expire(cx, expiry);
            }
            return Poll::Pending;
        }
        let read = &mut buf.filled_mut()[before..];
        if !read.is_empty() {
            this.scanner.feed(read);
            this.conn.progressed(this.scanner.phase());
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Where the byte stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    /// Body bytes left of a request framed by `Content-Length`.
    Length(u64),
    /// A chunk-size line; `ext` once past the size (an extension, or whitespace).
    ChunkSize {
        size: u64,
        digits: bool,
        ext: bool,
    },
    ChunkData(u64),
    /// The line end after a chunk's data.
    ChunkEnd,
    /// Trailer lines after the last chunk; `empty` while the current line has no byte yet.
    Trailers {
        empty: bool,
    },
    /// Not followed any more.
    Off,
}

/// How a head frames its body.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Both `Content-Length` and `Transfer-Encoding`.
    Ambiguous,
    /// Something hyper refuses or takes over from HTTP (an upgrade): stop following.
    Unfollowable,
}

#[derive(Debug)]
struct Scanner {
    state: State,
    /// A head that arrived over several reads, so far.
    head: Vec<u8>,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            state: State::Head,
            head: Vec::new(),
        }
    }
}

impl Scanner {
    /// Where the stream is now.
    fn phase(&self) -> Phase {
        match self.state {
            State::Head if self.head.is_empty() => Phase::Waiting,
            State::Head => Phase::Head,
            State::Off => Phase::Untracked,
            _ => Phase::Body,
        }
    }

    /// Follows `bytes` (just read); poisons an ambiguous head in place.
    fn feed(&mut self, bytes: &mut [u8]) {
        let mut at = 0;
        while at < bytes.len() {
            at = match self.state {
                State::Off => return,
                State::Head => self.head(bytes, at),
                State::Length(left) => {
                    let (taken, left) = skip(left, bytes.len() - at);
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Length(left)
                    };
                    at + taken
                }
                State::ChunkData(left) => {
                    let (taken, left) = skip(left, bytes.len() - at);
                    self.state = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    };
                    at + taken
                }
                State::ChunkSize { .. } | State::ChunkEnd | State::Trailers { .. } => {
                    self.chunk_byte(bytes[at]);
                    at + 1
                }
            };
        }
    }

    fn chunk_byte(&mut self, byte: u8) {
        self.state = match (self.state, byte) {
            (State::ChunkSize { size, digits, .. }, b'\n') if digits => {
                if size == 0 {
                    State::Trailers { empty: true }
                } else {
                    State::ChunkData(size)
                }
            }
            (
                State::ChunkSize {
                    size, ext: false, ..
                },
                byte,
            ) if byte.is_ascii_hexdigit() => {
                let digit = u64::from(char::from(byte).to_digit(16).unwrap_or(0));
                match size.checked_mul(16).and_then(|s| s.checked_add(digit)) {
                    Some(size) => State::ChunkSize {
                        size,
                        digits: true,
                        ext: false,
                    },
                    None => State::Off,
                }
            }
            (State::ChunkSize { size, digits, .. }, b'\r') => State::ChunkSize {
                size,
                digits,
                ext: true,
            },
            (State::ChunkSize { size, digits, .. }, _) if digits => State::ChunkSize {
                size,
                digits,
                ext: true,
            },
            (State::ChunkEnd, b'\r') => State::ChunkEnd,
            (State::ChunkEnd, b'\n') => State::ChunkSize {
                size: 0,
                digits: false,
                ext: false,
            },
            (State::Trailers { empty: true }, b'\n') => State::Head,
            (State::Trailers { .. }, b'\n') => State::Trailers { empty: true },
            (State::Trailers { empty }, b'\r') => State::Trailers { empty },
            (State::Trailers { .. }, _) => State::Trailers { empty: false },
            // hyper refuses the body too.
            _ => State::Off,
        };
    }

    /// Follows a head from `bytes[at..]`; returns where its body starts (or `bytes.len()`
    /// while the head is incomplete).
    fn head(&mut self, bytes: &mut [u8], at: usize) -> usize {
        let prior = self.head.len();
        let parsed = if prior == 0 {
            parse(&bytes[at..])
        } else {
            self.head.extend_from_slice(&bytes[at..]);
            parse(&self.head)
        };
        match parsed {
            Parsed::Partial => {
                if prior == 0 {
                    self.head.extend_from_slice(&bytes[at..]);
                }
                if self.head.len() > MAX_HEAD_BYTES {
                    self.off();
                }
                bytes.len()
            }
            Parsed::Invalid => {
                self.off();
                bytes.len()
            }
            Parsed::Complete(length, framing) => {
                let end = at + (length - prior);
                self.head.clear();
                self.state = match framing {
                    Framing::None | Framing::Length(0) => State::Head,
                    Framing::Length(n) => State::Length(n),
                    Framing::Chunked => State::ChunkSize {
                        size: 0,
                        digits: false,
                        ext: false,
                    },
                    Framing::Ambiguous => {
                        // The head's last byte is its final line feed: a NUL there is a
                        // parse error for hyper, which answers 400 and closes.
                        bytes[end - 1] = 0;
                        State::Off
                    }
                    Framing::Unfollowable => State::Off,
                };
                end
            }
        }
    }

    fn off(&mut self) {
        self.state = State::Off;
        self.head = Vec::new();
    }
}

/// `(bytes taken, left after)` of a body part of `left` bytes from `available` bytes.
fn skip(left: u64, available: usize) -> (usize, u64) {
    let available_u64 = u64::try_from(available).unwrap_or(u64::MAX);
    let taken = left.min(available_u64);
    (usize::try_from(taken).unwrap_or(available), left - taken)
}

enum Parsed {
    Partial,
    Invalid,
    /// The head's length and how it frames its body.
    Complete(usize, Framing),
}

fn parse(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Invalid,
        Ok(httparse::Status::Complete(length)) => Parsed::Complete(length, framing(&request)),
    }
}

fn framing(request: &httparse::Request<'_, '_>) -> Framing {
    if request.method == Some("CONNECT") {
        return Framing::Unfollowable;
    }
    let (mut lengths, mut coding, mut upgrade) = (Vec::new(), None, false);
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            lengths.push(header.value);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            coding = Some(header.value);
        } else if header.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if upgrade {
        return Framing::Unfollowable;
    }
    match (lengths.first(), coding) {
        (Some(_), Some(_)) => Framing::Ambiguous,
        (None, Some(coding)) => {
            let last = coding.rsplit(|b| *b == b',').next().unwrap_or_default();
            if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                Framing::Chunked
            } else {
                Framing::Unfollowable
            }
        }
        (Some(first), None) => {
            let length = std::str::from_utf8(first)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            match length {
                Some(n) if lengths.iter().all(|v| *v == *first) => Framing::Length(n),
                _ => Framing::Unfollowable,
            }
        }
        (None, None) => Framing::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in pieces of `size` bytes; returns what the parser would see.
    fn feed_in_pieces(stream: &[u8], size: usize) -> Vec<u8> {
        let mut scanner = Scanner::default();
        let mut seen = Vec::new();
        for piece in stream.chunks(size) {
            let mut piece = piece.to_vec();
            scanner.feed(&mut piece);
            seen.extend_from_slice(&piece);
        }
        seen
    }

    const AMBIGUOUS_CL_FIRST: &[u8] = b"POST /a HTTP/1.1\r\nHost: g\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    const AMBIGUOUS_TE_FIRST: &[u8] = b"POST /a HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n";

    fn poisoned(seen: &[u8]) -> bool {
        seen.windows(4).any(|w| w == b"\r\n\r\0")
    }

    #[test]
    fn an_ambiguous_head_is_poisoned_in_either_order_and_any_split() {
        for stream in [AMBIGUOUS_CL_FIRST, AMBIGUOUS_TE_FIRST] {
            for size in [1, 2, 3, 7, 64, 4096] {
                let seen = feed_in_pieces(stream, size);
                assert!(poisoned(&seen), "piece size {size}");
                let mut headers = [httparse::EMPTY_HEADER; 8];
                assert!(
                    httparse::Request::new(&mut headers).parse(&seen).is_err(),
                    "the parser refuses it"
                );
            }
        }
    }

    #[test]
    fn an_ambiguous_request_behind_framed_ones_on_the_same_connection_is_caught() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: g\r\n\r\n");
        stream.extend_from_slice(b"POST /y HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\n\r\nhello");
        // Chunk data that looks like a head must not be taken for one.
        stream.extend_from_slice(b"POST /z HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n1c;ext=1\r\nGET /w HTTP/1.1\r\nHost: g\r\n\r\n\r\n0\r\nx-trailer: 1\r\n\r\n");
        let clean = stream.clone();
        stream.extend_from_slice(AMBIGUOUS_TE_FIRST);
        for size in [1, 5, 13, 4096] {
            let seen = feed_in_pieces(&stream, size);
            assert_eq!(&seen[..clean.len()], clean.as_slice(), "piece size {size}");
            assert!(poisoned(&seen[clean.len()..]), "piece size {size}");
        }
    }

    #[test]
    fn well_framed_requests_pass_untouched() {
        let mut stream = Vec::new();
        for _ in 0..3 {
            stream.extend_from_slice(
                b"PUT /p HTTP/1.1\r\nHost: g\r\nContent-Length: 20\r\n\r\nTransfer-Encoding: x",
            );
        }
        for size in [1, 9, 4096] {
            assert_eq!(feed_in_pieces(&stream, size), stream);
        }
    }
}
