//! One connection from a web server: requests one at a time
//! (FCGI_MPXS_CONNS=0), management records (GET_VALUES, a second request id)
//! between them, the idle and stall timeouts, and the answers tqserver makes
//! itself. The request itself is `super::request`'s.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fastcgi::record::RecordType;
use fastcgi::server::{RequestReader, ResponseWriter, ServerError, ServerEvent};
use fastcgi::{Params, ParamsLimits, ProtocolStatus, Role};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Shared;
use super::relay::cgi_status;
use super::request::serve_request;
use crate::observe::{Observation, RequestLine};
use crate::php::{ERROR_CONTENT_TYPE, error_text};

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectionError {
    #[error("{0}")]
    Protocol(#[from] ServerError),
    #[error("writing to the web server: {0}")]
    Write(#[from] io::Error),
    #[error("no record for {0:?}")]
    Stalled(Duration),
    #[error("web server closed the connection mid-request")]
    Closed,
}

/// Serves one web server connection. `stop` closes it once it is idle
/// between requests (a request in flight finishes first).
pub(super) async fn serve_connection<R, W>(
    (read, write): (R, W),
    peer: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    shared.metrics.fastcgi_connections.inc();
    let mut reader = RequestReader::new(read, ParamsLimits::default());
    let mut writer = ResponseWriter::new(write).with_write_timeout(shared.settings.write_timeout);
    let app = &shared.app;
    let peer_text = peer.map_or_else(|| "unix".to_owned(), |p| p.to_string());
    match serve_requests(&mut reader, &mut writer, &shared, peer, &stop).await {
        Ok(()) => debug!(worker = %app, peer = %peer_text, "FastCGI connection closed"),
        // A web server closing mid-request is its client going away;
        // broken protocol and stalls are worth a warning.
        Err(err @ (ConnectionError::Closed | ConnectionError::Write(_))) => {
            info!(worker = %app, peer = %peer_text, "FastCGI connection ended: {err}")
        }
        Err(ConnectionError::Protocol(ServerError::Io(err)))
            if matches!(
                err.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) =>
        {
            info!(worker = %app, peer = %peer_text, "FastCGI connection ended: {err}")
        }
        Err(err) => warn!(worker = %app, peer = %peer_text, "FastCGI connection dropped: {err}"),
    }
    let _ = writer.shutdown().await;
    shared.metrics.fastcgi_connections.dec();
}

/// Reads the next event within `limit`.
pub(super) async fn next<R: AsyncRead + Unpin>(
    reader: &mut RequestReader<R>,
    limit: Duration,
) -> Result<Option<ServerEvent>, ConnectionError> {
    match tokio::time::timeout(limit, reader.next_event()).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ConnectionError::Stalled(limit)),
    }
}

pub(super) async fn serve_requests<R, W>(
    reader: &mut RequestReader<R>,
    writer: &mut ResponseWriter<W>,
    shared: &Shared,
    peer: Option<SocketAddr>,
    stop: &CancellationToken,
) -> Result<(), ConnectionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let idle = shared.settings.idle_timeout;
    let read_timeout = shared.settings.read_timeout;
    loop {
        // Between requests: an idle kept-alive connection closes quietly
        // after idle_timeout, or as soon as the listener stops (a request
        // the web server already sent is served first).
        let event = match reader.buffered_event()? {
            Some(event) => Some(event),
            None => tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                event = tokio::time::timeout(idle, reader.next_event()) => match event {
                    Ok(event) => event?,
                    Err(_) => return Ok(()),
                },
            },
        };
        let Some(event) = event else { return Ok(()) };
        let (request_id, role, keep_conn) = match event {
            ServerEvent::Begin {
                request_id,
                role,
                keep_conn,
            } => (request_id, role, keep_conn),
            other => {
                answer_between(other, writer, shared).await?;
                continue;
            }
        };
        if role != Role::Responder {
            writer.end_request(request_id, 0, ProtocolStatus::UnknownRole, false);
            writer.flush().await?;
            reader.finish_request();
            continue;
        }
        let params = loop {
            match next(reader, read_timeout).await? {
                Some(ServerEvent::Params { params, .. }) => break params,
                Some(ServerEvent::Abort { .. }) => break Params::default(),
                Some(other) => answer_between(other, writer, shared).await?,
                None => return Err(ConnectionError::Closed),
            }
        };
        if params.is_empty() {
            // Aborted before it began.
            writer.end_request(request_id, 0, ProtocolStatus::RequestComplete, false);
            writer.flush().await?;
            reader.finish_request();
            if keep_conn {
                continue;
            }
            return Ok(());
        }
        let mut observation = Observation::new(
            shared.telemetry.clone(),
            None,
            peer,
            RequestLine::FastCgi {
                method: params.get_str("REQUEST_METHOD").unwrap_or("").to_owned(),
                uri: params.get_str("REQUEST_URI").unwrap_or("").to_owned(),
            },
        );
        let result = serve_request(
            reader,
            writer,
            shared,
            request_id,
            &params,
            &mut observation,
        )
        .await;
        reader.finish_request();
        let (status, bytes) = match &result {
            Ok(outcome) => (outcome.status, outcome.bytes),
            Err(_) => (499, 0),
        };
        observation.finish(status, bytes);
        result?;
        if !keep_conn {
            return Ok(());
        }
    }
}

/// Events that may arrive between or alongside requests.
pub(super) async fn answer_between<W: AsyncWrite + Unpin>(
    event: ServerEvent,
    writer: &mut ResponseWriter<W>,
    shared: &Shared,
) -> Result<(), ConnectionError> {
    match event {
        ServerEvent::GetValues(asked) => writer.get_values_result(&asked, shared.values()),
        ServerEvent::UnknownManagement(kind) => writer.unknown_type(kind),
        ServerEvent::Multiplexed { request_id } => {
            writer.end_request(request_id, 0, ProtocolStatus::CantMpxConn, false);
        }
        other => {
            return Err(ConnectionError::Protocol(ServerError::OutOfOrder {
                record_type: match other {
                    ServerEvent::Stdin { .. } | ServerEvent::StdinEnd { .. } => RecordType::Stdin,
                    ServerEvent::Data { .. } => RecordType::Data,
                    ServerEvent::Params { .. } => RecordType::Params,
                    _ => RecordType::AbortRequest,
                },
                request_id: 0,
            }));
        }
    }
    writer.flush().await?;
    Ok(())
}

/// What a request came to, for metrics and logs.
pub(super) struct Outcome {
    pub(super) status: u16,
    pub(super) bytes: u64,
}

/// Answers with a complete CGI response made by tqserver itself.
pub(super) async fn respond<W: AsyncWrite + Unpin>(
    writer: &mut ResponseWriter<W>,
    request_id: u16,
    head: &str,
    body: &[u8],
) -> Result<Outcome, ConnectionError> {
    writer.stdout(request_id, head.as_bytes());
    writer.stdout(request_id, b"\r\n");
    writer.stdout(request_id, body);
    writer.end_request(request_id, 0, ProtocolStatus::RequestComplete, false);
    writer.flush().await?;
    Ok(Outcome {
        status: cgi_status(head.as_bytes()),
        bytes: body.len() as u64,
    })
}

/// Answers with an error of tqserver's own ("Retry-After: 1" when the pool
/// is saturated).
pub(super) async fn respond_error<W: AsyncWrite + Unpin>(
    writer: &mut ResponseWriter<W>,
    request_id: u16,
    status: StatusCode,
    retry_after: bool,
) -> Result<Outcome, ConnectionError> {
    let head = format!(
        "Status: {} {}\r\n{}Content-Type: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        if retry_after {
            "Retry-After: 1\r\n"
        } else {
            ""
        },
        ERROR_CONTENT_TYPE,
    );
    respond(writer, request_id, &head, error_text(status).as_bytes()).await
}
