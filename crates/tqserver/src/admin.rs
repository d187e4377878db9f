//! The admin endpoint (`admin.listen`; by default the unix socket
//! `tqserver.sock` in the server root, next to the pid file, so that two
//! servers on one machine never compete for a port):
//! - `/metrics`: Prometheus text, or OpenMetrics when the scraper asks;
//! - `/status`: JSON for every pool, the server's phase and the last reload;
//! - `/status/<worker>`: php-fpm's status page (`?json`, `?html`, `?xml`,
//!   `?openmetrics`, `&full`);
//! - `/healthz`: the process answers;
//! - `/readyz`: every enabled pool can take work (not while starting,
//!   draining or stopping, nor while a queue is above `ready_max_queue`; see
//!   `readiness`).

use std::convert::Infallible;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use anyhow::{Context as _, bail};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::config::ListenAddr;
use crate::server::{Phase, ServerState};
use crate::status::{self, AppPage, PoolPage, ReloadPage, ServerPage};

/// The bound admin endpoint. A unix socket is removed when this is dropped.
pub enum AdminListener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

/// A socket path this process bound; unlinked on drop.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds `admin.listen`. The errors say which key to change in `config_file`.
pub async fn bind(listen: &ListenAddr, config_file: &Path) -> anyhow::Result<AdminListener> {
    let config_file = config_file.display();
    match listen {
        ListenAddr::Tcp(addr) => TcpListener::bind(addr)
            .await
            .map(AdminListener::Tcp)
            .with_context(|| {
                format!(
                    "cannot listen on admin.listen {addr} (another tqserver or another program may have it): \
                     set admin.listen in {config_file} to a free address, to a socket path such as \
                     unix:tqserver.sock (the default), or admin.enabled: false"
                )
            }),
        ListenAddr::Unix(path) => {
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_socket() => {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        bail!(
                            "admin.listen {listen} answers already: a tqserver with this configuration is running \
                             (`tqserver status --config {config_file}` shows it); stop it first, or set \
                             admin.listen in {config_file} to another path"
                        );
                    }
                    // Left by a server that did not stop cleanly.
                    let _ = std::fs::remove_file(path);
                }
                Ok(_) => bail!(
                    "admin.listen {listen}: {} exists and is not a socket; set admin.listen in {config_file} to another path",
                    path.display()
                ),
                Err(_) => {}
            }
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let listener = UnixListener::bind(path).with_context(|| {
                format!(
                    "cannot listen on admin.listen {listen}: set admin.listen in {config_file} to a \
                     path this user can create, an address such as 127.0.0.1:9180, or admin.enabled: false"
                )
            })?;
            let socket = SocketFile(path.clone());
            // The owner and its group only: status shows every request's URI.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
                .with_context(|| format!("cannot set the mode of {}", path.display()))?;
            Ok(AdminListener::Unix(listener, socket))
        }
    }
}

pub async fn serve(
    listener: AdminListener,
    state: Arc<ServerState>,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = accept(&listener) => accepted,
        };
        let state = state.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        match accepted {
            Ok(Accepted::Tcp(stream)) => {
                connections.spawn(connection(stream, state, builder, shutdown));
            }
            Ok(Accepted::Unix(stream)) => {
                connections.spawn(connection(stream, state, builder, shutdown));
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &AdminListener) -> std::io::Result<Accepted> {
    match listener {
        AdminListener::Tcp(listener) => listener.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        AdminListener::Unix(listener, _) => listener.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

/// Serves one connection. On shutdown, a response being written finishes;
/// a connection with nothing in flight closes at once. (hyper's graceful
/// shutdown would wait for a request that a client opened a socket for, or
/// half sent, until its header timeout: the server then lingered 2 s after
/// logging "stopped" whenever a poller held such a connection.)
async fn connection<IO>(
    stream: IO,
    state: Arc<ServerState>,
    builder: http1::Builder,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Responses handed to hyper and not yet sent in full.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let service = service_fn({
        let in_flight = in_flight.clone();
        move |request| {
            let state = state.clone();
            let guard = InFlight::new(&in_flight);
            async move {
                let response = handle(&state, request);
                Ok::<_, Infallible>(response.map(|body| TrackedBody {
                    body,
                    _guard: guard,
                }))
            }
        }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                warn!("admin connection: {err}");
            }
        }
        _ = shutdown.cancelled() => {
            if in_flight.load(Ordering::Acquire) > 0 {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    }
}

/// Counts a response as in flight until hyper drops its body (sent).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct TrackedBody {
    body: Full<Bytes>,
    _guard: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

pub fn handle(state: &ServerState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let query = request.uri().query().unwrap_or("");
    match path {
        "/metrics" => {
            let openmetrics = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            let body = state.telemetry.metrics.encode(openmetrics);
            let content_type = if openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            respond(StatusCode::OK, content_type, body)
        }
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match state.not_ready_reason() {
            None => respond(StatusCode::OK, "text/plain", "ready\n".into()),
            Some(reason) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {reason}\n"),
            ),
        },
        "/status" | "/status/" => respond(
            StatusCode::OK,
            "application/json",
            status::json(&server_status(state, query.contains("full"))),
        ),
        _ => match path.strip_prefix("/status/") {
            Some(worker) => {
                let router = state.router.load();
                match router.app_named(worker) {
                    Some(app) => {
                        let page = status::render_pool(&app.pool.status(), query);
                        respond(StatusCode::OK, page.content_type, page.body)
                    }
                    None => respond(
                        StatusCode::NOT_FOUND,
                        "text/plain",
                        format!("no worker named {worker}\n"),
                    ),
                }
            }
            None => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        },
    }
}

/// Every pool plus the server's own state.
pub fn server_status(state: &ServerState, full: bool) -> ServerPage {
    let now = SystemTime::now();
    let router = state.router.load();
    let pools = router
        .apps()
        .iter()
        .map(|app| AppPage {
            pool: PoolPage::new(&app.pool.status(), full, now),
            route: crate::config::validate::display_route(&app.config.route).to_owned(),
            php_version: app.config.php.version.clone(),
        })
        .collect();
    let reload = state.last_reload();
    ServerPage {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        phase: match state.phase() {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::Stopping => "stopping",
        }
        .to_owned(),
        uptime: state.uptime().as_secs(),
        pid: std::process::id(),
        config: state.config_path().display().to_string(),
        last_reload: ReloadPage {
            seq: reload.seq,
            ok: reload.ok,
            at: reload.at_unix,
            errors: reload.errors,
        },
        pools,
    }
}
