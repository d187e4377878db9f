//! The reading side of a client connection, and the request body read from
//! it.
//!
//! [`ConnReader`] owns the socket's read half and a buffer that exists only
//! while there are bytes in it, so an idle keep-alive connection holds no
//! buffer at all. While a request with a body is being served the reader
//! travels inside its [`RequestBody`] (bodies stream: nothing is collected
//! whole) and comes back to the connection when the body is dropped,
//! together with what is left of the body, which the connection then
//! discards or gives up on.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use ::h1::chunked::{ChunkError, ChunkedDecoder, Decoded};
pub use ::h1::head::Framing;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::sync::oneshot;

use super::stream::ReadHalf;
use tokio::time::Sleep;

/// Read granularity while a request is coming in.
const READ_CHUNK: usize = 8 * 1024;

pub struct ConnReader {
    half: ReadHalf,
    pub(super) buf: BytesMut,
}

impl ConnReader {
    pub fn new(half: ReadHalf) -> Self {
        Self {
            half,
            buf: BytesMut::new(),
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        self.half.poll_read_buf(cx, &mut self.buf)
    }

    pub async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Whether the socket has something to read (data or EOF).
    pub async fn readable(&self) -> io::Result<()> {
        self.half.readable().await
    }

    /// Reads what is there without waiting; `Ok(0)` at EOF. Readiness can
    /// be stale, so a read that finds nothing gives the buffer back.
    pub fn try_fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        let result = self.half.try_read_buf(&mut self.buf);
        if !matches!(result, Ok(read) if read > 0) {
            self.shrink();
        }
        result
    }

    /// Drops the buffer's memory when it holds nothing (idle connection).
    pub fn shrink(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }
}

/// What remains of a body when it comes back to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remaining {
    Nothing,
    Bytes(u64),
    Chunked,
    /// The client waits for `100 Continue` before sending a body nobody
    /// read: it may send it later or never, so the connection closes.
    NotInvited,
    /// Part of `100 Continue` went out and the rest could not: no response
    /// can follow on this connection.
    Garbled,
    /// The body broke (bad chunk syntax, client gone): the connection cannot
    /// carry another request.
    Broken,
}

/// A request body streamed from the client.
pub struct RequestBody {
    inner: Option<Inner>,
    /// Or a body arriving on an HTTP/2 stream (see `h2::StreamBody`).
    h2: Option<Box<super::h2::StreamBody>>,
}

struct Inner {
    reader: Box<ConnReader>,
    state: State,
    read_timeout: Duration,
    stall: Option<Pin<Box<Sleep>>>,
    home: oneshot::Sender<(Box<ConnReader>, Remaining)>,
    /// Bytes of `100 Continue` still to send before the first wait for body
    /// bytes (the client asked with `Expect: 100-continue`).
    continue_left: usize,
    /// `100 Continue` is to be sent and may not be out yet: over TLS, bytes
    /// written may still wait in rustls.
    continue_unflushed: bool,
}

/// The interim response sent, on the first read, to a client that expects
/// it: only a request whose body is actually wanted gets it.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[derive(Clone, Debug)]
enum State {
    Length(u64),
    Chunked(ChunkedDecoder),
    Broken,
}

impl RequestBody {
    /// A body-less request.
    pub fn empty() -> Self {
        Self {
            inner: None,
            h2: None,
        }
    }

    /// A body arriving on an HTTP/2 stream.
    pub fn h2(body: super::h2::StreamBody) -> Self {
        Self {
            inner: None,
            h2: Some(Box::new(body)),
        }
    }

    /// A body read from `reader` as `framing` says; the reader is sent home
    /// when the body is dropped.
    pub fn new(
        reader: Box<ConnReader>,
        framing: Framing,
        limits: BodyLimits,
    ) -> (Self, oneshot::Receiver<(Box<ConnReader>, Remaining)>) {
        let (home, back) = oneshot::channel();
        let state = match framing {
            Framing::None | Framing::Length(0) => State::Length(0),
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::Chunked(ChunkedDecoder::new(limits.max_bytes)),
        };
        (
            Self {
                inner: Some(Inner {
                    reader,
                    state,
                    read_timeout: limits.read_timeout,
                    stall: None,
                    home,
                    continue_left: if limits.expect_continue {
                        CONTINUE.len()
                    } else {
                        0
                    },
                    continue_unflushed: limits.expect_continue,
                }),
                h2: None,
            },
            back,
        )
    }
}

/// What bounds a request body.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// Longest stall between body bytes.
    pub read_timeout: Duration,
    /// Most bytes in the body.
    pub max_bytes: u64,
    /// The client sent `Expect: 100-continue`.
    pub expect_continue: bool,
}

impl RequestBody {
    /// Whether the client is still waiting for `100 Continue`, which it gets
    /// only when the body is first read: a request answered without reading
    /// its body (a 404, a redirect) never invites the upload.
    pub fn continue_unsent(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| inner.continue_left == CONTINUE.len())
    }

    /// The whole body, if it has a length and already arrived with the head
    /// (a small form post usually does): it can then go to PHP with the
    /// params in one write.
    pub fn take_buffered(&mut self) -> Option<Bytes> {
        let inner = self.inner.as_mut()?;
        let State::Length(length) = &inner.state else {
            return None;
        };
        let length = *length;
        if length == 0 || (inner.reader.buf.len() as u64) < length {
            return None;
        }
        inner.state = State::Length(0);
        Some(inner.reader.buf.split_to(length as usize).freeze())
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let remaining = match &inner.state {
                State::Length(0) => Remaining::Nothing,
                State::Chunked(decoder) if decoder.is_done() => Remaining::Nothing,
                _ if inner.continue_left == CONTINUE.len() => Remaining::NotInvited,
                _ if inner.continue_left > 0 => Remaining::Garbled,
                State::Length(left) => Remaining::Bytes(*left),
                State::Chunked(_) => Remaining::Chunked,
                State::Broken => Remaining::Broken,
            };
            let _ = inner.home.send((inner.reader, remaining));
        }
    }
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The error of a body that would pass `max_body_bytes` (answered with 413).
pub fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        "request body larger than server.max_body_bytes",
    )
}

impl Inner {
    /// Sends what is left of `100 Continue`. The response has not started
    /// (it is written only once the service returns), so these bytes cannot
    /// interleave with it; a write never blocks the task (it waits for the
    /// socket's readiness like any other poll).
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let stream = &self.reader.half;
        loop {
            let written = if self.continue_left > 0 {
                let unsent = &CONTINUE[CONTINUE.len() - self.continue_left..];
                match stream.try_write(unsent) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(written) => {
                        self.continue_left -= written;
                        continue;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => false,
                    Err(err) => return Poll::Ready(Err(err)),
                }
            } else {
                // Over TLS, out of rustls too.
                stream.try_flush()?
            };
            if written {
                self.continue_unflushed = false;
                return Poll::Ready(Ok(()));
            }
            if stream.poll_write_ready(cx)?.is_pending() {
                // A client that takes nothing is bounded like one
                // that sends nothing.
                let timeout = self.read_timeout;
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(stall.as_mut().poll(cx));
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client did not take 100 Continue",
                )));
            }
        }
    }

    /// Reads more, with the read timeout running only while nothing comes.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.continue_unflushed {
            ready!(self.poll_continue(cx))?;
        }
        match self.reader.poll_fill(cx) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "client closed the connection mid-body",
            ))),
            Poll::Ready(Ok(_)) => {
                self.stall = None;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                let timeout = self.read_timeout;
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(stall.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client stopped sending the request body",
                )))
            }
        }
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            match self.state {
                State::Broken => return Poll::Ready(Some(Err(invalid("request body broken")))),
                State::Length(0) => return Poll::Ready(None),
                State::Length(left) => {
                    if self.reader.buf.is_empty() {
                        ready!(self.poll_more(cx))?;
                        continue;
                    }
                    let take = (self.reader.buf.len() as u64).min(left) as usize;
                    self.state = State::Length(left - take as u64);
                    return Poll::Ready(Some(Ok(self.reader.buf.split_to(take).freeze())));
                }
                State::Chunked(ref mut decoder) => match decoder.decode(&mut self.reader.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(Decoded::Done) => return Poll::Ready(None),
                    Ok(Decoded::NeedMore) => ready!(self.poll_more(cx))?,
                    Err(ChunkError::TooLarge) => return Poll::Ready(Some(Err(too_large()))),
                    Err(ChunkError::Invalid(why)) => return Poll::Ready(Some(Err(invalid(why)))),
                },
            }
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Some(h2) = &mut this.h2 {
            return h2
                .poll_data(cx)
                .map(|data| data.map(|r| r.map(Frame::data)));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(inner.poll_data(cx)) {
            Some(Ok(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(Err(err)) => {
                inner.state = State::Broken;
                Poll::Ready(Some(Err(err)))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        if let Some(h2) = &self.h2 {
            return h2.is_end_stream();
        }
        match &self.inner {
            None => true,
            Some(inner) => match &inner.state {
                State::Length(left) => *left == 0,
                State::Chunked(decoder) => decoder.is_done(),
                State::Broken => false,
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(h2) = &self.h2 {
            return h2.size_hint();
        }
        match &self.inner {
            None => SizeHint::with_exact(0),
            Some(inner) => match inner.state {
                State::Length(left) => SizeHint::with_exact(left),
                _ => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::h1::chunked::MAX_TRAILERS;
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (Box<ConnReader>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, _write) = super::super::stream::Stream::Tcp(server).into_split();
        std::mem::forget(_write);
        (Box::new(ConnReader::new(read)), client)
    }

    fn limits(read_timeout: Duration) -> BodyLimits {
        BodyLimits {
            read_timeout,
            max_bytes: 1 << 20,
            expect_continue: false,
        }
    }

    async fn read_all(body: &mut RequestBody) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            out.extend_from_slice(&frame?.into_data().unwrap());
        }
        Ok(out)
    }

    #[tokio::test]
    async fn chunked_bodies_decode_and_leave_the_next_request() {
        let (reader, mut client) = pair().await;
        client
            .write_all(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next")
            .await
            .unwrap();
        let (mut body, back) =
            RequestBody::new(reader, Framing::Chunked, limits(Duration::from_secs(5)));
        assert_eq!(read_all(&mut body).await.unwrap(), b"hello world");
        assert!(http_body::Body::is_end_stream(&body));
        drop(body);
        let (reader, remaining) = back.await.unwrap();
        assert_eq!(remaining, Remaining::Nothing);
        assert_eq!(&reader.buf[..], b"GET /next");
    }

    #[tokio::test]
    async fn length_bodies_stop_at_their_length() {
        let (reader, mut client) = pair().await;
        client.write_all(b"abcdefGET /").await.unwrap();
        let (mut body, back) =
            RequestBody::new(reader, Framing::Length(6), limits(Duration::from_secs(5)));
        assert_eq!(read_all(&mut body).await.unwrap(), b"abcdef");
        drop(body);
        let (reader, remaining) = back.await.unwrap();
        assert_eq!(remaining, Remaining::Nothing);
        assert_eq!(&reader.buf[..], b"GET /");
    }

    #[tokio::test]
    async fn bad_chunks_and_early_eof_are_errors() {
        let (reader, mut client) = pair().await;
        client.write_all(b"zz\r\n").await.unwrap();
        let (mut body, back) =
            RequestBody::new(reader, Framing::Chunked, limits(Duration::from_secs(5)));
        assert!(read_all(&mut body).await.is_err());
        drop(body);
        assert_eq!(back.await.unwrap().1, Remaining::Broken);

        let (reader, mut client) = pair().await;
        client.write_all(b"abc").await.unwrap();
        drop(client);
        let (mut body, back) =
            RequestBody::new(reader, Framing::Length(10), limits(Duration::from_secs(5)));
        assert!(read_all(&mut body).await.is_err());
        drop(body);
        assert_eq!(back.await.unwrap().1, Remaining::Broken);
    }

    #[tokio::test]
    async fn endless_trailers_are_refused() {
        let (reader, mut client) = pair().await;
        let (mut body, _back) =
            RequestBody::new(reader, Framing::Chunked, limits(Duration::from_secs(5)));
        let writer = tokio::spawn(async move {
            client.write_all(b"1\r\nx\r\n0\r\n").await.unwrap();
            for _ in 0..MAX_TRAILERS {
                if client.write_all(b"X-T: 1\r\n").await.is_err() {
                    break;
                }
            }
        });
        let err = read_all(&mut body).await.unwrap_err();
        assert!(err.to_string().contains("trailers too long"), "{err}");
        drop(body);
        writer.abort();
    }

    #[tokio::test]
    async fn a_stalled_body_times_out() {
        let (reader, mut client) = pair().await;
        client.write_all(b"abc").await.unwrap();
        let (mut body, _back) = RequestBody::new(
            reader,
            Framing::Length(10),
            limits(Duration::from_millis(200)),
        );
        let err = read_all(&mut body).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_chunk_past_the_limit_is_refused_at_once() {
        let (reader, mut client) = pair().await;
        // Announces 2 MiB and sends nothing more: no wait for it.
        client.write_all(b"200000\r\n").await.unwrap();
        let (mut body, _back) =
            RequestBody::new(reader, Framing::Chunked, limits(Duration::from_secs(30)));
        let started = std::time::Instant::now();
        let err = read_all(&mut body).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn continue_goes_out_only_when_the_body_is_read() {
        use tokio::io::AsyncReadExt;
        let expecting = BodyLimits {
            expect_continue: true,
            ..limits(Duration::from_secs(5))
        };
        let (reader, mut client) = pair().await;
        let (mut body, _back) = RequestBody::new(reader, Framing::Length(3), expecting);
        assert!(body.continue_unsent());
        let reading = tokio::spawn(async move { read_all(&mut body).await });
        let mut interim = [0u8; CONTINUE.len()];
        client.read_exact(&mut interim).await.unwrap();
        assert_eq!(&interim, CONTINUE);
        client.write_all(b"abc").await.unwrap();
        assert_eq!(reading.await.unwrap().unwrap(), b"abc");

        // Dropped unread: nothing is sent.
        let (reader, mut client) = pair().await;
        let (body, back) = RequestBody::new(reader, Framing::Length(3), expecting);
        drop(body);
        drop(back.await.unwrap());
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_millis(200), client.read_to_end(&mut rest)).await;
        assert!(read.is_err() || rest.is_empty(), "{rest:?}");
    }
}
