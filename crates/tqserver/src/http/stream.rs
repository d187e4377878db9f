//! The byte stream under an HTTP/1.1 connection: plain TCP, or TLS over TCP.
//!
//! [`super::h1`] needs more than `AsyncRead + AsyncWrite` to keep an idle
//! connection cheap and a response one system call: it waits for
//! *readiness* with no read buffer, then reads what is there without
//! waiting; it writes a head and a body with one `writev`; and it learns
//! whether the socket took a write at once (if not, a streamed PHP body
//! spills, see `Body::spill`). Both streams offer exactly that here.
//!
//! An enum rather than a type parameter: the read half travels inside the
//! request body the service sees, so a parameter would spread through the
//! service and PHP code, and a trait object would cost an indirect call per
//! read for nothing (there are two kinds of stream, known here).
//!
//! TLS: after the handshake (tokio-rustls) the TCP socket and the rustls
//! session are shared by the two halves, the session behind a mutex that is
//! only held inside a read or a write, never across a wait. Readiness is the
//! TCP socket's, with one twist: decrypted bytes may already wait inside
//! rustls, which the socket knows nothing of. Encrypted bytes rustls has not
//! yet sent are flushed before any new write, and a write is complete only
//! once they are all out ([`WriteHalf::try_flush`]).

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::rustls::ServerConnection;

/// A client connection's stream, before it is split into halves.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    /// What requests on this stream carry as their [`super::Tls`]
    /// extension; `None` over plain TCP.
    pub fn tls(&self) -> Option<super::Tls> {
        match self {
            Stream::Tcp(_) => None,
            Stream::Tls(tls) => Some(super::Tls {
                server_name: tls.get_ref().1.server_name().map(Arc::from),
            }),
        }
    }

    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(tcp) => {
                let (read, write) = tcp.into_split();
                (ReadHalf::Tcp(read), WriteHalf::Tcp(write))
            }
            Stream::Tls(tls) => {
                let (tcp, session) = tls.into_inner();
                let shared = Arc::new(TlsShared {
                    tcp,
                    session: Mutex::new(session),
                });
                (ReadHalf::Tls(shared.clone()), WriteHalf::Tls(shared))
            }
        }
    }
}

/// A TLS connection after its handshake, shared by its two halves.
pub struct TlsShared {
    tcp: TcpStream,
    session: Mutex<ServerConnection>,
}

pub enum ReadHalf {
    Tcp(OwnedReadHalf),
    Tls(Arc<TlsShared>),
}

pub enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Tls(Arc<TlsShared>),
}

/// Reads what is there into `buf`'s spare room. A read that leaves room
/// took all the socket had, so the socket's readiness is cleared: the next
/// wait goes to epoll instead of a read that would find nothing (one
/// `recvfrom` returning EAGAIN fewer per request, as tokio's own `poll_read`
/// does after a short read). Data that arrives meanwhile is a new epoll
/// event, which the clear does not touch.
fn try_read_draining(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut read = 0;
    let result = tcp.try_io(tokio::io::Interest::READABLE, || {
        read = tcp.try_read_buf(buf)?;
        if read > 0 && read < room {
            // Not an error: tells try_io to clear the readiness it saw.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(read)
    });
    match result {
        Err(err) if err.kind() == io::ErrorKind::WouldBlock && read > 0 => Ok(read),
        result => result,
    }
}

/// Either half, seen as the whole stream (a reader writes too: `100
/// Continue`, and TLS alerts or key updates).
#[derive(Clone, Copy)]
enum StreamRef<'a> {
    Tcp(&'a TcpStream),
    Tls(&'a TlsShared),
}

impl ReadHalf {
    fn stream(&self) -> StreamRef<'_> {
        match self {
            ReadHalf::Tcp(half) => StreamRef::Tcp(half.as_ref()),
            ReadHalf::Tls(shared) => StreamRef::Tls(shared),
        }
    }

    /// Reads what is there without waiting, appending to `buf`; `Ok(0)` at
    /// EOF, `WouldBlock` if nothing is there.
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self.stream() {
            StreamRef::Tcp(tcp) => try_read_draining(tcp, buf),
            StreamRef::Tls(tls) => tls.try_read_buf(buf),
        }
    }

    /// Ready when a read may find something (data or EOF). Readiness can be
    /// stale, or a TLS record incomplete: a read may still find nothing.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            StreamRef::Tcp(tcp) => tcp.poll_read_ready(cx),
            StreamRef::Tls(tls) => {
                if tls.plaintext_waiting() {
                    return Poll::Ready(Ok(()));
                }
                tls.tcp.poll_read_ready(cx)
            }
        }
    }

    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// Reads into `buf`, waiting until something (or EOF) is there.
    pub fn poll_read_buf(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.try_read_buf(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.poll_read_ready(cx))?;
                }
                result => return Poll::Ready(result),
            }
        }
    }

    /// Writes from the read side (`100 Continue`), as [`WriteHalf::try_write_vectored`].
    pub fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        self.stream().try_write_vectored(&[IoSlice::new(bytes)])
    }

    pub fn try_flush(&self) -> io::Result<bool> {
        self.stream().try_flush()
    }

    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_write_ready(cx)
    }
}

impl WriteHalf {
    fn stream(&self) -> StreamRef<'_> {
        match self {
            WriteHalf::Tcp(half) => StreamRef::Tcp(half.as_ref()),
            WriteHalf::Tls(shared) => StreamRef::Tls(shared),
        }
    }

    /// Writes what the stream takes without waiting; `WouldBlock` if it
    /// takes nothing. Over TLS, bytes taken may still wait in rustls:
    /// [`Self::try_flush`] says when they are out.
    pub fn try_write_vectored(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        self.stream().try_write_vectored(slices)
    }

    /// Sends what earlier writes left waiting; `Ok(true)` once nothing is
    /// left (always, over plain TCP).
    pub fn try_flush(&self) -> io::Result<bool> {
        self.stream().try_flush()
    }

    pub async fn writable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.stream().poll_write_ready(cx)).await
    }

    /// Ends the sending side: a FIN (after TLS's close_notify). Waits at
    /// most `timeout` for the socket to take what is left.
    pub async fn shutdown(&mut self, timeout: std::time::Duration) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        match self {
            WriteHalf::Tcp(half) => half.shutdown().await,
            WriteHalf::Tls(tls) => {
                lock(&tls.session).send_close_notify();
                tokio::time::timeout(timeout, async {
                    while !tls.try_flush()? {
                        tls.tcp.writable().await?;
                    }
                    io::Result::Ok(())
                })
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                nix::sys::socket::shutdown(tls.tcp.as_raw_fd(), nix::sys::socket::Shutdown::Write)
                    .map_err(io::Error::from)
            }
        }
    }
}

impl StreamRef<'_> {
    fn try_write_vectored(self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            StreamRef::Tcp(tcp) => tcp.try_write_vectored(slices),
            StreamRef::Tls(tls) => tls.try_write_vectored(slices),
        }
    }

    fn try_flush(self) -> io::Result<bool> {
        match self {
            StreamRef::Tcp(_) => Ok(true),
            StreamRef::Tls(tls) => tls.try_flush(),
        }
    }

    fn poll_write_ready(self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            StreamRef::Tcp(tcp) => tcp.poll_write_ready(cx),
            StreamRef::Tls(tls) => tls.tcp.poll_write_ready(cx),
        }
    }
}

/// The session lock. Held only within one read or write; a panic while
/// holding it cannot leave the session half-changed in a way that matters
/// more than the connection, so a poisoned lock is used as is.
fn lock(session: &Mutex<ServerConnection>) -> MutexGuard<'_, ServerConnection> {
    session
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The TCP socket as `std::io` for rustls, without waiting: `WouldBlock`
/// when the socket has nothing (or takes nothing), which also clears the
/// socket's readiness so the next wait is real.
struct NonBlocking<'a>(&'a TcpStream);

impl Read for NonBlocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for NonBlocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsShared {
    fn plaintext_waiting(&self) -> bool {
        let mut session = lock(&self.session);
        session
            .process_new_packets()
            .is_ok_and(|state| state.plaintext_bytes_to_read() > 0 || state.peer_has_closed())
    }

    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut session = lock(&self.session);
        loop {
            // Decrypted bytes first.
            if buf.capacity() == buf.len() {
                buf.reserve(4096);
            }
            let start = buf.len();
            let room = buf.capacity() - start;
            buf.resize(start + room, 0);
            let read = session.reader().read(&mut buf[start..]);
            buf.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(read) => return Ok(read),
                // A peer that closes without close_notify: as good as an
                // EOF for HTTP, whose own framing tells a cut message.
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
            // None: more records from the socket.
            match session.read_tls(&mut NonBlocking(&self.tcp)) {
                Ok(0) => {
                    // EOF: rustls says next time round how it ended.
                    let _ = session.process_new_packets();
                    if session.wants_read() {
                        return Ok(0);
                    }
                }
                Ok(_) => {
                    let processed = session.process_new_packets();
                    // Alerts, key updates, tickets: out if the socket
                    // takes them now, else with the next write.
                    if session.wants_write() {
                        let _ = flush(&mut session, &self.tcp);
                    }
                    if let Err(err) = processed {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, err));
                    }
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn try_write_vectored(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut session = lock(&self.session);
        if !flush(&mut session, &self.tcp)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let taken = session.writer().write_vectored(slices)?;
        flush(&mut session, &self.tcp)?;
        Ok(taken)
    }

    fn try_flush(&self) -> io::Result<bool> {
        flush(&mut lock(&self.session), &self.tcp)
    }
}

/// Sends the encrypted bytes rustls holds; `Ok(true)` once none are left.
fn flush(session: &mut ServerConnection, tcp: &TcpStream) -> io::Result<bool> {
    while session.wants_write() {
        match session.write_tls(&mut NonBlocking(tcp)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(err) => return Err(err),
        }
    }
    Ok(true)
}
