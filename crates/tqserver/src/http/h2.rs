//! HTTP/2 on one client connection (RFC 9113), with the h2 crate: each
//! stream is a request run by the same service as HTTP/1.1
//! ([`service::handle`]: routing, static files, PHP, limits).
//!
//! Called for TLS connections that chose "h2" by ALPN, and for connections
//! on the plain port that start with the HTTP/2 preface when
//! `server.http2.h2c` is on. h2 rather than hyper's server: 103 Early Hints
//! (`send_informational`) and the flow-control and stream limits below.
//!
//! Limits, from `server.yaml`:
//! - `server.http2.max_concurrent_streams`: streams open at once;
//! - `max_header_bytes`: the header list a client may send (SETTINGS
//!   MAX_HEADER_LIST_SIZE; h2 answers a larger one with 431 and bounds
//!   CONTINUATION frames by it), `max_headers` (431);
//! - `max_body_bytes`: 413 for a declared length beyond it, the stream reset
//!   when the data passes it;
//! - `read_timeout`: the preface and SETTINGS must arrive within it, and a
//!   request body may stall no longer (408);
//! - `idle_timeout`: a connection with no open stream this long gets GOAWAY
//!   and is closed;
//! - `write_timeout`: a stream whose client grants no send window this long
//!   is reset.
//!
//! A stop (`shutdown`) or the drain before it (`front.draining`) sends a
//! graceful GOAWAY: streams already open finish, new ones go elsewhere.
//! Rapid reset (CVE-2023-44487): h2 bounds streams reset before they are
//! accepted and the resets it must send itself; a client that resets more
//! streams after they started than it lets finish gets GOAWAY
//! (ENHANCE_YOUR_CALM) here.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use ::h2::server::SendResponse;
use ::h2::{Reason, RecvStream, SendStream};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body as _, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::body::Body;
use super::body_reader::{RequestBody, too_large};
use super::service::{self, Frontend};
use super::{Interim, Tls, errors};

/// The connection preface a client sends first (RFC 9113 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Each stream's receive window: how much of a request body a client may
/// send ahead of what the service has read.
const STREAM_WINDOW: u32 = 256 * 1024;
/// The whole connection's receive window, which bounds what one connection
/// can make tqserver buffer for all its streams together.
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Response bytes h2 holds per stream before the socket takes them; a body
/// waits (and a PHP stream spills) beyond it.
const SEND_BUFFER: usize = 256 * 1024;
/// Streams a client may reset before tqserver accepted them (h2's
/// default, the mitigation hyper ships for CVE-2023-44487).
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams h2 may reset itself for the client's protocol errors before it
/// closes the connection.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Started streams a client may reset beyond the number it lets finish
/// before the connection is closed: a browser cancels a few (navigation,
/// aborted fetches), an attack thousands.
const FREE_CLIENT_RESETS: u64 = 200;
/// Room for 103 Early Hints waiting to go out on one stream; more are
/// dropped by their sender.
const INTERIM_ROOM: usize = 8;

/// How a stream ended, for the connection's rapid-reset count.
enum StreamEnd {
    /// A response went out whole (or the stream failed on our side).
    Done,
    /// The client reset the stream before its response was complete.
    ResetByClient,
}

/// What every stream of a connection shares.
struct Shared {
    front: Arc<Frontend>,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<Tls>,
}

/// Serves one HTTP/2 connection until it closes. `io` is positioned at the
/// client's connection preface.
pub async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<Tls>,
    front: Arc<Frontend>,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = &front.settings;
    let mut builder = ::h2::server::Builder::new();
    builder
        .max_concurrent_streams(settings.http2.max_concurrent_streams)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
    let handshake = builder.handshake::<_, Bytes>(io);
    let mut conn = match tokio::time::timeout(settings.read_timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            debug!(%peer, "HTTP/2 handshake failed: {err}");
            return;
        }
        Err(_) => {
            debug!(%peer, "HTTP/2 preface not received in time");
            return;
        }
    };
    let idle_timeout = settings.idle_timeout;
    let write_timeout = settings.write_timeout;
    let shared = Arc::new(Shared {
        front: front.clone(),
        peer,
        local,
        tls,
    });
    // The streams being served, polled by this task: a task per stream
    // costs a spawn and cross-thread wake-ups between it and the connection
    // (h2load, 10 KB static file, 2 connections x 20 streams: 23k-29k
    // requests/s this way against 15k-19k with a task per stream, four
    // alternating rounds on a busy 2-CPU machine). Dropped with the
    // connection, which cancels what is left of them.
    let mut streams = FuturesUnordered::new();
    // With no stream open: `idle_timeout`, then GOAWAY; after GOAWAY,
    // `write_timeout` for it to go out before the socket is dropped.
    let quiet = tokio::time::sleep(idle_timeout);
    tokio::pin!(quiet);
    let mut going_away = false;
    let (mut finished, mut reset_by_client) = (0u64, 0u64);
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    streams.push(serve_stream(request, respond, shared.clone()));
                }
                Some(Err(err)) => {
                    debug!(%peer, "HTTP/2 connection error: {err}");
                    return;
                }
                // Closed (by the client, or GOAWAY with no stream left).
                None => return,
            },
            Some(end) = streams.next(), if !streams.is_empty() => {
                match end {
                    StreamEnd::ResetByClient => reset_by_client += 1,
                    StreamEnd::Done => finished += 1,
                }
                if reset_by_client > finished + FREE_CLIENT_RESETS {
                    info!(%peer, reset_by_client, finished, "HTTP/2 client resets streams too fast; closing");
                    conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                    going_away = true;
                }
                if streams.is_empty() {
                    let wait = if going_away { write_timeout } else { idle_timeout };
                    quiet.as_mut().reset(Instant::now() + wait);
                }
            }
            () = &mut quiet, if streams.is_empty() => {
                if going_away {
                    return;
                }
                conn.graceful_shutdown();
                going_away = true;
                quiet.as_mut().reset(Instant::now() + write_timeout);
            }
            () = shutdown.cancelled(), if !going_away => {
                conn.graceful_shutdown();
                going_away = true;
                quiet.as_mut().reset(Instant::now() + write_timeout);
            }
            () = front.draining.cancelled(), if !going_away => {
                conn.graceful_shutdown();
                going_away = true;
                quiet.as_mut().reset(Instant::now() + write_timeout);
            }
        }
    }
}

/// Serves one stream: the request through the service, 103 Early Hints
/// while it runs, then the response.
async fn serve_stream(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    shared: Arc<Shared>,
) -> StreamEnd {
    let front = &shared.front;
    let is_head = request.method() == Method::HEAD;
    let mut request = match prepare(request, front) {
        Ok(request) => request,
        Err((status, why)) => {
            info!(peer = %shared.peer, status = status.as_u16(), "refusing HTTP/2 request: {why}");
            let timeout = front.settings.write_timeout;
            return send(&mut respond, errors::status(status), is_head, timeout).await;
        }
    };
    if let Some(tls) = &shared.tls {
        request.extensions_mut().insert(tls.clone());
    }
    let (hints, mut hints_in) = mpsc::channel::<HeaderMap>(INTERIM_ROOM);
    request.extensions_mut().insert(Interim(hints));

    // Boxed, as on HTTP/1.1: the service's future is large.
    let service = Box::pin(service::handle(
        front.clone(),
        request,
        shared.peer,
        shared.local,
    ));
    match run_relaying_hints(&mut respond, service, &mut hints_in).await {
        Some(response) => {
            send(
                &mut respond,
                response,
                is_head,
                front.settings.write_timeout,
            )
            .await
        }
        None => StreamEnd::ResetByClient,
    }
}

/// Runs the service, sending each header block that arrives on `hints` as a
/// 103 Early Hints response meanwhile. `None` if the client reset the
/// stream: the service is dropped, which cancels the request (and frees its
/// PHP worker).
async fn run_relaying_hints<F>(
    respond: &mut SendResponse<Bytes>,
    mut service: Pin<Box<F>>,
    hints: &mut mpsc::Receiver<HeaderMap>,
) -> Option<Response<Body>>
where
    F: Future<Output = Response<Body>>,
{
    let early_hints = |respond: &mut SendResponse<Bytes>, fields: HeaderMap| {
        let mut interim = Response::new(());
        *interim.status_mut() = StatusCode::EARLY_HINTS;
        *interim.headers_mut() = fields;
        strip_connection_headers(interim.headers_mut());
        respond.send_informational(interim).is_ok()
    };
    loop {
        tokio::select! {
            biased;
            Some(fields) = hints.recv() => {
                if !early_hints(respond, fields) {
                    return None;
                }
            }
            response = &mut service => {
                // Hints sent as the service finished still go first.
                while let Ok(fields) = hints.try_recv() {
                    if !early_hints(respond, fields) {
                        return None;
                    }
                }
                return Some(response);
            }
            _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => return None,
        }
    }
}

/// Turns an h2 request into the service's: the authority checked and made
/// the Host header, the target reduced to its path and query (as an
/// HTTP/1.1 request's origin form), cookies joined, the limits applied.
fn prepare(
    request: Request<RecvStream>,
    front: &Frontend,
) -> Result<Request<RequestBody>, (StatusCode, &'static str)> {
    let settings = &front.settings;
    let (mut parts, recv) = request.into_parts();
    if parts.headers.len() > settings.max_headers {
        return Err((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "more header fields than server.max_headers",
        ));
    }
    let host =
        authority(&parts.uri, &parts.headers).map_err(|why| (StatusCode::BAD_REQUEST, why))?;
    parts.headers.insert(header::HOST, host);
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .ok_or((StatusCode::BAD_REQUEST, "request without a path"))?;
    parts.uri = Uri::from(path);
    join_cookies(&mut parts.headers);

    let length = match parts.headers.get(header::CONTENT_LENGTH) {
        // h2 has checked it parses and that the data matches it.
        Some(value) => value.to_str().ok().and_then(|v| v.parse::<u64>().ok()),
        None => None,
    };
    if length.is_some_and(|length| length > settings.max_body_bytes) {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            "declared request body larger than server.max_body_bytes",
        ));
    }
    let body = if recv.is_end_stream() {
        RequestBody::empty()
    } else {
        RequestBody::h2(StreamBody {
            recv,
            left: length,
            received: 0,
            max_bytes: settings.max_body_bytes,
            read_timeout: settings.read_timeout,
            stall: None,
        })
    };
    Ok(Request::from_parts(parts, body))
}

/// The request's authority as a Host value (RFC 9113 8.3.1): `:authority`
/// when present, and then a Host that names another origin makes the
/// request malformed; otherwise exactly one Host. Checked as HTTP/1.1
/// checks Host (`h1::head::valid_host`), without userinfo.
fn authority(uri: &Uri, headers: &HeaderMap) -> Result<HeaderValue, &'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err("more than one Host"),
        (host, _) => host,
    };
    if let Some(host) = host
        && !::h1::head::valid_host(host.as_bytes())
    {
        return Err("invalid Host");
    }
    let Some(authority) = uri.authority() else {
        return host
            .cloned()
            .ok_or("HTTP/2 request without :authority or Host");
    };
    let authority = authority.as_str();
    if authority.contains('@') {
        return Err("userinfo in :authority");
    }
    if !::h1::head::valid_host(authority.as_bytes()) {
        return Err("invalid :authority");
    }
    let is_https = uri.scheme_str() == Some("https");
    if let Some(host) = host
        && !same_origin_host(host.as_bytes(), authority.as_bytes(), is_https)
    {
        return Err("Host differs from :authority");
    }
    HeaderValue::from_str(authority).map_err(|_| "invalid :authority")
}

/// Whether two `host[:port]` values name the same origin after scheme-based
/// normalisation (RFC 3986 6.2.3): names compare without case, and the
/// scheme's default port equals no port.
fn same_origin_host(a: &[u8], b: &[u8], is_https: bool) -> bool {
    let default_port: &[u8] = if is_https { b"443" } else { b"80" };
    let split = |value: &[u8]| -> (Vec<u8>, Vec<u8>) {
        // The port follows the last ':' unless that is inside an IPv6
        // literal's brackets.
        let colon = value.iter().rposition(|&b| b == b':');
        let bracket = value.iter().rposition(|&b| b == b']');
        let (name, port) = match colon {
            Some(colon) if bracket.is_none_or(|bracket| colon > bracket) => {
                (&value[..colon], &value[colon + 1..])
            }
            _ => (value, &b""[..]),
        };
        let port = if port.is_empty() { default_port } else { port };
        (name.to_ascii_lowercase(), port.to_vec())
    };
    split(a) == split(b)
}

/// HTTP/2 may split Cookie into several fields; an HTTP/1.1 context (the
/// CGI environment) gets them joined by "; " (RFC 9113 8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Header fields that belong to one HTTP/1.1 connection and are malformed
/// in HTTP/2 (RFC 9113 8.2.2).
fn strip_connection_headers(headers: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

/// Sends a response on a stream: HEADERS, then the body as DATA frames as
/// the client grants window.
async fn send(
    respond: &mut SendResponse<Bytes>,
    response: Response<Body>,
    is_head: bool,
    write_timeout: Duration,
) -> StreamEnd {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let no_body = is_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    // As on HTTP/1.1.
    let length = super::body::declared_length(&parts, &body, is_head);
    let mut head = Response::new(());
    *head.status_mut() = status;
    *head.headers_mut() = parts.headers;
    let headers = head.headers_mut();
    strip_connection_headers(headers);
    headers.remove(header::CONTENT_LENGTH);
    if let Some(length) = length
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, date());
    }
    let empty = no_body || length == Some(0);
    let mut stream = match respond.send_response(head, empty) {
        Ok(stream) => stream,
        Err(_) => return StreamEnd::ResetByClient,
    };
    if empty {
        return StreamEnd::Done;
    }
    let mut sent = 0u64;
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => return StreamEnd::ResetByClient,
        };
        let Some(frame) = frame else {
            break;
        };
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Err(err) => {
                debug!("response body failed: {err}");
                stream.send_reset(Reason::INTERNAL_ERROR);
                return StreamEnd::Done;
            }
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if length.is_some_and(|length| sent > length) {
            // More than the declared length: the response would be
            // malformed (RFC 9113 8.1.1).
            stream.send_reset(Reason::INTERNAL_ERROR);
            return StreamEnd::Done;
        }
        let last = body.is_end_stream() && length.is_none_or(|length| sent == length);
        match send_data(&mut stream, data, last, &mut body, write_timeout).await {
            Ok(()) if last => return StreamEnd::Done,
            Ok(()) => {}
            Err(Failure::Reset) => return StreamEnd::ResetByClient,
            Err(Failure::TimedOut) => {
                stream.send_reset(Reason::CANCEL);
                return StreamEnd::Done;
            }
        }
    }
    if length.is_some_and(|length| sent != length) {
        stream.send_reset(Reason::INTERNAL_ERROR);
        return StreamEnd::Done;
    }
    match stream.send_data(Bytes::new(), true) {
        Ok(()) => StreamEnd::Done,
        Err(_) => StreamEnd::ResetByClient,
    }
}

/// The Date header, formatted once a second per thread.
fn date() -> HeaderValue {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, HeaderValue)> =
            const { std::cell::RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != second {
            let text = httpdate::fmt_http_date(now);
            cache.1 = HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""));
            cache.0 = second;
        }
        cache.1.clone()
    })
}

enum Failure {
    /// The stream or the connection is gone.
    Reset,
    /// The client granted no window for `write_timeout`.
    TimedOut,
}

/// Sends `data` as the client's flow-control window allows. If the window
/// (or h2's send buffer) is full the client is slower than the body's
/// source: the body is told first (a PHP response then moves to a buffer
/// and frees its worker, as on HTTP/1.1), then the wait for window is
/// bounded by `write_timeout`.
async fn send_data(
    stream: &mut SendStream<Bytes>,
    mut data: Bytes,
    last: bool,
    body: &mut Body,
    write_timeout: Duration,
) -> Result<(), Failure> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let mut capacity = stream.capacity();
        if capacity == 0 {
            body.spill();
            let granted = tokio::time::timeout(
                write_timeout,
                std::future::poll_fn(|cx| stream.poll_capacity(cx)),
            )
            .await;
            capacity = match granted {
                Err(_) => return Err(Failure::TimedOut),
                Ok(Some(Ok(capacity))) => capacity,
                Ok(None) | Ok(Some(Err(_))) => return Err(Failure::Reset),
            };
            if capacity == 0 {
                continue;
            }
        }
        let piece = data.split_to(capacity.min(data.len()));
        stream
            .send_data(piece, last && data.is_empty())
            .map_err(|_| Failure::Reset)?;
    }
    Ok(())
}

/// A request body arriving on an HTTP/2 stream, as the service reads it
/// ([`RequestBody::h2`]): window is given back to the client as the
/// service takes the data, so a client can be ahead by at most one window.
pub struct StreamBody {
    recv: RecvStream,
    /// What Content-Length said is still to come.
    left: Option<u64>,
    received: u64,
    max_bytes: u64,
    read_timeout: Duration,
    /// Running while the client sends nothing (`read_timeout`).
    stall: Option<Pin<Box<Sleep>>>,
}

impl StreamBody {
    pub(super) fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        match self.recv.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                self.stall = None;
                let _ = self.recv.flow_control().release_capacity(data.len());
                self.received += data.len() as u64;
                if self.received > self.max_bytes {
                    return Poll::Ready(Some(Err(too_large())));
                }
                if let Some(left) = &mut self.left {
                    *left = left.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(data)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("request body broken off: {err}"),
            )))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = self.read_timeout;
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(stall.as_mut().poll(cx));
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client stopped sending the request body",
                ))))
            }
        }
    }

    pub(super) fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn early_hints_go_out_before_the_response() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut conn = ::h2::server::handshake(server_io).await.unwrap();
            let (_request, mut respond) = conn.accept().await.unwrap().unwrap();
            // The connection makes progress on its own from here.
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let (hints, mut hints_in) = mpsc::channel(INTERIM_ROOM);
            let service = Box::pin(async move {
                for link in ["</a.css>; rel=preload", "</b.js>; rel=preload"] {
                    let mut fields = HeaderMap::new();
                    fields.insert(header::LINK, HeaderValue::from_static(link));
                    fields.insert(header::CONNECTION, HeaderValue::from_static("close"));
                    hints.send(fields).await.unwrap();
                    tokio::task::yield_now().await;
                }
                Response::new(Body::text("done"))
            });
            let response = run_relaying_hints(&mut respond, service, &mut hints_in)
                .await
                .unwrap();
            send(&mut respond, response, false, Duration::from_secs(5)).await;
        });
        let (mut client, conn) = ::h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(conn);
        let request = Request::get("http://x/").body(()).unwrap();
        let (mut response, _) = client.send_request(request, true).unwrap();
        let mut links = Vec::new();
        while let Some(interim) = std::future::poll_fn(|cx| response.poll_informational(cx)).await {
            let interim = interim.unwrap();
            assert_eq!(interim.status(), StatusCode::EARLY_HINTS);
            assert!(!interim.headers().contains_key(header::CONNECTION));
            links.push(interim.headers()[header::LINK].clone());
        }
        assert_eq!(links, ["</a.css>; rel=preload", "</b.js>; rel=preload"]);
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut received = Vec::new();
        while let Some(data) = body.data().await {
            received.extend_from_slice(&data.unwrap());
        }
        assert_eq!(received, b"done");
        server.await.unwrap();
    }

    #[test]
    fn host_and_authority_compare_by_origin() {
        assert!(same_origin_host(b"Example.com", b"example.com", false));
        assert!(same_origin_host(b"example.com:80", b"example.com", false));
        assert!(same_origin_host(b"example.com", b"example.com:443", true));
        assert!(same_origin_host(b"[::1]:8080", b"[::1]:8080", false));
        assert!(same_origin_host(b"[::1]", b"[::1]:80", false));
        assert!(!same_origin_host(
            b"example.com:8080",
            b"example.com",
            false
        ));
        assert!(!same_origin_host(b"other.com", b"example.com", false));
        assert!(!same_origin_host(b"example.com", b"example.com:443", false));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_authority_becomes_host() {
        let uri: Uri = "http://example.com:8080/a?b".parse().unwrap();
        let host = authority(&uri, &HeaderMap::new()).unwrap();
        assert_eq!(host, "example.com:8080");
        // A Host naming the same origin is fine; another one is malformed.
        let same = headers(&[("host", "EXAMPLE.com:8080")]);
        assert_eq!(authority(&uri, &same).unwrap(), "example.com:8080");
        let other = headers(&[("host", "evil.com")]);
        assert!(authority(&uri, &other).is_err());
        let two = headers(&[("host", "example.com:8080"), ("host", "example.com:8080")]);
        assert!(authority(&uri, &two).is_err());
        // No :authority: the one Host; neither: refused.
        let path: Uri = "/a".parse().unwrap();
        let host = headers(&[("host", "example.com")]);
        assert_eq!(authority(&path, &host).unwrap(), "example.com");
        assert!(authority(&path, &HeaderMap::new()).is_err());
        let bad = headers(&[("host", "exa mple")]);
        assert!(authority(&path, &bad).is_err());
        let userinfo: Uri = "http://user@example.com/".parse().unwrap();
        assert!(authority(&userinfo, &HeaderMap::new()).is_err());
    }

    #[test]
    fn cookies_are_joined_and_connection_headers_dropped() {
        let mut map = headers(&[("cookie", "a=1"), ("cookie", "b=2"), ("x-other", "1")]);
        join_cookies(&mut map);
        assert_eq!(map.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(map[header::COOKIE], "a=1; b=2");

        let mut map = headers(&[
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("content-type", "text/plain"),
        ]);
        strip_connection_headers(&mut map);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key(header::CONTENT_TYPE));
    }
}
