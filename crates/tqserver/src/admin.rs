//! The admin endpoint (`admin.listen`; by default the unix socket
//! `tqserver.sock` in the server root, next to the pid file, so that two
//! servers on one machine never compete for a port):
//! - `/metrics`: Prometheus text, or OpenMetrics when the scraper asks;
//! - `/status`: JSON for every pool, the server's phase and the last reload;
//! - `/status/<app>`: php-fpm's status page (`?json`, `?html`, `?xml`,
//!   `?openmetrics`, `&full`);
//! - `/healthz`: the process answers;
//! - `/readyz`: every enabled pool can take work (not while starting,
//!   draining or stopping, nor while a queue is above `ready_max_queue`; see
//!   `readiness`).
//!
//! The endpoint reads the server through [`ServerView`] (snapshots of the
//! apps, the server's phase, the metrics text), so it needs no live pool and
//! knows nothing of the server's own types; `server_view` implements it for
//! the running server.

use std::convert::Infallible;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

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

use crate::accept::{Accept, AcceptLoop};
use crate::config::{ListenAddr, defaults};
use crate::status::{self, AppPage, AppStatus, PoolPage, ReloadPage, ServerPage};

/// What the admin endpoint reads of the running server.
pub trait ServerView: Send + Sync + 'static {
    /// `/metrics`: Prometheus text, or OpenMetrics.
    fn metrics(&self, openmetrics: bool) -> String;
    /// Why `/readyz` fails, if it does.
    fn not_ready_reason(&self) -> Option<String>;
    /// The server's own part of `/status`.
    fn server(&self) -> ServerFacts;
    /// Every app, in routing order.
    fn apps(&self) -> Vec<AppStatus>;
    /// The app (worker) called `name`.
    fn app(&self, name: &str) -> Option<AppStatus>;
    /// Every `type: http` app.
    fn http_apps(&self) -> Vec<crate::status::HttpAppPage> {
        Vec::new()
    }
}

/// The server's own part of `/status`.
#[derive(Clone, Debug)]
pub struct ServerFacts {
    /// starting, running, draining or stopping.
    pub phase: &'static str,
    pub uptime: Duration,
    /// The configuration file.
    pub config: PathBuf,
    pub last_reload: ReloadPage,
}

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

/// Accepts connections until `shutdown`, at most
/// [`defaults::ADMIN_MAX_CONNECTIONS`] at once ([`crate::accept`]).
pub async fn serve<V: ServerView>(
    listener: AdminListener,
    state: Arc<V>,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    let accept_loop = AcceptLoop {
        front: "admin",
        app: None,
        max_connections: defaults::ADMIN_MAX_CONNECTIONS,
        setting: "the admin endpoint's fixed limit",
    };
    accept_loop
        .run(&listener, &shutdown, &connections, |accepted| {
            let (state, builder, shutdown) = (state.clone(), builder.clone(), shutdown.clone());
            Some(async move {
                match accepted {
                    Accepted::Tcp(stream) => connection(stream, state, builder, shutdown).await,
                    Accepted::Unix(stream) => connection(stream, state, builder, shutdown).await,
                }
            })
        })
        .await;
}

/// A connection to the admin endpoint.
pub enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Accept for AdminListener {
    type Connection = Accepted;
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            AdminListener::Tcp(listener) => listener.accept().await.map(|(s, _)| Accepted::Tcp(s)),
            AdminListener::Unix(listener, _) => {
                listener.accept().await.map(|(s, _)| Accepted::Unix(s))
            }
        }
    }
}

/// Serves one connection. On shutdown, a response being written finishes;
/// a connection with nothing in flight closes at once. (hyper's graceful
/// shutdown would wait for a request that a client opened a socket for, or
/// half sent, until its header timeout: the server then lingered 2 s after
/// logging "stopped" whenever a poller held such a connection.)
async fn connection<IO, V>(
    stream: IO,
    state: Arc<V>,
    builder: http1::Builder,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    V: ServerView,
{
    // Responses handed to hyper and not yet sent in full.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let service = service_fn({
        let in_flight = in_flight.clone();
        move |request: Request<Incoming>| {
            let state = state.clone();
            let guard = InFlight::new(&in_flight);
            async move {
                let response = handle(&*state, &request);
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

/// Answers one request; only its head matters.
pub fn handle<B>(view: &impl ServerView, request: &Request<B>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let query = request.uri().query().unwrap_or("");
    match path {
        "/metrics" => {
            let openmetrics = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            let body = view.metrics(openmetrics);
            let content_type = if openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            respond(StatusCode::OK, content_type, body)
        }
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match view.not_ready_reason() {
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
            status::json(&server_page(
                view,
                query.contains("full"),
                SystemTime::now(),
            )),
        ),
        _ => match path.strip_prefix("/status/") {
            Some(name) => match view.app(name) {
                Some(app) => {
                    let page = status::render_pool(&app.pool, query);
                    respond(StatusCode::OK, page.content_type, page.body)
                }
                None => respond(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    format!("no app named {name}\n"),
                ),
            },
            None => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        },
    }
}

/// Every app plus the server's own state, at `now`; each app's processes
/// if `full`.
pub fn server_page(view: &impl ServerView, full: bool, now: SystemTime) -> ServerPage {
    let server = view.server();
    ServerPage {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        phase: server.phase.to_owned(),
        uptime: server.uptime.as_secs(),
        pid: std::process::id(),
        config: server.config.display().to_string(),
        last_reload: server.last_reload,
        pools: view
            .apps()
            .into_iter()
            .map(|app| AppPage {
                pool: PoolPage::new(&app.pool, full, now),
                route: app.route,
                php_version: app.php_version,
            })
            .collect(),
        http_apps: view.http_apps(),
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::status::tests::sample_pool;

    /// A server of one app, made by hand.
    struct FakeServer {
        not_ready: Option<String>,
    }

    impl ServerView for FakeServer {
        fn metrics(&self, openmetrics: bool) -> String {
            format!("metrics openmetrics={openmetrics}\n")
        }

        fn not_ready_reason(&self) -> Option<String> {
            self.not_ready.clone()
        }

        fn server(&self) -> ServerFacts {
            ServerFacts {
                phase: "running",
                uptime: Duration::from_secs(61),
                config: "/srv/site/config/server.yaml".into(),
                last_reload: ReloadPage::default(),
            }
        }

        fn apps(&self) -> Vec<AppStatus> {
            self.app("app").into_iter().collect()
        }

        fn app(&self, name: &str) -> Option<AppStatus> {
            (name == "app").then(|| AppStatus {
                name: "app".into(),
                route: "/".into(),
                php_version: "8.4".into(),
                pool: sample_pool(),
            })
        }
    }

    const READY: FakeServer = FakeServer { not_ready: None };

    async fn get(view: &FakeServer, uri: &str, accept: Option<&str>) -> (u16, String, String) {
        let mut request = Request::get(uri);
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        let response = handle(view, &request.body(()).unwrap());
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        let status = response.status().as_u16();
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn status_lists_every_app_with_route_and_php_version() {
        let (status, content_type, body) = get(&READY, "/status", None).await;
        assert_eq!((status, content_type.as_str()), (200, "application/json"));
        let page: ServerPage = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (page.phase.as_str(), page.uptime, page.pid),
            ("running", 61, std::process::id())
        );
        assert_eq!(page.config, "/srv/site/config/server.yaml");
        assert_eq!(page.pools.len(), 1);
        let app = &page.pools[0];
        assert_eq!((app.route.as_str(), app.php_version.as_str()), ("/", "8.4"));
        assert_eq!(app.pool.pool, "app");
        assert_eq!(app.pool.accepted_conn, 11);
        assert_eq!(app.pool.processes, None);

        let (_, _, body) = get(&READY, "/status/?full", None).await;
        let page: ServerPage = serde_json::from_str(&body).unwrap();
        assert_eq!(page.pools[0].pool.processes.as_ref().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn status_of_one_app_is_php_fpm_s_page() {
        let (status, content_type, body) = get(&READY, "/status/app?json", None).await;
        assert_eq!((status, content_type.as_str()), (200, "application/json"));
        let page: PoolPage = serde_json::from_str(&body).unwrap();
        assert_eq!(page.listen_queue_len, 64);
        let (_, content_type, body) = get(&READY, "/status/app", None).await;
        assert_eq!(content_type, "text/plain");
        assert!(body.starts_with("pool:                 app\n"), "{body}");
        let (status, _, body) = get(&READY, "/status/nope", None).await;
        assert_eq!((status, body.as_str()), (404, "no app named nope\n"));
        let (status, _, _) = get(&READY, "/nope", None).await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        assert_eq!(get(&READY, "/healthz", None).await.2, "ok\n");
        assert_eq!(get(&READY, "/readyz", None).await.0, 200);
        let draining = FakeServer {
            not_ready: Some("draining".into()),
        };
        let (status, _, body) = get(&draining, "/readyz", None).await;
        assert_eq!((status, body.as_str()), (503, "not ready: draining\n"));

        let (_, content_type, body) = get(&READY, "/metrics", None).await;
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert_eq!(body, "metrics openmetrics=false\n");
        let (_, content_type, body) =
            get(&READY, "/metrics", Some("application/openmetrics-text")).await;
        assert!(content_type.starts_with("application/openmetrics-text"));
        assert_eq!(body, "metrics openmetrics=true\n");
    }
}
