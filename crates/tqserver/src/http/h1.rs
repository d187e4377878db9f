//! HTTP/1.1 on one client connection: read a request head, hand the request
//! to the service, write the response, repeat while the connection is kept
//! alive.
//!
//! Why not hyper here: an idle keep-alive connection in hyper keeps 16 KiB of
//! buffers (read buffer and header buffer) for its whole life, which puts
//! 10,000 idle connections at 160 MB. Here buffers exist only while bytes
//! are in them, and the service future is boxed only while a request runs,
//! so an idle connection costs its socket and a small task. (The admin
//! endpoint, with its handful of connections, still uses hyper.)
//!
//! Parsing is httparse's. The rules that keep requests unambiguous between
//! tqserver and anything in front of it: a body is delimited by
//! Content-Length or by chunked Transfer-Encoding, never both; several
//! different Content-Lengths, other transfer codings, or chunked on HTTP/1.0
//! are refused; HTTP/1.1 requests must have exactly one Host.
//!
//! Timeouts: `idle_timeout` while waiting for the first byte of the next
//! request, `read_timeout` from that byte to the end of the head (slowloris)
//! and for any stall in a body, `write_timeout` for any stall in a write.
//!
//! A connection is a state machine ([`State`]), each state owning the read
//! side (which a request body borrows while the service reads it):
//!
//! ```text
//! Idle ─► ReadingHead ─► Serving ─► Writing ─┬─► Idle (kept alive)
//!  │           │            │                └─► Closing ─► LingeringClose ─► Closed
//!  │           └────────────┴─► Refusing (an error of our own) ─► LingeringClose
//!  └─► Closed (idle timeout, stop, client gone)
//! ```
//!
//! A `101 Switching Protocols` response that carries an [`Upgrade`]
//! extension (a proxied WebSocket) is written as it is, and the connection
//! is then handed, with any bytes already read, to the extension's holder
//! ([`Upgraded`]): this task ends there.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::header;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::body::Body;
use ::h1::head::{
    Framing, Head, HeadLimits, check_authority, expects_continue, framing, parse_head,
    wants_keep_alive,
};

use super::body_reader::{BodyLimits, ConnReader, Remaining, RequestBody};
use super::service::{self, Frontend};
use super::stream::{Stream, WriteHalf};

/// Unread request body discarded to keep a connection alive; beyond this
/// the connection is closed instead.
const MAX_DISCARD: u64 = 256 * 1024;

/// Where a connection is. Each state owns the connection's read side; the
/// write side stays with the [`Connection`] throughout.
enum State {
    /// Keep-alive idle: no byte of the next request here yet. Waits `wait`
    /// for one (`read_timeout` on a new connection, `idle_timeout` between
    /// requests) without a read buffer, so an idle connection holds no
    /// memory for reading; a stop closes it.
    Idle {
        reader: Box<ConnReader>,
        wait: Duration,
    },
    /// A request has begun: its head must be complete within `read_timeout`.
    ReadingHead {
        reader: Box<ConnReader>,
    },
    /// A head is here: checked, then run by the service.
    Serving {
        reader: Box<ConnReader>,
        head: Head,
    },
    /// The response goes out (with what is left of a small unread body read
    /// and dropped at the same time).
    Writing(Writing),
    /// A request broke a rule: an error response of our own, then a
    /// lingering close.
    Refusing {
        reader: Box<ConnReader>,
        status: StatusCode,
        version: Version,
    },
    /// The last response is out. If the client may still be sending (more
    /// pipelined requests, a body nobody read), lingering follows: closing a
    /// socket with unread input makes the kernel send a reset, which
    /// destroys whatever of the response the client had not yet received.
    /// Otherwise a FIN, and done.
    Closing {
        reader: Box<ConnReader>,
    },
    /// The FIN is out and input is read and dropped until the client closes
    /// (nginx's `lingering_close`).
    LingeringClose {
        reader: Box<ConnReader>,
    },
    /// A 101 to a request that asked for an upgrade: its head goes out,
    /// then the connection belongs to the upgrade.
    Upgrading {
        reader: Box<ConnReader>,
        response: Response<Body>,
        upgrade: Upgrade,
    },
    Closed,
}

/// A response extension: after this 101 response's head is written, the
/// client's connection (and what was read of it beyond the request) goes
/// to the receiver.
/// (Extensions are `Clone`: the sender sits in a shared slot.)
#[derive(Clone)]
pub struct Upgrade(Arc<std::sync::Mutex<Option<oneshot::Sender<Upgraded>>>>);

impl Upgrade {
    pub fn new(to: oneshot::Sender<Upgraded>) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(to))))
    }

    fn hand_over(&self, upgraded: Upgraded) {
        if let Some(to) = self.0.lock().ok().and_then(|mut slot| slot.take()) {
            let _ = to.send(upgraded);
        }
    }
}

/// A client connection after a 101: bytes both ways, no HTTP.
pub struct Upgraded {
    reader: Box<ConnReader>,
    writer: Writer,
}

impl Upgraded {
    pub fn into_split(self) -> (UpgradedReader, UpgradedWriter) {
        (
            UpgradedReader {
                reader: self.reader,
            },
            UpgradedWriter {
                writer: self.writer,
            },
        )
    }
}

pub struct UpgradedReader {
    reader: Box<ConnReader>,
}

impl UpgradedReader {
    /// The next bytes from the client (first those already read); `None`
    /// when it has closed.
    pub async fn read(&mut self) -> io::Result<Option<bytes::Bytes>> {
        if self.reader.buf.is_empty() && self.reader.fill().await? == 0 {
            return Ok(None);
        }
        Ok(Some(self.reader.buf.split().freeze()))
    }
}

pub struct UpgradedWriter {
    writer: Writer,
}

impl UpgradedWriter {
    /// Writes all of `bytes` (each stall bounded by `write_timeout`).
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write(bytes).await
    }

    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.writer.shutdown().await
    }
}

/// A response on its way out.
struct Writing {
    reader: Box<ConnReader>,
    response: Response<Body>,
    version: Version,
    is_head: bool,
    keep_alive: bool,
    /// Bytes of request body the service left unread, read and dropped
    /// while the response goes out.
    discard: u64,
}

/// Who holds the connection's reader while the service runs a request.
enum ReaderHolder {
    /// No request body: the connection, which watches the client so that a
    /// client that goes away cancels its request (and frees its worker).
    Connection(Box<ConnReader>),
    /// The request body, which sends it back (with what it left unread)
    /// when it is done or dropped.
    Body(oneshot::Receiver<(Box<ConnReader>, Remaining)>),
}

/// One client connection: what stays the same from state to state.
struct Connection {
    writer: Writer,
    peer: SocketAddr,
    local: SocketAddr,
    front: Arc<Frontend>,
    shutdown: CancellationToken,
    /// Set on each request that came over TLS.
    tls: Option<super::Tls>,
    /// Requests served, for [`FAIR_SHARE`].
    served: u64,
}

/// Serves one client connection, over plain TCP or TLS, until it closes,
/// state by state.
pub async fn serve_connection(
    stream: Stream,
    peer: SocketAddr,
    local: SocketAddr,
    front: Arc<Frontend>,
    shutdown: CancellationToken,
) {
    let tls = stream.tls();
    let (read, write) = stream.into_split();
    let mut state = State::Idle {
        reader: Box::new(ConnReader::new(read)),
        wait: front.settings.read_timeout,
    };
    let mut conn = Connection {
        writer: Writer {
            half: write,
            buf: BytesMut::new(),
            timeout: front.settings.write_timeout,
        },
        peer,
        local,
        front,
        shutdown,
        tls,
        served: 0,
    };
    loop {
        state = match state {
            State::Idle { reader, wait } => conn.idle(reader, wait).await,
            State::ReadingHead { reader } => conn.read_head(reader).await,
            // Boxed: a connection's future is as large as its largest
            // state, and these two (over 3 KB together) would sit in every
            // idle connection. One allocation per request instead.
            State::Serving { reader, head } => Box::pin(conn.serve(reader, head)).await,
            State::Writing(writing) => Box::pin(conn.write(writing)).await,
            State::Refusing {
                reader,
                status,
                version,
            } => match conn.writer.simple(status, version).await {
                Ok(()) => State::LingeringClose { reader },
                Err(_) => State::Closed,
            },
            State::Closing { mut reader } => {
                // Bytes already here or arriving; a client that already
                // closed (EOF) or reset has nothing left to send.
                let more_input =
                    !reader.buf.is_empty() || matches!(reader.try_fill(), Ok(read) if read > 0);
                if more_input {
                    State::LingeringClose { reader }
                } else {
                    let _ = conn.writer.shutdown().await;
                    State::Closed
                }
            }
            State::LingeringClose { mut reader } => {
                linger(&mut reader, &mut conn.writer).await;
                State::Closed
            }
            State::Upgrading {
                reader,
                response,
                upgrade,
            } => {
                if conn.writer.switching(&response).await.is_ok() {
                    upgrade.hand_over(Upgraded {
                        reader,
                        writer: conn.writer,
                    });
                }
                return;
            }
            State::Closed => return,
        };
    }
}

impl Connection {
    /// Waits for the first byte of a request (unless a pipelined one is
    /// already here).
    async fn idle(&mut self, mut reader: Box<ConnReader>, wait: Duration) -> State {
        while reader.buf.is_empty() {
            tokio::select! {
                _ = self.shutdown.cancelled() => return State::Closed,
                readable = tokio::time::timeout(wait, reader.readable()) => match readable {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => return State::Closed,
                }
            }
            match reader.try_fill() {
                Ok(0) => return State::Closed,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return State::Closed,
            }
        }
        State::ReadingHead { reader }
    }

    async fn read_head(&mut self, mut reader: Box<ConnReader>) -> State {
        let settings = &self.front.settings;
        let limits = HeadLimits {
            max_bytes: settings.max_header_bytes,
            max_headers: settings.max_headers,
        };
        let deadline = tokio::time::Instant::now() + settings.read_timeout;
        let status = loop {
            match parse_head(&mut reader.buf, limits) {
                Ok(Some(head)) => return State::Serving { reader, head },
                Ok(None) => match tokio::time::timeout_at(deadline, reader.fill()).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return State::Closed,
                    Ok(Ok(_)) => {}
                    Err(_) => {
                        break (
                            StatusCode::REQUEST_TIMEOUT,
                            "request head not received in time",
                        );
                    }
                },
                Err(error) => break error.status(),
            }
        };
        let (status, why) = status;
        info!(peer = %self.peer, status = status.as_u16(), "refusing request: {why}");
        State::Refusing {
            reader,
            status,
            version: Version::HTTP_11,
        }
    }

    /// Checks the head, then runs the request through the service; the
    /// response is next.
    async fn serve(&mut self, reader: Box<ConnReader>, mut head: Head) -> State {
        let peer = self.peer;
        let settings = &self.front.settings;
        if let Err(why) = check_authority(&mut head) {
            info!(%peer, status = 400, uri = %head.uri, "refusing request: {why}");
            return State::Refusing {
                reader,
                status: StatusCode::BAD_REQUEST,
                version: head.version,
            };
        }
        let framing = match framing(&head) {
            Ok(framing) => framing,
            Err((status, why)) => {
                info!(%peer, status = status.as_u16(), uri = %head.uri, "refusing request: {why}");
                return State::Refusing {
                    reader,
                    status,
                    version: head.version,
                };
            }
        };
        let mut keep_alive = wants_keep_alive(&head) && !self.shutdown.is_cancelled();
        let version = head.version;
        let is_head = head.method == Method::HEAD;

        // The body, if any, takes the reader with it while the request runs.
        let (body, holder) = match framing {
            Framing::None | Framing::Length(0) => {
                (RequestBody::empty(), ReaderHolder::Connection(reader))
            }
            _ => {
                if let Framing::Length(length) = framing
                    && length > settings.max_body_bytes
                {
                    // Refused before the client sends it (no 100 Continue);
                    // a client that sends it anyway still gets the 413.
                    return State::Refusing {
                        reader,
                        status: StatusCode::PAYLOAD_TOO_LARGE,
                        version,
                    };
                }
                // `100 Continue` goes out when the body is first read.
                let limits = BodyLimits {
                    read_timeout: settings.read_timeout,
                    max_bytes: settings.max_body_bytes,
                    expect_continue: expects_continue(&head),
                };
                let (body, back) = RequestBody::new(reader, framing, limits);
                (body, ReaderHolder::Body(back))
            }
        };
        let mut request = Request::new(body);
        *request.method_mut() = head.method;
        *request.uri_mut() = head.uri;
        *request.version_mut() = version;
        *request.headers_mut() = head.headers;
        if let Some(tls) = &self.tls {
            request.extensions_mut().insert(tls.clone());
        }

        // 103 Early Hints from PHP go out while the request runs; HTTP/1.0
        // has no interim responses.
        let hints = (version == Version::HTTP_11).then(|| {
            let (sender, hints) = tokio::sync::mpsc::channel(EARLY_HINTS_QUEUE);
            request.extensions_mut().insert(super::Interim(sender));
            hints
        });
        let service = Box::pin(service::handle(
            self.front.clone(),
            request,
            peer,
            self.local,
        ));
        let service = Box::pin(with_early_hints(service, hints, &mut self.writer));
        let (reader, response, remaining) = match holder {
            ReaderHolder::Connection(mut reader) => {
                match watch_client(&mut reader, service, settings.max_header_bytes).await {
                    Some(response) => (reader, response, Remaining::Nothing),
                    None => return State::Closed,
                }
            }
            ReaderHolder::Body(back) => {
                let response = service.await;
                let Ok((reader, remaining)) = back.await else {
                    return State::Closed;
                };
                (reader, response, remaining)
            }
        };
        // What the service left of the body is read and dropped after the
        // response (a client may wait for the answer before it sends more),
        // if it is small enough; otherwise the connection closes.
        let discard = match remaining {
            Remaining::Nothing => 0,
            Remaining::Bytes(left) if left <= MAX_DISCARD => left,
            // Half an interim response went out: nothing can follow it.
            Remaining::Garbled => return State::Closed,
            Remaining::Bytes(_)
            | Remaining::Chunked
            | Remaining::NotInvited
            | Remaining::Broken => {
                keep_alive = false;
                0
            }
        };
        if self.shutdown.is_cancelled() || self.front.draining.is_cancelled() {
            keep_alive = false;
        }
        State::Writing(Writing {
            reader,
            response,
            version,
            is_head,
            keep_alive,
            discard,
        })
    }

    /// Writes a response; then the connection is idle again, or closes.
    async fn write(&mut self, writing: Writing) -> State {
        let Writing {
            mut reader,
            mut response,
            version,
            is_head,
            keep_alive,
            discard: left,
        } = writing;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && version == Version::HTTP_11
            && let Some(upgrade) = response.extensions_mut().remove::<Upgrade>()
        {
            return State::Upgrading {
                reader,
                response,
                upgrade,
            };
        }
        // A small unread body is read and dropped while the response goes
        // out, not before (a client may wait for the answer before it sends
        // more) and not after (one that sends it all first would block on
        // its write while tqserver blocks on its own).
        let written = if keep_alive && left > 0 {
            let (written, discarded) = tokio::join!(
                self.writer.response(response, version, is_head, keep_alive),
                discard(&mut reader, left, self.front.settings.read_timeout)
            );
            written.map(|again| again && discarded.is_ok())
        } else {
            self.writer
                .response(response, version, is_head, keep_alive)
                .await
        };
        match written {
            Ok(true) if keep_alive => {}
            Ok(_) => return State::Closing { reader },
            Err(_) => return State::Closed,
        }
        reader.shrink();
        self.writer.shrink();
        // A client that sends its next request the moment it has the
        // response (a load generator, a pipelining proxy) would keep this
        // task running, and the other connections on this thread waiting:
        // step aside now and then so every connection gets its turn.
        self.served += 1;
        if self.served % FAIR_SHARE == 0 {
            tokio::task::yield_now().await;
        }
        State::Idle {
            reader,
            wait: self.front.settings.idle_timeout,
        }
    }
}

/// Requests a connection serves back to back before letting the others on
/// its thread go first. Socket reads and writes that succeed at once never
/// yield on their own; without this, p99 latency of a saturated server rose
/// from about 1.5 ms to 10-25 ms (bench, 10 KB static file at c=20).
const FAIR_SHARE: u64 = 16;

/// Longest time spent draining a client's input after a closing response
/// (nginx's `lingering_time`).
const LINGER_TIME: Duration = Duration::from_secs(30);
/// Longest wait for more input while lingering (nginx's `lingering_timeout`).
const LINGER_IDLE: Duration = Duration::from_secs(5);

/// The FIN, then input read and dropped until the client closes, goes quiet
/// for [`LINGER_IDLE`], or [`LINGER_TIME`] has passed.
async fn linger(reader: &mut ConnReader, writer: &mut Writer) {
    if writer.shutdown().await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    loop {
        reader.buf.clear();
        let wait = deadline.min(tokio::time::Instant::now() + LINGER_IDLE);
        match tokio::time::timeout_at(wait, reader.fill()).await {
            Ok(Ok(read)) if read > 0 => {}
            _ => return,
        }
    }
}

/// Early Hints a request may have waiting to go out; more are dropped.
const EARLY_HINTS_QUEUE: usize = 4;

/// Runs the service, writing each Early Hints response it sends before the
/// final response is ready. A write that fails is left to the final
/// response's write to notice.
async fn with_early_hints(
    mut service: std::pin::Pin<Box<impl Future<Output = Response<Body>>>>,
    hints: Option<tokio::sync::mpsc::Receiver<http::HeaderMap>>,
    writer: &mut Writer,
) -> Response<Body> {
    let Some(mut hints) = hints else {
        return service.await;
    };
    loop {
        tokio::select! {
            biased;
            response = &mut service => return response,
            Some(links) = hints.recv() => {
                let _ = writer.early_hints(&links).await;
            }
        }
    }
}

/// Runs the service while watching the client; `None` if the client left.
async fn watch_client(
    reader: &mut ConnReader,
    mut service: std::pin::Pin<Box<impl Future<Output = Response<Body>>>>,
    max_buffered: usize,
) -> Option<Response<Body>> {
    loop {
        tokio::select! {
            biased;
            response = &mut service => return Some(response),
            readable = reader.readable(), if reader.buf.len() < max_buffered => {
                if readable.is_err() {
                    return None;
                }
                match reader.try_fill() {
                    Ok(0) => return None,
                    // A pipelined request: kept for later.
                    Ok(_) => {}
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return None,
                }
            }
        }
    }
}

async fn discard(reader: &mut ConnReader, mut left: u64, timeout: Duration) -> io::Result<()> {
    while left > 0 {
        if reader.buf.is_empty()
            && tokio::time::timeout(timeout, reader.fill())
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??
                == 0
        {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let take = (reader.buf.len() as u64).min(left) as usize;
        let _ = reader.buf.split_to(take);
        left -= take as u64;
    }
    Ok(())
}

/// The writing side of a connection.
struct Writer {
    half: WriteHalf,
    buf: BytesMut,
    timeout: Duration,
}

impl Writer {
    async fn shutdown(&mut self) -> io::Result<()> {
        self.half.shutdown(self.timeout).await
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        write_two(&self.half, self.timeout, bytes, &[]).await
    }

    /// Sends the buffered head, then `body`, in one system call when the
    /// socket takes them (no copy of the body into the buffer).
    async fn flush_buf_with(&mut self, body: &[u8]) -> io::Result<()> {
        let result = write_two(&self.half, self.timeout, &self.buf, body).await;
        self.buf.clear();
        result
    }

    async fn flush_buf(&mut self) -> io::Result<()> {
        self.flush_buf_with(&[]).await
    }

    /// `HTTP/1.1 103 Early Hints` with `links`.
    async fn early_hints(&mut self, links: &http::HeaderMap) -> io::Result<()> {
        self.interim(b"HTTP/1.1 103 Early Hints\r\n", links).await
    }

    /// An interim head (a 1xx): its status line, then every header as it is.
    async fn interim(&mut self, status_line: &[u8], headers: &http::HeaderMap) -> io::Result<()> {
        self.buf.extend_from_slice(status_line);
        for (name, value) in headers {
            self.buf.extend_from_slice(name.as_str().as_bytes());
            self.buf.extend_from_slice(b": ");
            self.buf.extend_from_slice(value.as_bytes());
            self.buf.extend_from_slice(b"\r\n");
        }
        self.buf.extend_from_slice(b"\r\n");
        self.flush_buf().await
    }

    fn shrink(&mut self) {
        if self.buf.capacity() > 16 * 1024 || self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// A 101's head, every header as it is (Connection and Upgrade
    /// included).
    async fn switching(&mut self, response: &Response<Body>) -> io::Result<()> {
        self.interim(b"HTTP/1.1 101 Switching Protocols\r\n", response.headers())
            .await
    }

    /// An error page of our own, then the connection closes.
    async fn simple(&mut self, status: StatusCode, version: Version) -> io::Result<()> {
        let response = super::errors::status(status);
        self.response(response, version, false, false)
            .await
            .map(|_| ())
    }

    /// Writes a response. `Ok(true)` if the connection can carry another
    /// request afterwards.
    async fn response(
        &mut self,
        response: Response<Body>,
        version: Version,
        is_head: bool,
        keep_alive: bool,
    ) -> io::Result<bool> {
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let no_body = is_head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        // A streamed body of unknown length is chunked on HTTP/1.1; on
        // HTTP/1.0 the end of the connection marks its end.
        let length = super::body::declared_length(&parts, &body, is_head);
        let chunked = length.is_none() && !no_body && version == Version::HTTP_11;
        let keep_alive = keep_alive && (length.is_some() || chunked || no_body);

        let buf = &mut self.buf;
        // One allocation for the whole head.
        let fields: usize = parts
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        buf.reserve(160 + fields);
        buf.extend_from_slice(match version {
            Version::HTTP_10 => b"HTTP/1.0 ",
            _ => b"HTTP/1.1 ",
        });
        buf.extend_from_slice(status.as_str().as_bytes());
        buf.extend_from_slice(b" ");
        buf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        buf.extend_from_slice(b"\r\n");
        for (name, value) in &parts.headers {
            if name == header::CONTENT_LENGTH
                || name == header::TRANSFER_ENCODING
                || name == header::CONNECTION
            {
                continue;
            }
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        if !parts.headers.contains_key(header::DATE) {
            buf.extend_from_slice(b"date: ");
            date::append(buf);
            buf.extend_from_slice(b"\r\n");
        }
        if let Some(length) = length {
            if !(status == StatusCode::NOT_MODIFIED
                || status.is_informational()
                || status == StatusCode::NO_CONTENT)
            {
                buf.extend_from_slice(b"content-length: ");
                buf.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
                buf.extend_from_slice(b"\r\n");
            }
        } else if chunked {
            buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if !keep_alive {
            buf.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            buf.extend_from_slice(b"connection: keep-alive\r\n");
        }
        buf.extend_from_slice(b"\r\n");

        if no_body {
            self.flush_buf().await?;
            return Ok(keep_alive);
        }
        // A body already in memory goes out with the head in one write.
        if let super::body::Body::Bytes(Some(bytes)) = &mut body {
            let bytes = std::mem::take(bytes);
            self.flush_buf_with(&bytes).await?;
            return Ok(keep_alive);
        }
        // The head waits in the buffer for the body's first piece when that
        // is already there (a proxied response's usually is): one write for
        // both. Otherwise the head goes out alone, at once.
        let mut first = std::future::poll_fn(|cx| {
            use http_body::Body as _;
            std::task::Poll::Ready(match std::pin::Pin::new(&mut body).poll_frame(cx) {
                std::task::Poll::Ready(frame) => Some(frame),
                std::task::Poll::Pending => None,
            })
        })
        .await;
        let mut sent = 0u64;
        loop {
            let frame = match first.take() {
                Some(frame) => frame,
                None => {
                    // Nothing more at hand (or only an empty piece): the
                    // head waits no longer.
                    if !self.buf.is_empty() {
                        self.flush_buf().await?;
                    }
                    body.frame().await
                }
            };
            let Some(frame) = frame else {
                break;
            };
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            if let Some(length) = length
                && sent > length
            {
                // More than the declared length: the framing would break.
                return Ok(false);
            }
            // Behind the head, while that is still in the buffer.
            if chunked {
                let mut size = [0u8; 18];
                let line = chunk_size_line(&mut size, data.len());
                self.buf.extend_from_slice(line);
                self.buf.extend_from_slice(&data);
                self.buf.extend_from_slice(b"\r\n");
                let result = write_body(&self.half, self.timeout, &self.buf, &[], &mut body).await;
                self.buf.clear();
                result?;
            } else {
                let result =
                    write_body(&self.half, self.timeout, &self.buf, &data, &mut body).await;
                self.buf.clear();
                result?;
            }
        }
        if chunked {
            self.buf.extend_from_slice(b"0\r\n\r\n");
        }
        if !self.buf.is_empty() {
            self.flush_buf().await?;
        }
        Ok(keep_alive && length.is_none_or(|length| sent == length))
    }
}

/// Writes `first` then `second` to the socket. The common case, a socket
/// that takes everything at once, costs one `writev` and no timer; otherwise
/// each wait for the client to take more is bounded by `timeout`.
async fn write_two(
    half: &WriteHalf,
    timeout: Duration,
    mut first: &[u8],
    mut second: &[u8],
) -> io::Result<()> {
    if try_write_two(half, &mut first, &mut second)? {
        return Ok(());
    }
    // Boxed: waiting is the rare case, and its timer would otherwise make
    // every connection's future larger, idle or not.
    Box::pin(async move {
        loop {
            tokio::time::timeout(timeout, half.writable())
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            if try_write_two(half, &mut first, &mut second)? {
                return Ok(());
            }
        }
    })
    .await
}

/// Writes a piece of a streamed body (`bytes`, after `head` when that is
/// still to go). If the socket does not take it all at once the client is
/// slower than the body's source: the body is told (a PHP response then
/// frees its worker, see `Body::spill`) before the write waits for the
/// client.
async fn write_body(
    half: &WriteHalf,
    timeout: Duration,
    mut head: &[u8],
    mut bytes: &[u8],
    body: &mut Body,
) -> io::Result<()> {
    if try_write_two(half, &mut head, &mut bytes)? {
        return Ok(());
    }
    body.spill();
    write_two(half, timeout, head, bytes).await
}

/// Writes what the stream takes without waiting, advancing both slices;
/// `Ok(true)` once all is out (over TLS, out of rustls too).
fn try_write_two(half: &WriteHalf, first: &mut &[u8], second: &mut &[u8]) -> io::Result<bool> {
    while !first.is_empty() || !second.is_empty() {
        let slices = [io::IoSlice::new(first), io::IoSlice::new(second)];
        let mut written = match half.try_write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => written,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(err) => return Err(err),
        };
        let from_first = written.min(first.len());
        *first = &first[from_first..];
        written -= from_first;
        *second = &second[written.min(second.len())..];
    }
    half.try_flush()
}

fn chunk_size_line(buf: &mut [u8; 18], size: usize) -> &[u8] {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{size:x}\r\n");
    let end = cursor.position() as usize;
    &buf[..end]
}

/// The Date header, formatted once a second.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }

    pub fn append(buf: &mut bytes::BytesMut) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.0 != second {
                let text = httpdate::fmt_http_date(now);
                cache.1.copy_from_slice(&text.as_bytes()[..29]);
                cache.0 = second;
            }
            buf.extend_from_slice(&cache.1);
        });
    }
}
