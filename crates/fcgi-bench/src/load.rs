//! The load: one task per connection, one request in flight on each, back to
//! back, for a warm-up and then a measured window.
//!
//! Kept lean so that it measures PHP and not itself: the request is encoded
//! once and copied into the connection's buffer; responses are read through
//! the codec's shared buffer and only counted; a latency is one `u32` pushed
//! into a per-task vector. Nothing is shared between tasks until the end.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastcgi::client::{ClientConnection, ResponseEvent};
use fastcgi::record::ProtocolStatus;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;
use tokio_util::either::Either;

use crate::request::cgi_status;

pub type Stream = Either<UnixStream, TcpStream>;

/// Where new connections go (`--connect`); spawned workers have none.
#[derive(Clone, Debug)]
pub enum Target {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

impl Target {
    pub fn parse(addr: &str) -> Self {
        match addr.strip_prefix("unix:") {
            Some(path) => Self::Unix(path.into()),
            None if addr.starts_with('/') || addr.starts_with('.') => Self::Unix(addr.into()),
            None => Self::Tcp(addr.to_owned()),
        }
    }

    pub async fn connect(&self) -> io::Result<Stream> {
        Ok(match self {
            Self::Unix(path) => Either::Left(UnixStream::connect(path).await?),
            Self::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Either::Right(stream)
            }
        })
    }
}

/// The time line every task follows.
#[derive(Clone, Copy)]
pub struct Window {
    /// Responses that complete from here on are measured...
    pub measure_from: Instant,
    /// ...until here; no request starts after it.
    pub end: Instant,
    /// A request still open here is given up as a timeout.
    pub hard_stop: Instant,
}

/// What one connection saw during the measured window.
#[derive(Default)]
pub struct ConnStats {
    pub latencies_us: Vec<u32>,
    pub non_2xx: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub response_bytes: u64,
    pub first_error: Option<String>,
}

pub struct Driver {
    pub request: Bytes,
    /// Reconnect for the next request (none for spawned workers).
    pub target: Option<Target>,
    /// Keep the connection for the next request (FCGI_KEEP_CONN was sent).
    pub keep_conn: bool,
    pub window: Window,
}

pub async fn drive(driver: Arc<Driver>, mut conn: Option<ClientConnection<Stream>>) -> ConnStats {
    let window = driver.window;
    let mut stats = ConnStats::default();
    // One timer for the task's whole life, raced against every request.
    let hard_stop = tokio::time::sleep_until(window.hard_stop);
    tokio::pin!(hard_stop);
    loop {
        if Instant::now() >= window.end {
            break;
        }
        // A new connection's connect is part of that request's latency.
        let started = Instant::now();
        let mut live = match conn.take() {
            Some(live) => live,
            None => match &driver.target {
                None => break, // a spawned worker's only connection is gone
                Some(target) => match target.connect().await {
                    Ok(stream) => ClientConnection::new(stream),
                    Err(err) => {
                        stats.record_error(&window, format!("connect: {err}"));
                        // Do not spin on a server that refuses.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            },
        };
        live.write_buf().extend_from_slice(&driver.request);
        let outcome = tokio::select! {
            biased;
            outcome = exchange(&mut live) => outcome,
            _ = &mut hard_stop => {
                stats.timeouts += 1;
                break;
            }
        };
        let finished = Instant::now();
        let measured = finished >= window.measure_from && finished < window.end;
        match outcome {
            Ok(response) => {
                if measured {
                    let micros = (finished - started).as_micros();
                    stats.latencies_us.push(micros.min(u32::MAX as u128) as u32);
                    stats.response_bytes += response.bytes;
                    if !(200..300).contains(&response.status) {
                        stats.non_2xx += 1;
                    }
                }
                if driver.keep_conn {
                    conn = Some(live);
                }
            }
            Err(err) => stats.record_error(&window, err),
        }
    }
    stats
}

impl ConnStats {
    fn record_error(&mut self, window: &Window, message: String) {
        if Instant::now() >= window.measure_from {
            self.errors += 1;
        }
        self.first_error.get_or_insert(message);
    }
}

pub struct Response {
    pub status: u16,
    pub bytes: u64,
}

/// Sends the buffered request and reads the response to END_REQUEST.
pub async fn exchange(conn: &mut ClientConnection<Stream>) -> Result<Response, String> {
    conn.flush().await.map_err(|err| format!("send: {err}"))?;
    let mut status = None;
    let mut bytes = 0u64;
    loop {
        match conn.next_event().await.map_err(|err| err.to_string())? {
            ResponseEvent::Stdout(chunk) => {
                status.get_or_insert_with(|| cgi_status(&chunk));
                bytes += chunk.len() as u64;
            }
            ResponseEvent::Stderr(_) => {}
            ResponseEvent::End(end) => {
                if end.protocol_status != ProtocolStatus::RequestComplete {
                    return Err(format!("request ended with {:?}", end.protocol_status));
                }
                return Ok(Response {
                    status: status.unwrap_or(200),
                    bytes,
                });
            }
        }
    }
}
