//! The HTTP front: accepts connections and serves HTTP/1.1 with keep-alive
//! through hyper, with the limits of `server.yaml`:
//! - `read_timeout`: a request's headers must arrive within it (hyper's
//!   header timer, which also runs while a keep-alive connection waits);
//! - `idle_timeout`: a connection with no traffic for this long is closed
//!   gracefully (a running request still finishes);
//! - `write_timeout`: a client that stops reading a response for this long
//!   is dropped;
//! - `max_header_bytes` (431 beyond), `max_headers`, `max_body_bytes` (413).

pub mod body;
pub mod cgi_params;
pub mod cgi_response;
pub mod errors;
pub mod php;
pub mod resolve;
pub mod service;
pub mod static_files;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

pub use service::Frontend;

/// Accepts connections until `shutdown`; each connection runs on
/// `connections` so the caller can wait for them to finish.
pub async fn serve(
    listener: TcpListener,
    front: Arc<Frontend>,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(front.settings.read_timeout)
        .max_buf_size(front.settings.max_header_bytes.max(8192) * 2)
        .max_header_size(front.settings.max_header_bytes);
    if front.settings.max_headers != crate::config::defaults::MAX_HEADERS {
        builder.max_headers(front.settings.max_headers);
    }
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().unwrap_or(peer);
                connections.spawn(serve_connection(
                    builder.clone(),
                    stream,
                    peer,
                    local,
                    front.clone(),
                    shutdown.clone(),
                ));
            }
            Err(err) => {
                // Out of file descriptors and the like: back off briefly
                // instead of spinning; the listener itself stays open.
                warn!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(
    builder: http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    front: Arc<Frontend>,
    shutdown: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(TimedIo {
        inner: stream,
        activity: activity.clone(),
    });
    let idle_timeout = front.settings.idle_timeout;
    let write_timeout = front.settings.write_timeout;
    let handler = front.clone();
    let service = service_fn(move |request| {
        let front = handler.clone();
        async move { Ok::<_, Infallible>(service::handle(front, request, peer, local).await) }
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let check_every = idle_timeout
        .min(write_timeout)
        .max(Duration::from_millis(100));
    let timer = tokio::time::sleep(check_every);
    tokio::pin!(timer);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    debug!(%peer, "connection ended: {err}");
                }
                return;
            }
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = &mut timer => {
                let now = Instant::now();
                if activity.write_blocked_for(now) > write_timeout {
                    debug!(%peer, "client stopped reading the response; closing");
                    return;
                }
                if !closing && activity.idle_for(now) > idle_timeout {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                timer.as_mut().reset(now + check_every);
            }
        }
    }
}

/// When a connection last moved bytes, and since when a write has waited.
struct Activity {
    base: Instant,
    last_io_ms: AtomicU64,
    /// 0 when no write is waiting; else ms since `base` + 1.
    write_blocked_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            write_blocked_since_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn idle_for(&self, now: Instant) -> Duration {
        let last = self.base + Duration::from_millis(self.last_io_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }

    fn write_blocked_for(&self, now: Instant) -> Duration {
        match self.write_blocked_since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => now.saturating_duration_since(self.base + Duration::from_millis(since - 1)),
        }
    }
}

/// A TCP stream that records its activity for the idle and write timeouts.
struct TimedIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for TimedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        result
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.on_write(&result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.on_write(&result);
        result
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

impl TimedIo {
    fn on_write(&self, result: &Poll<io::Result<usize>>) {
        let blocked = &self.activity.write_blocked_since_ms;
        match result {
            Poll::Pending => {
                if blocked.load(Ordering::Relaxed) == 0 {
                    blocked.store(self.activity.now_ms() + 1, Ordering::Relaxed);
                }
            }
            Poll::Ready(_) => {
                blocked.store(0, Ordering::Relaxed);
                self.activity.touch();
            }
        }
    }
}
