//! The reverse proxy of `type: http` apps: a request under the app's route
//! goes, path unchanged, to the healthy instance with the fewest requests in
//! flight, over a kept-alive HTTP/1.1 connection (hyper's client, one idle
//! pool per instance). A connection has no task of its own: the task of the
//! request using it drives it, so a request and its response do not hop
//! between tasks (and runtime threads). Bodies stream both ways; the request
//! body is held to `max_body_bytes` (413). No response head within
//! `request_timeout` is a 504, an instance that cannot be reached or fails
//! mid-request a 502, each with a log line naming app and instance. Hop-by-hop headers are removed
//! both ways; `X-Forwarded-For`, `-Proto` and `-Host` are set. A connection
//! upgrade (WebSocket) is passed on; after the instance's 101 the two
//! connections are joined ([`super::upgrade`]).

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tracing::{info, warn};

use super::HttpApp;
use super::instance::Instance;
use crate::http::Frontend;
use crate::http::body::Body;
use crate::http::body_reader::RequestBody;
use crate::http::errors;
use crate::observe::{Observation, RequestLine};

type Sender = http1::SendRequest<Outgoing>;

/// A connection's reads and writes (hyper's connection future, upgrades
/// allowed), polled by whoever uses the connection.
type Io = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send + Sync>>;

/// Idle connections kept per instance; more are closed when released.
const MAX_IDLE: usize = 256;

/// A kept-alive connection to an instance.
struct Conn {
    sender: Sender,
    /// None once the connection has ended.
    io: Option<Io>,
}

impl Conn {
    /// Lets the connection read and write what it can; a connection that
    /// ended is dropped (its sender then reports it closed).
    fn drive(io: &mut Option<Io>, cx: &mut Context<'_>) {
        if let Some(future) = io
            && future.as_mut().poll(cx).is_ready()
        {
            *io = None;
        }
    }

    fn is_open(&self) -> bool {
        self.io.is_some() && !self.sender.is_closed()
    }
}

/// One instance's idle kept-alive connections.
#[derive(Default)]
pub struct Upstream {
    idle: Mutex<Vec<Conn>>,
}

impl Upstream {
    /// Closes every idle connection (the instance restarts or stops).
    pub fn clear(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(conn) = idle.pop() {
            if conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
            && conn.is_open()
        {
            idle.push(conn);
        }
    }
}

async fn connect(port: u16) -> io::Result<Conn> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    Ok(Conn {
        sender,
        io: Some(Box::pin(connection.with_upgrades())),
    })
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers and those the Connection header names;
/// returns the Upgrade header if the message asks for an upgrade.
fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let upgrade = named
        .contains(&header::UPGRADE)
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    upgrade
}

/// Proxies one request to an instance of `app`.
pub async fn handle(
    front: &Frontend,
    app: Arc<HttpApp>,
    request: Request<RequestBody>,
    peer: SocketAddr,
) -> Response<Body> {
    let line = RequestLine::Http {
        method: request.method().clone(),
        uri: request.uri().clone(),
        version: request.version(),
        referer: request.headers().get(header::REFERER).cloned(),
        user_agent: request.headers().get(header::USER_AGENT).cloned(),
    };
    let observation = Observation::new(
        front.telemetry.clone(),
        Some(app.telemetry.clone()),
        Some(peer),
        line,
    );
    let response = forward(front, &app, request, peer).await;
    let status = response.status().as_u16();
    observation.finish(status, response.body().size_hint().exact().unwrap_or(0));
    response
}

async fn forward(
    front: &Frontend,
    app: &HttpApp,
    request: Request<RequestBody>,
    peer: SocketAddr,
) -> Response<Body> {
    let name = &app.config.name;
    let limit = front.settings.max_body_bytes;
    let (mut parts, body) = request.into_parts();
    if let Some(length) = body.size_hint().exact()
        && length > limit
    {
        info!(worker = %name, length, limit, "request body too large");
        return errors::status(StatusCode::PAYLOAD_TOO_LARGE);
    }
    // The request as the instance gets it.
    let upgrade = strip_hop_by_hop(&mut parts.headers);
    let host = parts.headers.get(header::HOST).cloned();
    let forwarded_for = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(earlier) => format!("{earlier}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    let proto = if parts.extensions.get::<crate::http::Tls>().is_some() {
        "https"
    } else {
        "http"
    };
    let headers = &mut parts.headers;
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    match host {
        Some(host) => {
            headers.insert("x-forwarded-host", host);
        }
        None => {
            headers.insert(header::HOST, HeaderValue::from_static("localhost"));
        }
    }
    // An upgrade (WebSocket) is passed on where the client's connection
    // can be handed over after a 101: HTTP/1.1.
    let upgrade = upgrade.filter(|_| parts.version == http::Version::HTTP_11);
    if let Some(protocol) = &upgrade {
        let headers = &mut parts.headers;
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let uri: http::Uri = match path.parse() {
        Ok(uri) => uri,
        Err(_) => return errors::status(StatusCode::BAD_REQUEST),
    };
    // Set when the client's body fails (too large, too slow, malformed):
    // the status to answer instead of a 502.
    let client_error = Arc::new(AtomicU16::new(0));
    let mut upstream_request = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .version(http::Version::HTTP_11)
        .body(Outgoing {
            inner: body,
            limit,
            seen: 0,
            client_error: client_error.clone(),
        })
        .expect("parts of a valid request");
    *upstream_request.headers_mut() = parts.headers;

    // The healthy instance with the fewest requests in flight. A request
    // that was not sent (a pooled connection the instance closed meanwhile,
    // an instance that died before its supervisor noticed) goes again: on a
    // new connection, or to another instance.
    let timeout = app.config.request_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut request = upstream_request;
    let mut excluded: Vec<Arc<Instance>> = Vec::new();
    let (instance, in_flight, mut conn, response) = 'instances: loop {
        let Some(instance) = app.pick_excluding(&excluded) else {
            warn!(worker = %name, "502: no healthy instance");
            return errors::status(StatusCode::BAD_GATEWAY);
        };
        let in_flight = InFlight::new(instance.clone());
        // Counted first, then checked: a drain sets its state first, then
        // waits for the count (see instance.rs), so one of the two sees
        // the other.
        if !instance.routable() {
            excluded.push(instance);
            continue;
        }
        loop {
            let (mut conn, pooled) = match instance.upstream.take() {
                Some(conn) => (conn, true),
                None => match tokio::time::timeout_at(deadline, connect(instance.port)).await {
                    Ok(Ok(conn)) => (conn, false),
                    Ok(Err(err)) => {
                        warn!(worker = %name, instance = instance.index, port = instance.port, "instance unreachable ({err}); trying another");
                        excluded.push(instance);
                        continue 'instances;
                    }
                    Err(_) => return gateway_timeout(name, &instance, timeout),
                },
            };
            let ready = poll_fn(|cx| {
                Conn::drive(&mut conn.io, cx);
                conn.sender.poll_ready(cx)
            });
            match tokio::time::timeout_at(deadline, ready).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) if pooled => continue,
                Ok(Err(err)) => {
                    warn!(worker = %name, instance = instance.index, port = instance.port, "instance connection failed ({err}); trying another");
                    excluded.push(instance);
                    continue 'instances;
                }
                Err(_) => return gateway_timeout(name, &instance, timeout),
            }
            let mut sent = pin!(conn.sender.try_send_request(request));
            let io = &mut conn.io;
            let sent = poll_fn(|cx| {
                Conn::drive(io, cx);
                sent.as_mut().poll(cx)
            });
            match tokio::time::timeout_at(deadline, sent).await {
                Ok(Ok(response)) => break 'instances (instance, in_flight, conn, response),
                Ok(Err(mut err)) => match err.take_message() {
                    Some(unsent) => {
                        request = unsent;
                        if !pooled {
                            excluded.push(instance);
                            continue 'instances;
                        }
                    }
                    None => {
                        if let Ok(status) =
                            StatusCode::from_u16(client_error.load(Ordering::Relaxed))
                        {
                            info!(worker = %name, %peer, status = status.as_u16(), "request body not received: {}", err.error());
                            return errors::status(status);
                        }
                        warn!(worker = %name, instance = instance.index, port = instance.port, "502: instance failed: {}", err.error());
                        return errors::status(StatusCode::BAD_GATEWAY);
                    }
                },
                Err(_) => return gateway_timeout(name, &instance, timeout),
            }
        }
    };

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if upgrade.is_none() {
            warn!(worker = %name, instance = instance.index, "502: the instance switched protocols unasked");
            return errors::status(StatusCode::BAD_GATEWAY);
        }
        // The connection finishes the switch and hands itself over to
        // the tunnel: it needs a task of its own for that.
        if let Some(io) = conn.io.take() {
            tokio::spawn(io);
        }
        return super::upgrade::switch(name, &instance, response, in_flight);
    }
    let (mut head, incoming) = response.into_parts();
    strip_hop_by_hop(&mut head.headers);
    Response::from_parts(
        head,
        Body::Proxied(Box::new(ProxiedBody {
            incoming,
            lease: Some(Lease {
                conn: Some(conn),
                _in_flight: in_flight,
            }),
        })),
    )
}

fn gateway_timeout(
    name: &str,
    instance: &Instance,
    timeout: std::time::Duration,
) -> Response<Body> {
    warn!(worker = %name, instance = instance.index, port = instance.port, "504: no response within request_timeout ({timeout:?})");
    errors::status(StatusCode::GATEWAY_TIMEOUT)
}

/// Counts a request against its instance until dropped.
pub(super) struct InFlight(Arc<Instance>);

impl InFlight {
    fn new(instance: Arc<Instance>) -> Self {
        instance.in_flight.fetch_add(1, Ordering::SeqCst);
        instance.requests.fetch_add(1, Ordering::Relaxed);
        Self(instance)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a response body holds until it ends: its connection (driven while
/// the body is read, back to the idle pool then) and its count against the
/// instance.
struct Lease {
    conn: Option<Conn>,
    _in_flight: InFlight,
}

/// A response body streamed from an instance.
pub struct ProxiedBody {
    incoming: hyper::body::Incoming,
    lease: Option<Lease>,
}

impl ProxiedBody {
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            if let Some(Lease {
                conn: Some(conn), ..
            }) = &mut self.lease
            {
                Conn::drive(&mut conn.io, cx);
            }
            match ready!(Pin::new(&mut self.incoming).poll_frame(cx)) {
                None => {
                    // The exchange is complete: the connection may serve
                    // another request.
                    if let Some(mut lease) = self.lease.take()
                        && let Some(conn) = lease.conn.take()
                    {
                        lease._in_flight.0.upstream.put(conn);
                    }
                    return Poll::Ready(None);
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => return Poll::Ready(Some(Ok(data))),
                    // Trailers are not passed on.
                    Err(_) => continue,
                },
                Some(Err(err)) => {
                    self.lease = None;
                    return Poll::Ready(Some(Err(io::Error::other(err))));
                }
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

/// The request body as sent to an instance, held to `max_body_bytes`.
pub struct Outgoing {
    inner: RequestBody,
    limit: u64,
    seen: u64,
    client_error: Arc<AtomicU16>,
}

impl http_body::Body for Outgoing {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.seen += data.len() as u64;
                    if self.seen > self.limit {
                        self.client_error.store(413, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(crate::http::body_reader::too_large())));
                    }
                }
            }
            Some(Err(err)) => {
                let status = match err.kind() {
                    io::ErrorKind::FileTooLarge => 413,
                    io::ErrorKind::TimedOut => 408,
                    _ => 400,
                };
                self.client_error.store(status, Ordering::Relaxed);
            }
            None => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_upgrades_are_seen() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            "keep-alive, x-private, Upgrade".parse().unwrap(),
        );
        headers.insert("x-private", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert("x-kept", "yes".parse().unwrap());
        let upgrade = strip_hop_by_hop(&mut headers);
        assert_eq!(
            upgrade.as_ref().map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));

        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert_eq!(
            strip_hop_by_hop(&mut headers),
            None,
            "no Connection: upgrade"
        );
    }
}
