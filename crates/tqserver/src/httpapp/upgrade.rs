//! Connection upgrades (WebSocket and any other `Upgrade:` protocol): the
//! instance's 101 goes to the client, then the client's connection (handed
//! over by the HTTP/1.1 front, see [`crate::http::h1::Upgrade`]) and the
//! instance's are joined byte for byte until either side closes (then
//! both close: a side that only shut its writing half ends the tunnel too). The tunnel
//! counts as a request in flight on its instance, so a drain waits for it
//! (up to `drain_timeout`).

use std::sync::Arc;

use http::{Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::instance::Instance;
use super::proxy::InFlight;
use crate::http::body::Body;

use crate::http::h1::{Upgrade, UpgradedReader, UpgradedWriter};

/// Answers the client with the instance's 101 and joins the connections
/// once both are handed over.
pub(super) fn switch(
    name: &str,
    instance: &Arc<Instance>,
    mut upstream: Response<hyper::body::Incoming>,
    in_flight: InFlight,
) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut upstream);
    let (tx, rx) = oneshot::channel();
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = upstream.headers().clone();
    response.extensions_mut().insert(Upgrade::new(tx));
    let (name, index) = (name.to_owned(), instance.index);
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let (client, upstream) = tokio::join!(rx, on_upgrade);
        let (Ok(client), Ok(upstream)) = (client, upstream) else {
            warn!(worker = %name, instance = index, "upgrade abandoned: a side went away before the switch");
            return;
        };
        let (client_read, client_write) = client.into_split();
        let (upstream_read, upstream_write) =
            tokio::io::split(hyper_util::rt::TokioIo::new(upstream));
        // Either side's end is the tunnel's end: the other side gets a
        // FIN, then both connections close.
        tokio::select! {
            _ = client_to_upstream(client_read, upstream_write) => {}
            _ = upstream_to_client(upstream_read, client_write) => {}
        }
        debug!(worker = %name, instance = index, "upgraded connection closed");
    });
    response
}

/// Client bytes to the instance; at the client's end, the instance's write
/// side is shut.
async fn client_to_upstream(
    mut client: UpgradedReader,
    mut upstream: impl tokio::io::AsyncWrite + Unpin,
) -> u64 {
    let mut relayed = 0;
    while let Ok(Some(bytes)) = client.read().await {
        if upstream.write_all(&bytes).await.is_err() {
            break;
        }
        relayed += bytes.len() as u64;
    }
    let _ = upstream.shutdown().await;
    relayed
}

/// The instance's bytes to the client; at the instance's end, the client's
/// connection is shut.
async fn upstream_to_client(
    mut upstream: impl tokio::io::AsyncRead + Unpin,
    mut client: UpgradedWriter,
) -> u64 {
    let mut relayed = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match upstream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if client.write(&buf[..n]).await.is_err() {
                    break;
                }
                relayed += n as u64;
            }
        }
    }
    let _ = client.shutdown().await;
    relayed
}
