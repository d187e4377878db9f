//! The FastCGI listener: tqserver as a drop-in php-fpm behind nginx, Apache
//! (mod_proxy_fcgi) or Caddy.
//!
//! A web server connects to `fastcgi.listen` and speaks the responder role;
//! each request goes to the app's pool (sharing its dispatch, queue, timeouts
//! and stats with HTTP traffic) over the pool's kept-alive worker
//! connections. Params pass through as sent, with the HTTP front's safety:
//! only `php.limit_extensions` run, SCRIPT_FILENAME must lie inside the
//! document root (unless `check_document_root: false`) and be reached
//! through symlinks `security.symlinks` follows, the app's `rules:` apply
//! to it, and HTTP_PROXY is dropped (httpoxy). STDIN and STDOUT stream;
//! STDERR goes back to the web server and to the log.
//!
//! One request at a time per connection (FCGI_MPXS_CONNS=0, as php-fpm): a
//! second request id gets END_REQUEST(CANT_MPX_CONN). ABORT_REQUEST ends the
//! request at once; the worker returns to the pool when PHP finishes. A peer
//! that breaks the protocol or stalls loses its connection, with a log line;
//! everyone else is unaffected.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fastcgi::client::{REQUEST_ID, ResponseEvent};
use fastcgi::record::{RecordType, put_begin_request, put_stream, put_stream_end};
use fastcgi::server::{RequestReader, ResponseWriter, ServerError, ServerEvent, ServerValues};
use fastcgi::{Params, ParamsLimits, ParamsWriter, ProtocolStatus, Role};
use http::StatusCode;
use pool::{KillReason, Lease, RequestInfo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::accept::{Accept, AcceptLoop};
use crate::app::App;
use crate::config::{FastcgiConfig, ListenAddr, ServerSettings};
use crate::docroot::Location;
use crate::docroot::symlinks::SymlinkRefusal;
use crate::metrics::AppMetrics;
use crate::observe::{Observation, RequestLine, Telemetry};
use crate::php::response_head::parse_status;
use crate::php::stderr::StderrRelay;
use crate::php::upstream::send_head;
use crate::php::{ERROR_CONTENT_TYPE, error_text};
use crate::router::Router;
use crate::rules::{DenyStatus, Verdict};
use arc_swap::ArcSwap;

/// A bound listener, before it serves.
pub enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Binds `fastcgi.listen`; a unix socket gets its owner, group and mode.
pub async fn bind(config: &FastcgiConfig) -> io::Result<Bound> {
    match &config.listen {
        ListenAddr::Tcp(addr) => Ok(Bound::Tcp(TcpListener::bind(addr).await?)),
        ListenAddr::Unix(path) => {
            remove_stale_socket(path)?;
            let listener = UnixListener::bind(path)?;
            apply_access(config)?;
            Ok(Bound::Unix(listener))
        }
    }
}

/// Gives a unix socket its mode, owner and group (a reload that only
/// changes those applies them to the running socket).
pub fn apply_access(config: &FastcgiConfig) -> io::Result<()> {
    let ListenAddr::Unix(path) = &config.listen else {
        return Ok(());
    };
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(config.mode.unwrap_or(0o660)),
    )?;
    if config.owner.is_some() || config.group.is_some() {
        std::os::unix::fs::chown(path, config.owner, config.group)?;
    }
    Ok(())
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

/// What every connection of one listener shares. The app is looked up per
/// request, so after a reload kept-alive web server connections move to the
/// new pool; the listener settings can be swapped without rebinding.
pub struct Shared {
    worker: String,
    router: Arc<ArcSwap<Router>>,
    telemetry: Arc<Telemetry>,
    config: ArcSwap<FastcgiConfig>,
    settings: ServerSettings,
    metrics: AppMetrics,
}

impl Shared {
    pub fn new(
        worker: String,
        router: Arc<ArcSwap<Router>>,
        telemetry: Arc<Telemetry>,
        config: FastcgiConfig,
        settings: ServerSettings,
    ) -> Arc<Self> {
        let metrics = telemetry.metrics.for_app(&worker);
        Arc::new(Self {
            worker,
            router,
            telemetry,
            config: ArcSwap::from_pointee(config),
            settings,
            metrics,
        })
    }

    /// New listener settings (same address) from a reload.
    pub fn reconfigure(&self, config: FastcgiConfig) {
        self.config.store(Arc::new(config));
    }

    fn app(&self) -> Option<Arc<App>> {
        self.router.load().app_named(&self.worker).cloned()
    }

    fn values(&self) -> ServerValues {
        let max = self.config.load().max_connections.max(1) as u32;
        ServerValues {
            max_conns: max,
            max_reqs: max,
            mpxs_conns: false,
        }
    }
}

/// Accepts connections until `shutdown`, at most `fastcgi.max_connections`
/// at once ([`crate::accept`]); a TCP client not in
/// `fastcgi.allowed_clients` is closed at once.
pub async fn serve(
    bound: Bound,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    let accept_loop = AcceptLoop {
        front: "FastCGI listener",
        app: Some(shared.worker.clone()),
        max_connections: shared.config.load().max_connections,
        setting: "fastcgi.max_connections",
    };
    accept_loop
        .run(&bound, &shutdown, &connections, |accepted| {
            if let Accepted::Tcp(stream, peer) = &accepted {
                if !client_allowed(&shared.config.load().allowed_clients, peer.ip()) {
                    warn!(
                        worker = %shared.worker,
                        %peer,
                        "FastCGI connection refused: client not in fastcgi.allowed_clients"
                    );
                    return None;
                }
                let _ = stream.set_nodelay(true);
            }
            let (shared, stop) = (shared.clone(), shutdown.clone());
            Some(async move {
                match accepted {
                    Accepted::Tcp(stream, peer) => {
                        connection(stream.into_split(), Some(peer), shared, stop).await
                    }
                    Accepted::Unix(stream) => {
                        connection(stream.into_split(), None, shared, stop).await
                    }
                }
            })
        })
        .await;
    if let Bound::Unix(listener) = &bound
        && let Ok(addr) = listener.local_addr()
        && let Some(path) = addr.as_pathname()
    {
        let _ = std::fs::remove_file(path);
    }
}

/// A connection from a web server.
pub enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

impl Accept for Bound {
    type Connection = Accepted;
    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Bound::Tcp(listener) => listener
                .accept()
                .await
                .map(|(stream, peer)| Accepted::Tcp(stream, peer)),
            Bound::Unix(listener) => listener
                .accept()
                .await
                .map(|(stream, _)| Accepted::Unix(stream)),
        }
    }
}

fn client_allowed(allowed: &[IpAddr], peer: IpAddr) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
        v4 => v4,
    };
    allowed.contains(&peer)
}

/// Serves one web server connection over any byte stream, as [`serve`]
/// does for each accepted socket (no peer address: as over a unix socket).
/// Tests drive the listener in-process through it, over
/// `tokio::io::duplex`.
pub async fn serve_stream<S>(stream: S, shared: Arc<Shared>, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    connection(tokio::io::split(stream), None, shared, stop).await;
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
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
async fn connection<R, W>(
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
    let worker = &shared.worker;
    let peer_text = peer.map_or_else(|| "unix".to_owned(), |p| p.to_string());
    match serve_requests(&mut reader, &mut writer, &shared, peer, &stop).await {
        Ok(()) => debug!(worker = %worker, peer = %peer_text, "FastCGI connection closed"),
        // A web server closing mid-request is its client going away;
        // broken protocol and stalls are worth a warning.
        Err(err @ (ConnectionError::Closed | ConnectionError::Write(_))) => {
            info!(worker = %worker, peer = %peer_text, "FastCGI connection ended: {err}")
        }
        Err(ConnectionError::Protocol(ServerError::Io(err)))
            if matches!(
                err.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) =>
        {
            info!(worker = %worker, peer = %peer_text, "FastCGI connection ended: {err}")
        }
        Err(err) => warn!(worker = %worker, peer = %peer_text, "FastCGI connection dropped: {err}"),
    }
    let _ = writer.shutdown().await;
    shared.metrics.fastcgi_connections.dec();
}

/// Reads the next event within `limit`.
async fn next<R: AsyncRead + Unpin>(
    reader: &mut RequestReader<R>,
    limit: Duration,
) -> Result<Option<ServerEvent>, ConnectionError> {
    match tokio::time::timeout(limit, reader.next_event()).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ConnectionError::Stalled(limit)),
    }
}

async fn serve_requests<R, W>(
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
async fn answer_between<W: AsyncWrite + Unpin>(
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
struct Outcome {
    status: u16,
    bytes: u64,
}

/// Answers with a complete CGI response made by tqserver itself.
async fn respond<W: AsyncWrite + Unpin>(
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
async fn respond_error<W: AsyncWrite + Unpin>(
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

/// php-fpm's answers to a script it will not run.
async fn refuse_with<W: AsyncWrite + Unpin>(
    writer: &mut ResponseWriter<W>,
    request_id: u16,
    refusal: Refusal,
) -> Result<Outcome, ConnectionError> {
    let (head, body): (&str, &[u8]) = match refusal {
        Refusal::Extension
        | Refusal::OutsideRoot
        | Refusal::Symlink(_)
        | Refusal::Rule {
            status: DenyStatus::Forbidden,
            ..
        } => (
            "Status: 403 Forbidden\r\nContent-Type: text/plain\r\n",
            b"Access denied.\n",
        ),
        Refusal::Missing
        | Refusal::Rule {
            status: DenyStatus::NotFound,
            ..
        } => (
            "Status: 404 Not Found\r\nContent-Type: text/plain\r\n",
            b"File not found.\n",
        ),
    };
    respond(writer, request_id, head, body).await
}

/// Checks a write of the request body to the worker. A failed write replaces
/// the worker and answers 502; one still blocked at the request deadline
/// (PHP stopped reading its input) kills the worker as timed out and
/// answers 504.
async fn check_stdin<W: AsyncWrite + Unpin>(
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

/// The status in a CGI head ("Status: 404 ..."), 200 without one.
fn cgi_status(head: &[u8]) -> u16 {
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

async fn serve_request<R, W>(
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

/// Streams the worker's answer to the web server, watching the web server
/// for an abort at the same time.
async fn relay_response<R, W>(
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

/// The web server went away before the body was complete: PHP gets the end
/// of input and the worker returns to the pool when it finishes.
async fn end_cut_short(mut lease: Lease) {
    if lease.connection().end_stdin().await.is_ok() {
        lease.sent();
    }
}

/// Most request body sent to PHP together with the params: it fits in the
/// socket's buffer, so the write cannot wait on a script that never reads
/// its input (the rest of a body is written under the request deadline).
const EARLY_BODY: usize = 64 * 1024;

fn write_head(buf: &mut BytesMut, params: &Params) {
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

#[derive(Debug)]
enum Refusal {
    Extension,
    OutsideRoot,
    Missing,
    /// Inside the root as written, through a symlink the app's
    /// `security.symlinks` does not follow.
    Symlink(SymlinkRefusal),
    /// A `rules:` entry denies the path, or keeps scripts from running
    /// there (`static_only`: 403).
    Rule {
        status: DenyStatus,
        rule: usize,
        static_only: bool,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Extension => f.write_str("extension not in php.limit_extensions"),
            Refusal::OutsideRoot => f.write_str("SCRIPT_FILENAME outside the document root"),
            Refusal::Missing => f.write_str("SCRIPT_FILENAME does not exist"),
            Refusal::Symlink(refusal) => write!(f, "{refusal}"),
            Refusal::Rule {
                rule,
                static_only: true,
                ..
            } => write!(f, "rules[{rule}] is static_only: no script runs there"),
            Refusal::Rule { rule, status, .. } => {
                write!(f, "denied by rules[{rule}] ({})", status.code())
            }
        }
    }
}

fn refuse(
    app: &App,
    listener: &FastcgiConfig,
    script: &Path,
    script_name: &str,
) -> Option<Refusal> {
    let config = &app.config;
    let name = script.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !config.is_executable(name) {
        return Some(Refusal::Extension);
    }
    if let Some(refusal) = refuse_by_rules(app, script, script_name) {
        return Some(refusal);
    }
    if !listener.check_document_root {
        return None;
    }
    match app.root.locate(script, config.security.symlinks) {
        Location::Inside => None,
        Location::Outside => Some(Refusal::OutsideRoot),
        Location::Refused(refusal) => Some(Refusal::Symlink(refusal)),
        // Lexically outside is outside, whether or not it exists.
        Location::Missing if !script.starts_with(&config.document_root) => {
            Some(Refusal::OutsideRoot)
        }
        Location::Missing => Some(Refusal::Missing),
    }
}

/// The app's `rules:` on the script's path below the document root (from
/// SCRIPT_FILENAME) and on SCRIPT_NAME below the app's route: either one
/// matching a rule is enough.
fn refuse_by_rules(app: &App, script: &Path, script_name: &str) -> Option<Refusal> {
    let rules = &app.config.rules;
    if rules.is_empty() {
        return None;
    }
    let by_file = app.root.relative_path(script);
    let route = app.config.route.as_bytes();
    let name = script_name.as_bytes();
    let by_name = name
        .strip_prefix(route)
        .filter(|rest| rest.is_empty() || rest.starts_with(b"/"))
        .unwrap_or(name);
    let mut verdict = Verdict::Allow;
    for path in by_file.as_deref().into_iter().chain([by_name]) {
        // A path that climbs out of its start is judged elsewhere.
        let Some(segments) = crate::rules::normalize(path) else {
            continue;
        };
        match rules.verdict(&segments) {
            Verdict::Allow => {}
            deny @ Verdict::Deny { .. } => {
                verdict = deny;
                break;
            }
            static_only => verdict = static_only,
        }
    }
    match verdict {
        Verdict::Allow => None,
        Verdict::Deny { status, rule } => Some(Refusal::Rule {
            status,
            rule,
            static_only: false,
        }),
        Verdict::StaticOnly { rule } => Some(Refusal::Rule {
            status: DenyStatus::Forbidden,
            rule,
            static_only: true,
        }),
    }
}

use std::os::unix::ffi::OsStrExt;
