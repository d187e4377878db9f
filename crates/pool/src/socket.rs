//! Worker sockets: bound by tqserver, handed to the worker as fd 0, and
//! connected to once for the worker's whole life.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::config::SocketKind;

/// Listen backlog for a worker socket; only tqserver ever connects.
const BACKLOG: i32 = 16;

/// A bound, listening socket ready to become a worker's fd 0.
pub struct BoundSocket {
    pub listener: OwnedFd,
    pub addr: WorkerAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for WorkerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

/// Creates the private socket directory (0700) if needed.
pub fn prepare_socket_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Numbers unix socket names across every pool of this process, so two
/// generations of a pool (old and new during a reload) never pick the same
/// name and unlink each other's socket before connecting.
static SOCKET_SEQ: AtomicU64 = AtomicU64::new(0);

/// Binds a listening socket for worker `slot` of pool `pool`.
pub fn bind(kind: &SocketKind, pool: &str, slot: u64) -> io::Result<BoundSocket> {
    match kind {
        SocketKind::Unix { dir } => {
            let seq = SOCKET_SEQ.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{pool}-{slot}.{seq}.sock"));
            // A stale file from a crashed run (same pid reused) would make
            // bind fail.
            match std::fs::remove_file(&path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
            let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
            socket.bind(&socket2::SockAddr::unix(&path)?)?;
            socket.listen(BACKLOG)?;
            Ok(BoundSocket {
                listener: socket.into(),
                addr: WorkerAddr::Unix(path),
            })
        }
        SocketKind::Tcp { host, ports } => {
            let mut last_err = None;
            for port in ports.clone() {
                let addr = SocketAddr::new(*host, port);
                let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
                socket.set_reuse_address(true)?;
                match socket.bind(&addr.into()) {
                    Ok(()) => {
                        socket.listen(BACKLOG)?;
                        return Ok(BoundSocket {
                            listener: socket.into(),
                            addr: WorkerAddr::Tcp(addr),
                        });
                    }
                    Err(err) if err.kind() == io::ErrorKind::AddrInUse => last_err = Some(err),
                    Err(err) => return Err(err),
                }
            }
            Err(last_err.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::AddrNotAvailable, "empty worker port range")
            }))
        }
    }
}

/// Connects to a bound socket. Succeeds before the worker calls `accept`
/// (the kernel queues the connection), so no readiness polling is needed.
pub async fn connect(addr: &WorkerAddr) -> io::Result<WorkerStream> {
    match addr {
        WorkerAddr::Unix(path) => {
            let stream = UnixStream::connect(path).await?;
            // Nobody else may reach this worker: the listening socket lives on
            // as the worker's fd 0 without a name.
            let _ = std::fs::remove_file(path);
            Ok(WorkerStream::Unix(stream))
        }
        WorkerAddr::Tcp(addr) => {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(WorkerStream::Tcp(stream))
        }
    }
}

/// The kept-alive connection to one worker.
#[derive(Debug)]
pub enum WorkerStream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl AsyncRead for WorkerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WorkerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unix_socket_is_reachable_before_accept_and_then_unnamed() {
        let dir = tempfile::tempdir().unwrap();
        let sock_dir = dir.path().join("sockets");
        prepare_socket_dir(&sock_dir).unwrap();
        let mode = std::fs::metadata(&sock_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let bound = bind(
            &SocketKind::Unix {
                dir: sock_dir.clone(),
            },
            "blog",
            1,
        )
        .unwrap();
        // Nobody has called accept yet, still the connect succeeds.
        let _stream = connect(&bound.addr).await.unwrap();
        let WorkerAddr::Unix(path) = &bound.addr else {
            unreachable!()
        };
        assert!(!path.exists(), "socket path must be unlinked after connect");
    }

    #[tokio::test]
    async fn tcp_range_skips_ports_in_use() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let kind = SocketKind::Tcp {
            host: "127.0.0.1".parse().unwrap(),
            ports: port..port.saturating_add(50),
        };
        let bound = bind(&kind, "blog", 1).unwrap();
        let WorkerAddr::Tcp(addr) = bound.addr else {
            unreachable!()
        };
        assert_ne!(addr.port(), port);
        let _stream = connect(&WorkerAddr::Tcp(addr)).await.unwrap();
    }
}
