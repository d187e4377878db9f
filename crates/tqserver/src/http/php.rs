//! Runs a script: takes a worker from the app's pool, writes the FastCGI
//! request into its kept-alive connection, and turns the CGI response into an
//! HTTP response whose body streams from the worker.
//!
//! One deadline (the pool's `request_timeout`) covers the whole exchange: a
//! request past it gets 504 and its worker is killed and replaced. A request
//! whose first write fails (a worker that died while idle) is retried once on
//! another worker: no byte of it reached PHP.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::body_reader::RequestBody;
use bytes::{Bytes, BytesMut};
use fastcgi::client::{REQUEST_ID, ResponseEvent};
use fastcgi::record::{RecordType, Role, put_begin_request, put_stream, put_stream_end};
use http::request::Parts;
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use pool::{KillReason, Lease, RequestInfo};
use tokio::time::{Instant, Sleep};
use tracing::error;

use super::body::Body;
use super::cgi_params::{self, CgiRequest};
use super::errors;
use super::resolve::Script;
use super::response_buffer::{self, SpoolReader};
use crate::app::App;
use crate::config::ResponseBuffer;
use crate::metrics::BufferMetrics;
use crate::observe::Observation;
use crate::php::response_head::{CgiHead, HeadParser};
use crate::php::stderr::StderrRelay;
use crate::php::upstream::send_head;
use crate::router::Router;
use arc_swap::ArcSwap;

/// Marks a response whose body length tells nothing for a HEAD request:
/// only a Content-Length the script set may be sent.
#[derive(Clone, Copy, Debug)]
pub struct LengthUnknownForHead;

/// The request body as it will be sent to PHP.
pub enum PhpBody {
    Empty,
    /// Streamed from the client as PHP reads it (`php.request_buffering:
    /// false`); the length is known up front.
    Sized(RequestBody, u64),
    /// A small body, read whole first; it goes out with the params.
    Buffered(Bytes),
    /// A larger body, written to an unnamed temporary file first.
    Spooled(tokio::fs::File, u64),
}

impl PhpBody {
    fn content_length(&self) -> Option<u64> {
        match self {
            Self::Empty => None,
            Self::Buffered(bytes) => Some(bytes.len() as u64),
            Self::Sized(_, length) | Self::Spooled(_, length) => Some(*length),
        }
    }
}

pub async fn serve(
    app: &Arc<App>,
    router: &ArcSwap<Router>,
    parts: Parts,
    body: PhpBody,
    script: Script,
    (peer, local): (SocketAddr, SocketAddr),
    observation: &mut Observation,
) -> Response<Body> {
    let info = RequestInfo::new(
        parts.method.as_str(),
        parts.uri.path_and_query().map_or("", |pq| pq.as_str()),
        &script.filename.to_string_lossy(),
        body.content_length().unwrap_or(0),
    );
    let cgi = CgiRequest {
        config: &app.config,
        script: &script,
        method: &parts.method,
        uri: &parts.uri,
        version: parts.version,
        headers: &parts.headers,
        peer,
        local,
        content_length: body.content_length(),
        https: parts.extensions.get::<super::Tls>().is_some(),
    };
    observation.request = Some(info.clone());
    // No body, or a small one at hand: the whole request is one write.
    let whole = matches!(body, PhpBody::Empty | PhpBody::Buffered(_));
    let sent = send_head(app, router, &info, |buf| {
        put_begin_request(buf, REQUEST_ID, Role::Responder, true);
        cgi_params::write(buf, &cgi);
        if let PhpBody::Buffered(bytes) = &body {
            put_stream(buf, RecordType::Stdin, REQUEST_ID, bytes);
        }
        if whole {
            put_stream_end(buf, RecordType::Stdin, REQUEST_ID);
        }
    })
    .await;
    let (lease, deadline) = match sent.ready() {
        Ok(ready) => ready,
        Err(unsent) => {
            observation.pid = unsent.pid;
            return match unsent.retry_after {
                Some(seconds) => errors::overloaded(seconds),
                None => errors::status(unsent.status),
            };
        }
    };
    observation.pid = Some(lease.pid());
    observation.queue_waited(lease.queue_wait());
    exchange(app, lease, body, deadline).await
}

/// Sends the rest of the request body and reads the response head. Every
/// outcome decides the lease's fate.
async fn exchange(
    app: &Arc<App>,
    mut lease: Lease,
    body: PhpBody,
    deadline: Instant,
) -> Response<Body> {
    // An empty or buffered body went with the params.
    if !matches!(body, PhpBody::Empty | PhpBody::Buffered(_)) {
        match tokio::time::timeout_at(deadline, send_body(&mut lease, body)).await {
            Ok(Ok(())) => {}
            Ok(Err(BodyError::Worker(err))) => {
                error!(worker = %app.config.name, pid = lease.pid(), "writing request body to worker: {err}");
                return broken(lease);
            }
            Ok(Err(BodyError::Client)) => {
                // The client is gone; PHP still gets a complete (short) request
                // and the worker is returned once it finishes.
                lease.sent();
                return errors::status(StatusCode::BAD_REQUEST);
            }
            Err(_) => return timed_out(lease),
        }
    }
    lease.sent();

    let mut stderr = StderrRelay::new(app.config.name.clone(), lease.pid());
    let mut parser = HeadParser::default();
    let head = tokio::time::timeout_at(deadline, async {
        loop {
            match lease.connection().next_event().await {
                Ok(ResponseEvent::Stdout(data)) => match parser.push(data) {
                    Ok(Some((head, rest))) => return Ok((head, rest, false)),
                    Ok(None) => {}
                    Err(err) => return Err(err.to_string()),
                },
                Ok(ResponseEvent::Stderr(data)) => stderr.push(&data),
                Ok(ResponseEvent::End(_)) => {
                    return parser
                        .finish()
                        .map(|head| (head, Bytes::new(), true))
                        .map_err(|err| err.to_string());
                }
                Err(err) => return Err(err.to_string()),
            }
        }
    })
    .await;
    let (head, first, ended) = match head {
        Ok(Ok(head)) => head,
        Ok(Err(reason)) => {
            stderr.flush();
            error!(
                worker = %app.config.name,
                pid = lease.pid(),
                "bad response from worker: {reason}"
            );
            return broken(lease);
        }
        Err(_) => {
            stderr.flush();
            return timed_out(lease);
        }
    };
    respond(app, head, first, ended, lease, stderr, deadline)
}

/// How much of a response body [`respond`] collects before it starts
/// streaming.
const PREREAD_LIMIT: usize = 256 * 1024;

/// Builds the response. Whatever of the body is already buffered (up to
/// [`PREREAD_LIMIT`]) is taken without waiting; if the response is complete
/// by then the worker goes back to the pool at once and the body is sent
/// with a Content-Length. Otherwise the rest is buffered for the client
/// (response_buffer.rs) or, with `php.response_buffering: false`, streamed
/// from the worker as the client reads it.
fn respond(
    app: &App,
    head: CgiHead,
    first: Bytes,
    mut ended: bool,
    mut lease: Lease,
    mut stderr: StderrRelay,
    deadline: Instant,
) -> Response<Body> {
    let mut taken = first.len();
    let mut chunks = Vec::new();
    if !first.is_empty() {
        chunks.push(first);
    }
    let mut failed = false;
    if !ended {
        let mut cx = Context::from_waker(Waker::noop());
        // A large response that keeps arriving streams instead of being
        // collected here.
        while taken < PREREAD_LIMIT {
            match lease.connection().poll_event(&mut cx) {
                Poll::Ready(Ok(ResponseEvent::Stdout(data))) => {
                    taken += data.len();
                    chunks.push(data);
                }
                Poll::Ready(Ok(ResponseEvent::Stderr(data))) => stderr.push(&data),
                Poll::Ready(Ok(ResponseEvent::End(_))) => {
                    ended = true;
                    break;
                }
                Poll::Ready(Err(_)) => {
                    failed = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
    }
    let body = if ended {
        stderr.flush();
        lease.complete();
        let mut whole = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().unwrap_or_default(),
            _ => concat(&chunks),
        };
        // Never more than the script's own Content-Length, as when it
        // streams (PhpStream::poll_chunk).
        if let Some(declared) = declared_length(&head.headers)
            && (whole.len() as u64) > declared
        {
            whole.truncate(declared as usize);
        }
        if whole.is_empty() {
            Body::Empty
        } else {
            Body::Bytes(Some(whole))
        }
    } else if failed {
        stderr.flush();
        lease.kill(KillReason::Broken);
        return errors::status(StatusCode::BAD_GATEWAY);
    } else {
        // Streamed from the worker while the client keeps up; spilled into
        // a buffer the moment it does not (see `PhpStream::spill`).
        let buffer = app.config.php.response_buffer;
        let source = Source::Worker {
            lease: Some(lease),
            deadline_at: deadline,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            stderr,
        };
        let spill_to = buffer
            .enabled
            .then(|| (buffer, app.telemetry.metrics.response_buffer.clone()));
        let declared = declared_length(&head.headers);
        Body::Php(Box::new(PhpStream {
            source,
            pending: chunks.into(),
            observation: None,
            sent_bytes: 0,
            declared,
            spill_to,
        }))
    };
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    // PHP sends no body for HEAD: the (empty) body says nothing of the
    // length a GET would have had.
    response.extensions_mut().insert(LengthUnknownForHead);
    if !response.headers().contains_key(header::CONTENT_TYPE)
        && response.status() != StatusCode::NO_CONTENT
    {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/html; charset=UTF-8"),
        );
    }
    response
}

/// The Content-Length a script set, if any.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
}

fn concat(chunks: &[Bytes]) -> Bytes {
    let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        all.extend_from_slice(chunk);
    }
    all.freeze()
}

fn timed_out(lease: Lease) -> Response<Body> {
    lease.kill(KillReason::Timeout);
    errors::status(StatusCode::GATEWAY_TIMEOUT)
}

fn broken(lease: Lease) -> Response<Body> {
    lease.kill(KillReason::Broken);
    errors::status(StatusCode::BAD_GATEWAY)
}

enum BodyError {
    Client,
    Worker(io::Error),
}

async fn send_body(lease: &mut Lease, body: PhpBody) -> Result<(), BodyError> {
    match body {
        // Sent with the params.
        PhpBody::Empty | PhpBody::Buffered(_) => {}
        PhpBody::Sized(mut incoming, length) => {
            let mut sent = 0u64;
            while let Some(frame) = incoming.frame().await {
                let Ok(frame) = frame else {
                    end_short(lease).await?;
                    return Err(BodyError::Client);
                };
                if let Ok(data) = frame.into_data() {
                    sent += data.len() as u64;
                    if sent > length {
                        break;
                    }
                    lease
                        .connection()
                        .write_stdin(&data)
                        .await
                        .map_err(BodyError::Worker)?;
                }
            }
            if sent != length {
                end_short(lease).await?;
                return Err(BodyError::Client);
            }
        }
        PhpBody::Spooled(mut file, _) => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let read = tokio::io::AsyncReadExt::read(&mut file, &mut buf)
                    .await
                    .map_err(BodyError::Worker)?;
                if read == 0 {
                    break;
                }
                lease
                    .connection()
                    .write_stdin(&buf[..read])
                    .await
                    .map_err(BodyError::Worker)?;
            }
        }
    }
    lease
        .connection()
        .end_stdin()
        .await
        .map_err(BodyError::Worker)
}

async fn end_short(lease: &mut Lease) -> Result<(), BodyError> {
    lease
        .connection()
        .end_stdin()
        .await
        .map_err(BodyError::Worker)
}

/// Request bodies up to this size stay in memory.
const BUFFER_BODY_LIMIT: usize = 64 * 1024;

/// Reads a request body whole (bounded by `limit`) before a worker is taken,
/// as nginx does in front of php-fpm: a client that sends slowly, stalls or
/// gives up never holds a PHP worker, and a chunked body gets the length PHP
/// needs. Small bodies stay in memory, larger ones go to an unnamed
/// temporary file written through tokio's blocking pool.
pub async fn collect(
    mut incoming: RequestBody,
    limit: u64,
) -> Result<PhpBody, (StatusCode, String)> {
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};
    let internal = |err: io::Error| {
        error!("spooling a request body to a temporary file: {err}");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot spool the body: {err}"),
        )
    };
    let mut memory = BytesMut::new();
    let mut file: Option<tokio::io::BufWriter<tokio::fs::File>> = None;
    let mut length = 0u64;
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|err| {
            let status = match err.kind() {
                io::ErrorKind::FileTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                io::ErrorKind::TimedOut => StatusCode::REQUEST_TIMEOUT,
                _ => StatusCode::BAD_REQUEST,
            };
            (status, err.to_string())
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        length += data.len() as u64;
        if length > limit {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body larger than server.max_body_bytes".into(),
            ));
        }
        if file.is_none() && memory.len() + data.len() <= BUFFER_BODY_LIMIT {
            memory.extend_from_slice(&data);
            continue;
        }
        let spool = match &mut file {
            Some(spool) => spool,
            None => {
                let created = tokio::task::spawn_blocking(tempfile::tempfile)
                    .await
                    .map_err(|err| internal(io::Error::other(err)))?
                    .map_err(internal)?;
                let mut spool = tokio::io::BufWriter::with_capacity(
                    256 * 1024,
                    tokio::fs::File::from_std(created),
                );
                spool.write_all(&memory).await.map_err(internal)?;
                file.insert(spool)
            }
        };
        spool.write_all(&data).await.map_err(internal)?;
    }
    match file {
        None => Ok(PhpBody::Buffered(memory.freeze())),
        Some(mut spool) => {
            spool.flush().await.map_err(internal)?;
            let mut file = spool.into_inner();
            file.rewind().await.map_err(internal)?;
            Ok(PhpBody::Spooled(file, length))
        }
    }
}

/// A PHP response body still arriving from the worker.
pub struct PhpStream {
    source: Source,
    pending: std::collections::VecDeque<Bytes>,
    /// Finished (metrics, logs) when the body ends or is dropped.
    observation: Option<(Observation, u16)>,
    sent_bytes: u64,
    /// The response's Content-Length: once that much is sent the response
    /// is complete for the client, even if the script goes on working.
    declared: Option<u64>,
    /// Where the rest goes when the client falls behind
    /// (`php.response_buffering`); None: the worker waits for the client.
    spill_to: Option<(ResponseBuffer, BufferMetrics)>,
}

/// Where the rest of a PHP response comes from. Left unboxed: the whole
/// `PhpStream` is already one allocation per response.
#[allow(clippy::large_enum_variant)]
enum Source {
    /// Buffered by a task that returns the worker when PHP is done.
    Spool(SpoolReader),
    /// Read from the worker as the client takes it (the worker is held).
    Worker {
        lease: Option<Lease>,
        deadline_at: Instant,
        deadline: Pin<Box<Sleep>>,
        stderr: StderrRelay,
    },
}

impl PhpStream {
    pub fn is_done(&self) -> bool {
        if self
            .declared
            .is_some_and(|declared| self.sent_bytes >= declared)
        {
            return true;
        }
        self.pending.is_empty()
            && match &self.source {
                Source::Spool(reader) => reader.is_done(),
                Source::Worker { lease, .. } => lease.is_none(),
            }
    }

    /// Hands over the request's observation, finished with the body.
    pub fn observe(&mut self, observation: Observation, status: u16) {
        self.observation = Some((observation, status));
    }

    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let mut chunk = match self.declared {
            Some(declared) if self.sent_bytes >= declared => {
                self.finish_early();
                Poll::Ready(None)
            }
            _ => self.next_chunk(cx),
        };
        // Never more than the declared length: the framing would break.
        if let (Poll::Ready(Some(Ok(data))), Some(declared)) = (&mut chunk, self.declared) {
            let left = declared - self.sent_bytes;
            if data.len() as u64 > left {
                data.truncate(left as usize);
            }
        }
        match &chunk {
            Poll::Ready(Some(Ok(data))) => self.sent_bytes += data.len() as u64,
            Poll::Ready(_) => {
                if let Some((observation, status)) = self.observation.take() {
                    observation.finish(status, self.sent_bytes);
                }
            }
            Poll::Pending => {}
        }
        chunk
    }

    /// The client cannot take more right now: the rest of the response is
    /// buffered by a task of its own, which frees the worker as soon as PHP
    /// is done. Until then (a client that keeps up, the usual case) the
    /// response streams straight from the worker, with no task or lock.
    pub fn spill(&mut self) {
        let Some((limits, metrics)) = self.spill_to.take() else {
            return;
        };
        if let Some((lease, stderr, deadline)) = self.take_worker() {
            let reader =
                response_buffer::start(lease, Vec::new(), stderr, deadline, limits, metrics);
            self.source = Source::Spool(reader);
        }
    }

    /// The worker this response still streams from, with its STDERR relay
    /// and deadline, for a task that takes over from here.
    fn take_worker(&mut self) -> Option<(Lease, StderrRelay, Instant)> {
        let Source::Worker {
            lease,
            deadline_at,
            stderr,
            ..
        } = &mut self.source
        else {
            return None;
        };
        let lease = lease.take()?;
        let stderr = std::mem::replace(stderr, StderrRelay::new(String::new(), 0));
        Some((lease, stderr, *deadline_at))
    }

    /// The client has the whole response: a worker still held is left to
    /// finish the script in the background.
    fn finish_early(&mut self) {
        if let Some((lease, stderr, deadline)) = self.take_worker() {
            response_buffer::finish_in_background(lease, stderr, deadline);
        }
    }

    fn next_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if let Some(chunk) = self.pending.pop_front() {
            return Poll::Ready(Some(Ok(chunk)));
        }
        let (lease_slot, deadline, stderr) = match &mut self.source {
            Source::Spool(reader) => return reader.poll_chunk(cx),
            Source::Worker {
                lease,
                deadline,
                stderr,
                ..
            } => (lease, deadline, stderr),
        };
        let Some(lease) = lease_slot.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            // Checked on every turn: with output always ready, the timer
            // below (polled only when nothing is) would never be seen.
            let expired = deadline.is_elapsed() || deadline.deadline() <= Instant::now();
            let event = if expired {
                Poll::Pending
            } else {
                lease.connection().poll_event(cx)
            };
            match event {
                Poll::Ready(Ok(ResponseEvent::Stdout(data))) => return Poll::Ready(Some(Ok(data))),
                Poll::Ready(Ok(ResponseEvent::Stderr(data))) => stderr.push(&data),
                Poll::Ready(Ok(ResponseEvent::End(_))) => {
                    stderr.flush();
                    if let Some(lease) = lease_slot.take() {
                        lease.complete();
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Err(err)) => {
                    stderr.flush();
                    error!(
                        worker = %stderr.app(),
                        pid = stderr.pid(),
                        "worker failed mid-response: {err}"
                    );
                    if let Some(lease) = lease_slot.take() {
                        lease.kill(KillReason::Broken);
                    }
                    return Poll::Ready(Some(Err(io::Error::other(err))));
                }
                Poll::Pending => {
                    if expired || deadline.as_mut().poll(cx).is_ready() {
                        stderr.flush();
                        if let Some(lease) = lease_slot.take() {
                            lease.kill(KillReason::Timeout);
                        }
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request_timeout reached while streaming the response",
                        ))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for PhpStream {
    fn drop(&mut self) {
        // Not read to the end (a client gone, a HEAD or 304 whose body is
        // never sent): PHP finishes in the background, its STDERR logged.
        self.finish_early();
        // The client went away before the end: still counted and logged.
        if let Some((observation, status)) = self.observation.take() {
            observation.finish(status, self.sent_bytes);
        }
    }
}
