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
//!
//! Here: binding `fastcgi.listen` and accepting (through [`crate::accept`]);
//! `connection` serves one web server connection, `request` one request
//! on it, `relay` the worker's response, `script` decides which
//! SCRIPT_FILENAME may run.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use fastcgi::server::ServerValues;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::accept::{Accept, AcceptLoop};
use crate::app::App;
use crate::config::{FastcgiConfig, ListenAddr, ServerSettings};
use crate::metrics::AppMetrics;
use crate::observe::Telemetry;
use crate::router::Router;

mod connection;
mod relay;
mod request;
mod script;

use connection::serve_connection;

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
    app: String,
    router: Arc<ArcSwap<Router>>,
    telemetry: Arc<Telemetry>,
    config: ArcSwap<FastcgiConfig>,
    settings: ServerSettings,
    metrics: AppMetrics,
}

impl Shared {
    pub fn new(
        app: String,
        router: Arc<ArcSwap<Router>>,
        telemetry: Arc<Telemetry>,
        config: FastcgiConfig,
        settings: ServerSettings,
    ) -> Arc<Self> {
        let metrics = telemetry.metrics.for_app(&app);
        Arc::new(Self {
            app,
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
        self.router.load().app_named(&self.app).cloned()
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
        app: Some(shared.app.clone()),
        max_connections: shared.config.load().max_connections,
        setting: "fastcgi.max_connections",
    };
    accept_loop
        .run(&bound, &shutdown, &connections, |accepted| {
            if let Accepted::Tcp(stream, peer) = &accepted {
                if !client_allowed(&shared.config.load().allowed_clients, peer.ip()) {
                    warn!(
                        worker = %shared.app,
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
                        serve_connection(stream.into_split(), Some(peer), shared, stop).await
                    }
                    Accepted::Unix(stream) => {
                        serve_connection(stream.into_split(), None, shared, stop).await
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
    serve_connection(tokio::io::split(stream), None, shared, stop).await;
}
