//! The response body type of the HTTP front: nothing, bytes in memory, a file
//! read in chunks, a PHP response streamed from the worker as it arrives, or
//! a response streamed from an http app's instance.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncReadExt;

use super::compress::CompressStream;
use super::php::PhpStream;
use crate::httpapp::proxy::ProxiedBody;

/// Chunk size for files too large to send in one piece.
const FILE_CHUNK: usize = 64 * 1024;

pub enum Body {
    Empty,
    Bytes(Option<Bytes>),
    File(FileStream),
    Php(Box<PhpStream>),
    /// Chunks from a task of our own (development mode's event stream and
    /// pages with its script added).
    Channel(tokio::sync::mpsc::Receiver<io::Result<Bytes>>),
    /// Another body, compressed as it streams (compress.rs).
    Compressed(Box<CompressStream>),
    /// A response streamed from a `type: http` app's instance.
    Proxied(Box<ProxiedBody>),
}

/// The length a response declares (HTTP/1.1's Content-Length, HTTP/2's
/// content-length), if it knows one: the body's exact size, else a
/// Content-Length set by PHP. A HEAD response describes the body it would
/// have had; PHP sends none, so only its own Content-Length can say that.
pub fn declared_length(parts: &http::response::Parts, body: &Body, is_head: bool) -> Option<u64> {
    use http_body::Body as _;
    let exact = body.size_hint().exact();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if !is_head {
        return exact.or(declared);
    }
    if parts
        .extensions
        .get::<super::php::LengthUnknownForHead>()
        .is_some()
    {
        declared
    } else {
        declared.or(exact)
    }
}

impl Body {
    pub fn text(text: impl Into<Bytes>) -> Self {
        Self::Bytes(Some(text.into()))
    }

    /// The client is slower than the body's source: a PHP response moves
    /// into a buffer so its worker is not held (see `PhpStream::spill`).
    pub fn spill(&mut self) {
        match self {
            Body::Php(stream) => stream.spill(),
            Body::Compressed(stream) => stream.inner.spill(),
            _ => {}
        }
    }

    /// The PHP response this body streams, if it is one (compressed or not).
    pub fn php_stream(&mut self) -> Option<&mut PhpStream> {
        match self {
            Body::Php(stream) => Some(stream),
            Body::Compressed(stream) => stream.inner.php_stream(),
            _ => None,
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Bytes(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::File(file) => file
                .poll_chunk(cx)
                .map(|chunk| chunk.map(|r| r.map(Frame::data))),
            Body::Php(php) => php
                .poll_chunk(cx)
                .map(|chunk| chunk.map(|r| r.map(Frame::data))),
            Body::Channel(rx) => rx
                .poll_recv(cx)
                .map(|chunk| chunk.map(|r| r.map(Frame::data))),
            Body::Compressed(stream) => stream
                .poll_chunk(cx)
                .map(|chunk| chunk.map(|r| r.map(Frame::data))),
            Body::Proxied(proxied) => proxied
                .poll_chunk(cx)
                .map(|chunk| chunk.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Bytes(bytes) => bytes.is_none(),
            Body::File(file) => file.remaining == 0,
            Body::Php(php) => php.is_done(),
            Body::Channel(rx) => rx.is_closed() && rx.is_empty(),
            Body::Compressed(stream) => stream.is_done(),
            Body::Proxied(proxied) => proxied.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Bytes(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Body::File(file) => SizeHint::with_exact(file.remaining),
            Body::Php(_) | Body::Channel(_) | Body::Compressed(_) => SizeHint::default(),
            Body::Proxied(proxied) => proxied.size_hint(),
        }
    }
}

/// A byte range of an open file, read on tokio's blocking pool.
pub struct FileStream {
    file: tokio::io::Take<tokio::fs::File>,
    remaining: u64,
    buf: BytesMut,
}

impl FileStream {
    /// `file` must already be positioned at the first byte to send.
    pub fn new(file: std::fs::File, length: u64) -> Self {
        let mut file = tokio::fs::File::from_std(file);
        file.set_max_buf_size(FILE_CHUNK);
        Self {
            file: file.take(length),
            remaining: length,
            buf: BytesMut::new(),
        }
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        self.buf.reserve((self.remaining as usize).min(FILE_CHUNK));
        match ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.file),
            cx,
            &mut self.buf
        )) {
            Ok(0) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being sent",
            )))),
            Ok(n) => {
                self.remaining -= n as u64;
                Poll::Ready(Some(Ok(self.buf.split().freeze())))
            }
            Err(err) => Poll::Ready(Some(Err(err))),
        }
    }
}
