//! The HTTP front: accepts connections and serves HTTP/1.1 with keep-alive
//! ([`h1`]) and HTTP/2 ([`h2`]: over TLS by ALPN, or with prior knowledge on
//! the plain port when `server.http2.h2c` is on), with the limits of
//! `server.yaml`:
//! - `read_timeout`: a request's head must arrive within it once it started,
//!   and a request body may not stall longer (slowloris);
//! - `idle_timeout`: a keep-alive connection waits this long for the next
//!   request;
//! - `write_timeout`: a client that stops reading a response for this long
//!   is dropped;
//! - `max_header_bytes` and `max_headers` (431 beyond), `max_body_bytes`
//!   (413).
//! - `max_connections`: connections served at once, on the HTTP and the TLS
//!   port together (the accept loop, [`crate::accept`]).
//!
//! Over TLS ([`crate::tls`]) the same connection code runs on a TLS stream
//! ([`stream`]); requests carry the [`Tls`] extension.

pub mod body;
pub mod body_reader;
pub mod cgi_params;
pub mod compress;
pub mod errors;
pub mod h1;
pub mod h2;
pub mod normalize;
pub mod php;
pub mod proxy;
pub mod resolve;
pub mod response_buffer;
pub mod sendfile;
pub mod service;
pub mod static_files;
pub mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::{Accept, AcceptLoop};
pub use service::Frontend;

/// A request extension set on requests that came over TLS (HTTP/1.1 or
/// HTTP/2): PHP then sees `HTTPS=on` and `REQUEST_SCHEME=https`.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// The server name the client asked for (SNI), if any.
    pub server_name: Option<Arc<str>>,
}

/// A request extension through which the service sends informational
/// responses (103 Early Hints, from PHP) ahead of the final response. The
/// connection that made the request puts it there and writes out what
/// arrives while the request runs (HTTP/1.1 and HTTP/2; never HTTP/1.0).
/// Senders use `try_send`: hints beyond the channel's room are dropped.
#[derive(Clone, Debug)]
pub struct Interim(pub tokio::sync::mpsc::Sender<http::HeaderMap>);

/// The HTTP front's listening sockets: the plain HTTP port, and the TLS
/// port when `server.tls` is set. One accept loop serves both, so
/// `server.max_connections` bounds them together.
pub struct Listeners {
    pub http: TcpListener,
    pub tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
}

/// A connection accepted by [`Listeners`]: the acceptor is there when it came
/// to the TLS port.
pub type Accepted = (TcpStream, SocketAddr, Option<tokio_rustls::TlsAcceptor>);

impl Accept for Listeners {
    type Connection = Accepted;
    async fn accept(&self) -> std::io::Result<Accepted> {
        match &self.tls {
            None => {
                let (stream, peer) = self.http.accept().await?;
                Ok((stream, peer, None))
            }
            Some((tls, acceptor)) => tokio::select! {
                accepted = self.http.accept() => {
                    let (stream, peer) = accepted?;
                    Ok((stream, peer, None))
                }
                accepted = tls.accept() => {
                    let (stream, peer) = accepted?;
                    Ok((stream, peer, Some(acceptor.clone())))
                }
            },
        }
    }
}

/// Accepts connections until `shutdown`, at most `server.max_connections` at
/// once ([`crate::accept`]); each connection runs on `connections` so the
/// caller can wait for them to finish.
pub async fn serve(
    listeners: Listeners,
    front: Arc<Frontend>,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    let accept_loop = AcceptLoop {
        front: "HTTP",
        app: None,
        max_connections: front.settings.max_connections,
        setting: "server.max_connections",
    };
    accept_loop
        .run(
            &listeners,
            &shutdown,
            &connections,
            |(stream, peer, tls)| {
                let _ = stream.set_nodelay(true);
                let local: SocketAddr = stream.local_addr().unwrap_or(peer);
                let front = front.clone();
                let shutdown = shutdown.clone();
                Some(async move {
                    let gauge = front.telemetry.metrics.http_connections.clone();
                    gauge.inc();
                    match tls {
                        None => {
                            let protocol = if front.settings.http2.h2c {
                                sniff(&stream, front.settings.read_timeout).await
                            } else {
                                Protocol::Http1
                            };
                            match protocol {
                                Protocol::Http1 => {
                                    h1::serve_connection(
                                        stream::Stream::Tcp(stream),
                                        peer,
                                        local,
                                        front,
                                        shutdown,
                                    )
                                    .await;
                                }
                                // Boxed, as the TLS branch below: this
                                // future's size is its largest branch's,
                                // and every idle HTTP/1.1 connection would
                                // pay for an HTTP/2 connection's state.
                                Protocol::Http2 => {
                                    Box::pin(h2::serve_connection(
                                        stream, peer, local, None, front, shutdown,
                                    ))
                                    .await;
                                }
                                Protocol::Silent => {}
                            }
                        }
                        Some(acceptor) => {
                            Box::pin(crate::tls::serve_connection(
                                acceptor, stream, peer, local, front, shutdown,
                            ))
                            .await
                        }
                    }
                    gauge.dec();
                })
            },
        )
        .await;
}

/// What a connection on the plain port speaks, by its first bytes.
#[derive(Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c): it starts with the preface.
    Http2,
    /// Nothing within `read_timeout`, or gone: closed, as HTTP/1.1 would.
    Silent,
}

/// Peeks at a new connection's first bytes (within `wait`) without taking
/// them: the HTTP/2 preface, or anything else (HTTP/1.1).
async fn sniff(stream: &TcpStream, wait: std::time::Duration) -> Protocol {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; h2::PREFACE.len()];
    loop {
        let peeked = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Protocol::Silent,
            Ok(Ok(peeked)) => peeked,
            Err(_) => return Protocol::Silent,
        };
        if buf[..peeked] != h2::PREFACE[..peeked] {
            return Protocol::Http1;
        }
        if peeked == buf.len() {
            return Protocol::Http2;
        }
        // Part of the preface: peeking again would return at once with the
        // same bytes (they keep the socket readable), so wait a moment. Rare:
        // clients send the 24 bytes in one segment.
        if tokio::time::Instant::now() + PREFACE_RETRY >= deadline {
            return Protocol::Http1;
        }
        tokio::time::sleep(PREFACE_RETRY).await;
    }
}

/// Pause between looks at a partly arrived HTTP/2 preface.
const PREFACE_RETRY: std::time::Duration = std::time::Duration::from_millis(5);
