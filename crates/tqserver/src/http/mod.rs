//! The HTTP front: accepts connections and serves HTTP/1.1 with keep-alive
//! ([`h1`]), with the limits of `server.yaml`:
//! - `read_timeout`: a request's head must arrive within it once it started,
//!   and a request body may not stall longer (slowloris);
//! - `idle_timeout`: a keep-alive connection waits this long for the next
//!   request;
//! - `write_timeout`: a client that stops reading a response for this long
//!   is dropped;
//! - `max_header_bytes` and `max_headers` (431 beyond), `max_body_bytes`
//!   (413).

pub mod body;
pub mod body_reader;
pub mod cgi_params;
pub mod errors;
pub mod h1;
pub mod normalize;
pub mod php;
pub mod resolve;
pub mod response_buffer;
pub mod service;
pub mod static_files;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

pub use service::Frontend;

/// Accepts connections until `shutdown`; each connection runs on
/// `connections` so the caller can wait for them to finish.
pub async fn serve(
    listener: TcpListener,
    front: Arc<Frontend>,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let local: SocketAddr = stream.local_addr().unwrap_or(peer);
                let front = front.clone();
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    let gauge = front.telemetry.metrics.http_connections.clone();
                    gauge.inc();
                    h1::serve_connection(stream, peer, local, front, shutdown).await;
                    gauge.dec();
                });
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
