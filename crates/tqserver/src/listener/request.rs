//! One request: the status and ping pages, the script checks
//! (`super::script`), then the params and the request body to a worker
//! taken from the pool, under the request's deadline; the response is
//! `super::relay`'s.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use bytes::BytesMut;
use fastcgi::client::REQUEST_ID;
use fastcgi::record::{RecordType, put_begin_request, put_stream, put_stream_end};
use fastcgi::server::{RequestReader, ResponseWriter, ServerEvent};
use fastcgi::{Params, ParamsWriter, ProtocolStatus, Role};
use http::StatusCode;
use pool::{KillReason, Lease, RequestInfo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::{debug, error, warn};

use super::Shared;
use super::connection::{ConnectionError, Outcome, answer_between, respond, respond_error};
use super::relay::relay_response;
use super::script::{Refusal, refuse, refuse_with};
use crate::observe::Observation;
use crate::php::upstream::send_head;

/// Checks a write of the request body to the worker. A failed write replaces
/// the worker and answers 502; one still blocked at the request deadline
/// (PHP stopped reading its input) kills the worker as timed out and
/// answers 504.
pub(super) async fn check_stdin<W: AsyncWrite + Unpin>(
    writer: &mut ResponseWriter<W>,
    request_id: u16,
    lease: Lease,
    written: Result<io::Result<()>, tokio::time::error::Elapsed>,
) -> Result<Lease, Result<Outcome, ConnectionError>> {
    let status = match written {
        Ok(Ok(())) => return Ok(lease),
        Ok(Err(err)) => {
            error!(pid = lease.pid(), "writing request body to worker: {err}");
            lease.kill(KillReason::Broken);
            StatusCode::BAD_GATEWAY
        }
        Err(_) => {
            lease.kill(KillReason::Timeout);
            StatusCode::GATEWAY_TIMEOUT
        }
    };
    Err(respond_error(writer, request_id, status, false).await)
}

pub(super) async fn serve_request<R, W>(
    reader: &mut RequestReader<R>,
    writer: &mut ResponseWriter<W>,
    shared: &Shared,
    request_id: u16,
    params: &Params,
    observation: &mut Observation,
) -> Result<Outcome, ConnectionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(app) = shared.app() else {
        return respond_error(writer, request_id, StatusCode::SERVICE_UNAVAILABLE, false).await;
    };
    observation.set_app(app.telemetry.clone());
    let listener = shared.config.load();
    let name = &app.config.name;
    let script_name = params.get_str("SCRIPT_NAME").unwrap_or("");
    if listener.ping_path.as_deref() == Some(script_name) {
        let body = format!("{}\n", listener.ping_response);
        return respond(
            writer,
            request_id,
            "Content-Type: text/plain\r\nExpires: Thu, 01 Jan 1970 00:00:00 GMT\r\nCache-Control: no-cache, no-store, must-revalidate, max-age=0\r\n",
            body.as_bytes(),
        )
        .await;
    }
    if listener.status_path.as_deref() == Some(script_name) {
        let query = params.get_str("QUERY_STRING").unwrap_or("");
        let page = crate::status::render_pool(&app.pool.status(), query);
        let head = format!(
            "Content-Type: {}\r\nExpires: Thu, 01 Jan 1970 00:00:00 GMT\r\nCache-Control: no-cache, no-store, must-revalidate, max-age=0\r\n",
            page.content_type
        );
        return respond(writer, request_id, &head, page.body.as_bytes()).await;
    }

    let Some(script) = params.get("SCRIPT_FILENAME") else {
        warn!(worker = %name, "FastCGI request without SCRIPT_FILENAME refused");
        return refuse_with(writer, request_id, Refusal::Missing).await;
    };
    let script = Path::new(std::ffi::OsStr::from_bytes(script));
    match refuse(&app, &listener, script, script_name) {
        None => {}
        // Logged in full once per link, as on the HTTP front.
        Some(Refusal::Symlink(refusal)) => {
            app.root.report(&script.to_string_lossy(), &refusal);
            return refuse_with(writer, request_id, Refusal::Symlink(refusal)).await;
        }
        Some(refusal @ Refusal::Rule { .. }) => {
            debug!(worker = %name, script = %script.display(), "FastCGI request refused: {refusal}");
            return refuse_with(writer, request_id, refusal).await;
        }
        Some(refusal) => {
            warn!(worker = %name, script = %script.display(), "FastCGI request refused: {refusal}");
            return refuse_with(writer, request_id, refusal).await;
        }
    }

    let info = RequestInfo::new(
        params.get_str("REQUEST_METHOD").unwrap_or(""),
        params.get_str("REQUEST_URI").unwrap_or(""),
        &script.to_string_lossy(),
        params
            .get_str("CONTENT_LENGTH")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0),
    );
    observation.request = Some(info.clone());
    // nginx sends a small request in one write: the body records already
    // here go to PHP with the params, in one write, so PHP wakes once.
    let mut early_body = Vec::new();
    let mut early_bytes = 0;
    let mut body_ended = false;
    let mut first = None;
    loop {
        match reader.buffered_event() {
            Ok(Some(ServerEvent::Stdin { data, request_id })) => {
                if early_bytes + data.len() > EARLY_BODY {
                    first = Some(ServerEvent::Stdin { data, request_id });
                    break;
                }
                early_bytes += data.len();
                early_body.push(data);
            }
            Ok(Some(ServerEvent::StdinEnd { .. })) => {
                body_ended = true;
                break;
            }
            Ok(other) => {
                first = other;
                break;
            }
            Err(err) => return Err(err.into()),
        }
    }
    let sent = send_head(&app, &shared.router, &info, |buf| {
        write_head(buf, params);
        for data in &early_body {
            put_stream(buf, RecordType::Stdin, REQUEST_ID, data);
        }
        if body_ended {
            put_stream_end(buf, RecordType::Stdin, REQUEST_ID);
        }
    })
    .await;
    let (mut lease, deadline) = match sent.ready() {
        Ok((lease, deadline)) => {
            observation.pid = Some(lease.pid());
            observation.queue_waited(lease.queue_wait());
            (lease, deadline)
        }
        Err(unsent) => {
            observation.pid = unsent.pid;
            let retry = unsent.retry_after.is_some();
            return respond_error(writer, request_id, unsent.status, retry).await;
        }
    };

    // The rest of the request body, streamed record by record.
    if !body_ended {
        loop {
            let next = match first
                .take()
                .map_or_else(|| reader.buffered_event(), |e| Ok(Some(e)))
            {
                Ok(Some(event)) => Ok(Ok(Some(event))),
                Ok(None) => {
                    tokio::time::timeout_at(
                        deadline.min(Instant::now() + shared.settings.read_timeout),
                        reader.next_event(),
                    )
                    .await
                }
                Err(err) => Ok(Err(err)),
            };
            let event = match next {
                Ok(Ok(event)) => event,
                Ok(Err(err)) => {
                    end_cut_short(lease).await;
                    return Err(err.into());
                }
                Err(_) => {
                    end_cut_short(lease).await;
                    return Err(ConnectionError::Stalled(shared.settings.read_timeout));
                }
            };
            match event {
                Some(ServerEvent::Stdin { data, .. }) => {
                    // PHP may stop reading its input (a script that never reads
                    // php://input, or one stuck): the request deadline bounds it.
                    let written =
                        tokio::time::timeout_at(deadline, lease.connection().write_stdin(&data))
                            .await;
                    lease = match check_stdin(writer, request_id, lease, written).await {
                        Ok(lease) => lease,
                        Err(outcome) => return outcome,
                    };
                }
                Some(ServerEvent::StdinEnd { .. }) => {
                    let written =
                        tokio::time::timeout_at(deadline, lease.connection().end_stdin()).await;
                    lease = match check_stdin(writer, request_id, lease, written).await {
                        Ok(lease) => lease,
                        Err(outcome) => return outcome,
                    };
                    break;
                }
                Some(ServerEvent::Abort { .. }) => {
                    end_cut_short(lease).await;
                    writer.end_request(request_id, 0, ProtocolStatus::RequestComplete, false);
                    writer.flush().await?;
                    return Ok(Outcome {
                        status: 499,
                        bytes: 0,
                    });
                }
                Some(ServerEvent::Data { .. }) => {}
                Some(other) => answer_between(other, writer, shared).await?,
                None => {
                    end_cut_short(lease).await;
                    return Err(ConnectionError::Closed);
                }
            }
        }
    }
    lease.sent();
    relay_response(reader, writer, shared, &app, request_id, lease, deadline).await
}

/// The web server went away before the body was complete: PHP gets the end
/// of input and the worker returns to the pool when it finishes.
pub(super) async fn end_cut_short(mut lease: Lease) {
    if lease.connection().end_stdin().await.is_ok() {
        lease.sent();
    }
}

/// Most request body sent to PHP together with the params: it fits in the
/// socket's buffer, so the write cannot wait on a script that never reads
/// its input (the rest of a body is written under the request deadline).
pub(super) const EARLY_BODY: usize = 64 * 1024;

pub(super) fn write_head(buf: &mut BytesMut, params: &Params) {
    put_begin_request(buf, REQUEST_ID, Role::Responder, true);
    if params.get("HTTP_PROXY").is_none() {
        put_stream(buf, RecordType::Params, REQUEST_ID, params.raw());
        put_stream_end(buf, RecordType::Params, REQUEST_ID);
    } else {
        // httpoxy: the Proxy request header must not become HTTP_PROXY.
        let mut writer = ParamsWriter::new(buf, REQUEST_ID);
        for (name, value) in params.iter().filter(|(name, _)| *name != b"HTTP_PROXY") {
            writer.pair(name, value);
        }
        writer.finish();
    }
}
