//! The worker's response relayed to the web server, and the lease's fate:
//! returned to the pool when PHP ends the request, killed at the request
//! deadline or on a broken worker connection, left to finish when the web
//! server aborts or goes away.

use fastcgi::ProtocolStatus;
use fastcgi::client::ResponseEvent;
use fastcgi::server::{RequestReader, ResponseWriter, ServerEvent};
use http::StatusCode;
use pool::{KillReason, Lease};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::{error, info};

use super::Shared;
use super::connection::{ConnectionError, Outcome, answer_between, respond_error};
use crate::app::App;
use crate::php::response_head::parse_status;
use crate::php::stderr::StderrRelay;

/// The status in a CGI head ("Status: 404 ..."), 200 without one.
pub(super) fn cgi_status(head: &[u8]) -> u16 {
    let end = memchr::memmem::find(head, b"\r\n\r\n")
        .or_else(|| memchr::memmem::find(head, b"\n\n"))
        .unwrap_or(head.len());
    head[..end]
        .split(|&b| b == b'\n')
        .find_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
            if !name.eq_ignore_ascii_case(b"status") {
                return None;
            }
            let value = std::str::from_utf8(&value[1..]).ok()?.trim();
            // A status nginx would refuse shows as its 502.
            Some(parse_status(value.as_bytes()).map_or(502, |status| status.as_u16()))
        })
        .unwrap_or(200)
}

/// Streams the worker's answer to the web server, watching the web server
/// for an abort at the same time.
pub(super) async fn relay_response<R, W>(
    reader: &mut RequestReader<R>,
    writer: &mut ResponseWriter<W>,
    shared: &Shared,
    app: &App,
    request_id: u16,
    mut lease: Lease,
    deadline: Instant,
) -> Result<Outcome, ConnectionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let name = app.config.name.clone();
    let mut stderr = StderrRelay::new(name.clone(), lease.pid());
    let mut had_stderr = false;
    let mut sent_stdout = false;
    let mut status = 200;
    let mut bytes = 0u64;
    loop {
        // Everything the worker already sent goes out in one write; only
        // then wait (for the worker, an abort, or the deadline).
        let event = match lease.connection().buffered_event() {
            Some(event) => event,
            None => {
                writer.flush().await?;
                tokio::select! {
                    event = lease.connection().next_event() => event,
                    event = reader.next_event() => {
                        match event? {
                            Some(ServerEvent::Abort { .. }) => {
                                info!(worker = %name, pid = lease.pid(), "web server aborted the request");
                                stderr.flush();
                                // Dropping the lease lets PHP finish and returns the worker.
                                drop(lease);
                                writer.end_request(request_id, 0, ProtocolStatus::RequestComplete, had_stderr);
                                writer.flush().await?;
                                return Ok(Outcome { status: 499, bytes });
                            }
                            Some(ServerEvent::Stdin { .. } | ServerEvent::StdinEnd { .. } | ServerEvent::Data { .. }) => {}
                            Some(other) => answer_between(other, writer, shared).await?,
                            None => {
                                stderr.flush();
                                drop(lease);
                                return Err(ConnectionError::Closed);
                            }
                        }
                        continue;
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        stderr.flush();
                        lease.kill(KillReason::Timeout);
                        if sent_stdout {
                            return Err(ConnectionError::Closed);
                        }
                        return respond_error(writer, request_id, StatusCode::GATEWAY_TIMEOUT, false).await;
                    }
                }
            }
        };
        match event {
            Ok(ResponseEvent::Stdout(data)) => {
                if !sent_stdout {
                    status = cgi_status(&data);
                }
                sent_stdout = true;
                bytes += data.len() as u64;
                writer.stdout(request_id, &data);
            }
            Ok(ResponseEvent::Stderr(data)) => {
                had_stderr = true;
                stderr.push(&data);
                writer.stderr(request_id, &data);
            }
            Ok(ResponseEvent::End(end)) => {
                stderr.flush();
                lease.complete();
                writer.end_request(
                    request_id,
                    end.app_status,
                    ProtocolStatus::RequestComplete,
                    had_stderr,
                );
                writer.flush().await?;
                return Ok(Outcome { status, bytes });
            }
            Err(err) => {
                stderr.flush();
                error!(worker = %name, pid = lease.pid(), "worker failed mid-request: {err}");
                lease.kill(KillReason::Broken);
                if sent_stdout {
                    // Headers are out: the web server sees a truncated
                    // response, which nginx reports as upstream error.
                    return Err(ConnectionError::Closed);
                }
                return respond_error(writer, request_id, StatusCode::BAD_GATEWAY, false).await;
            }
        }
    }
}
