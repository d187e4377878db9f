//! Client side over tokio: the web server's end of a kept-alive connection to
//! one FastCGI application process (php-cgi, php-fpm).
//!
//! One request at a time (request id 1), the way nginx and php-fpm talk, so a
//! connection needs no multiplexing state. The caller encodes a request into
//! [`ClientConnection::write_buf`] with the functions of [`crate::record`] and
//! [`crate::params`], sends it with [`ClientConnection::flush`], and reads the
//! response as a stream of [`ResponseEvent`]s: STDOUT and STDERR chunks share
//! the read buffer (no copy) and nothing is collected whole.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::decoder::{DecodeError, RecordDecoder};
use crate::params::{Params, ParamsError, ParamsLimits, put_pair};
use crate::record::{EndRequest, MANAGEMENT_REQUEST_ID, RecordType, put_stream_end};

/// The request id used for every request on a client connection.
pub const REQUEST_ID: u16 = 1;

/// Read granularity; php-cgi writes STDOUT in records of up to 8 KiB, php-fpm
/// and large pages in up to 64 KiB.
const READ_CHUNK: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("FastCGI connection I/O: {0}")]
    Io(#[from] io::Error),
    #[error("FastCGI application sent a bad record: {0}")]
    Decode(#[from] DecodeError),
    #[error("FastCGI application closed the connection before ending the request")]
    ConnectionClosed,
    #[error(
        "FastCGI application sent an unexpected {record_type:?} record for request {request_id}"
    )]
    UnexpectedRecord {
        record_type: RecordType,
        request_id: u16,
    },
    #[error("FastCGI application sent a malformed END_REQUEST record")]
    MalformedEndRequest,
    #[error("FastCGI application sent bad name-value pairs: {0}")]
    Params(#[from] ParamsError),
}

/// What the application sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseEvent {
    /// A non-empty piece of the STDOUT stream.
    Stdout(Bytes),
    /// A non-empty piece of the STDERR stream.
    Stderr(Bytes),
    /// The request is over; the connection can carry the next one if it was
    /// begun with keep-conn.
    End(EndRequest),
}

pub struct ClientConnection<S> {
    stream: S,
    read_buf: BytesMut,
    write_buf: BytesMut,
    decoder: RecordDecoder,
    /// The last END_REQUEST had a non-zero application status: the worker
    /// ends after it (tqserver-php in worker mode, whose script died), so
    /// the connection must not take another request. php-cgi and php-fpm
    /// always send 0.
    peer_ending: bool,
}

impl<S> ClientConnection<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(4096),
            decoder: RecordDecoder::new(),
            peer_ending: false,
        }
    }

    /// Buffer for the next request's records; sent by [`Self::flush`].
    pub fn write_buf(&mut self) -> &mut BytesMut {
        &mut self.write_buf
    }

    /// Bytes received but not yet decoded. Non-empty between requests means
    /// the application sent something it should not have.
    pub fn has_buffered_input(&self) -> bool {
        !self.read_buf.is_empty()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientConnection<S> {
    /// Sends everything in the write buffer.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.write_buf.is_empty() {
            self.stream.write_all(&self.write_buf).await?;
            self.write_buf.clear();
        }
        Ok(())
    }

    /// Sends `data` as STDIN records (after anything already buffered).
    pub async fn write_stdin(&mut self, data: &[u8]) -> io::Result<()> {
        crate::record::put_stream(&mut self.write_buf, RecordType::Stdin, REQUEST_ID, data);
        self.flush().await
    }

    /// Sends the empty STDIN record that ends the request body.
    pub async fn end_stdin(&mut self) -> io::Result<()> {
        put_stream_end(&mut self.write_buf, RecordType::Stdin, REQUEST_ID);
        self.flush().await
    }

    /// Between requests: whether the application is still there. Looks only
    /// at what the socket already reports (no waiting; usually no syscall): a
    /// healthy idle connection has nothing to read, while a closed one reads
    /// EOF and a confused one has bytes nobody asked for.
    pub fn is_reusable(&mut self) -> bool {
        if self.peer_ending || !self.read_buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.poll_fill(&mut cx).is_pending()
    }

    /// Reads until the next response event.
    pub fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Result<ResponseEvent, ClientError>> {
        loop {
            if let Some(event) = self.buffered_event() {
                return Poll::Ready(event);
            }
            ready!(self.poll_fill(cx))?;
        }
    }

    /// The next event if it is already buffered; never reads. Lets a caller
    /// handle everything that arrived together before it flushes or waits.
    pub fn buffered_event(&mut self) -> Option<Result<ResponseEvent, ClientError>> {
        loop {
            let record = match self.decoder.decode(&mut self.read_buf) {
                Ok(Some(record)) => record,
                Ok(None) => return None,
                Err(err) => return Some(Err(err.into())),
            };
            if record.request_id != REQUEST_ID {
                return Some(Err(ClientError::UnexpectedRecord {
                    record_type: record.record_type,
                    request_id: record.request_id,
                }));
            }
            return Some(match record.record_type {
                RecordType::Stdout if !record.content.is_empty() => {
                    Ok(ResponseEvent::Stdout(record.content))
                }
                RecordType::Stderr if !record.content.is_empty() => {
                    Ok(ResponseEvent::Stderr(record.content))
                }
                // Empty records close a stream; END_REQUEST is what counts.
                RecordType::Stdout | RecordType::Stderr => continue,
                RecordType::EndRequest => EndRequest::parse(&record.content)
                    .inspect(|end| self.peer_ending = end.app_status != 0)
                    .map(ResponseEvent::End)
                    .ok_or(ClientError::MalformedEndRequest),
                other => Err(ClientError::UnexpectedRecord {
                    record_type: other,
                    request_id: record.request_id,
                }),
            });
        }
    }

    pub async fn next_event(&mut self) -> Result<ResponseEvent, ClientError> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Asks the application for its limits (FCGI_MAX_CONNS, FCGI_MAX_REQS,
    /// FCGI_MPXS_CONNS, ...). Must not be called while a request is open.
    pub async fn get_values(&mut self, names: &[&str]) -> Result<Params, ClientError> {
        let mut pairs = BytesMut::new();
        for name in names {
            put_pair(&mut pairs, name.as_bytes(), b"");
        }
        crate::record::put_record(
            &mut self.write_buf,
            RecordType::GetValues,
            MANAGEMENT_REQUEST_ID,
            &pairs,
        );
        self.flush().await?;
        loop {
            if let Some(record) = self.decoder.decode(&mut self.read_buf)? {
                return match record.record_type {
                    RecordType::GetValuesResult => {
                        Ok(Params::parse(record.content, ParamsLimits::default())?)
                    }
                    other => Err(ClientError::UnexpectedRecord {
                        record_type: other,
                        request_id: record.request_id,
                    }),
                };
            }
            std::future::poll_fn(|cx| self.poll_fill(cx)).await?;
        }
    }

    /// Reads more bytes into the read buffer; EOF is an error because a
    /// caller only reads while it expects a record.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        let needed = self.decoder.bytes_needed(&self.read_buf);
        self.read_buf.reserve(needed.max(READ_CHUNK));
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.stream),
            cx,
            &mut self.read_buf
        ))?;
        if read == 0 {
            return Poll::Ready(Err(ClientError::ConnectionClosed));
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamsWriter;
    use crate::record::{ProtocolStatus, Role, put_begin_request, put_end_request, put_record};
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn reads_a_streamed_response_and_reuses_the_connection() {
        let (client_end, mut app_end) = tokio::io::duplex(1 << 16);
        let mut conn = ClientConnection::new(client_end);

        for round in 0..2u8 {
            put_begin_request(conn.write_buf(), REQUEST_ID, Role::Responder, true);
            let mut params = ParamsWriter::new(conn.write_buf(), REQUEST_ID);
            params.pair(b"ROUND", &[b'0' + round]);
            params.finish();
            conn.end_stdin().await.unwrap();

            // The "application": check what arrived, answer in pieces.
            let mut received = [0u8; 8 + 8 + 8 + 8 + 8];
            app_end.read_exact(&mut received[..8]).await.unwrap();
            assert_eq!(received[1], RecordType::BeginRequest.as_u8());
            let mut answer = BytesMut::new();
            put_record(&mut answer, RecordType::Stderr, 1, b"warning");
            put_record(&mut answer, RecordType::Stdout, 1, b"Status: 200\r\n\r\nhi");
            put_record(&mut answer, RecordType::Stdout, 1, b"");
            put_end_request(
                &mut answer,
                1,
                EndRequest {
                    app_status: 0,
                    protocol_status: ProtocolStatus::RequestComplete,
                },
            );
            for piece in answer.chunks(5) {
                app_end.write_all(piece).await.unwrap();
            }

            assert_eq!(
                conn.next_event().await.unwrap(),
                ResponseEvent::Stderr(Bytes::from_static(b"warning"))
            );
            assert_eq!(
                conn.next_event().await.unwrap(),
                ResponseEvent::Stdout(Bytes::from_static(b"Status: 200\r\n\r\nhi"))
            );
            assert!(matches!(
                conn.next_event().await.unwrap(),
                ResponseEvent::End(_)
            ));
            // Drain what the client sent so the next round starts clean.
            let mut rest = vec![0u8; 4096];
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(20),
                app_end.read(&mut rest),
            )
            .await;
        }
    }

    #[tokio::test]
    async fn eof_mid_response_is_connection_closed() {
        let (client_end, mut app_end) = tokio::io::duplex(1024);
        let mut conn = ClientConnection::new(client_end);
        let mut answer = BytesMut::new();
        put_record(&mut answer, RecordType::Stdout, 1, b"partial");
        app_end.write_all(&answer).await.unwrap();
        drop(app_end);
        assert!(matches!(
            conn.next_event().await,
            Ok(ResponseEvent::Stdout(_))
        ));
        assert!(matches!(
            conn.next_event().await,
            Err(ClientError::ConnectionClosed)
        ));
    }

    #[tokio::test]
    async fn record_for_another_request_is_refused() {
        let (client_end, mut app_end) = tokio::io::duplex(1024);
        let mut conn = ClientConnection::new(client_end);
        let mut answer = BytesMut::new();
        put_record(&mut answer, RecordType::Stdout, 9, b"x");
        app_end.write_all(&answer).await.unwrap();
        assert!(matches!(
            conn.next_event().await,
            Err(ClientError::UnexpectedRecord { request_id: 9, .. })
        ));
    }

    /// An END_REQUEST with a non-zero application status (a worker that
    /// ends after this response) makes the connection unusable at once,
    /// before the worker's close could race the next request.
    #[tokio::test]
    async fn a_non_zero_app_status_ends_reuse() {
        for (app_status, reusable) in [(0, true), (1, false)] {
            let (client_end, mut app_end) = tokio::io::duplex(1024);
            let mut conn = ClientConnection::new(client_end);
            let mut answer = BytesMut::new();
            put_end_request(
                &mut answer,
                1,
                EndRequest {
                    app_status,
                    protocol_status: ProtocolStatus::RequestComplete,
                },
            );
            app_end.write_all(&answer).await.unwrap();
            assert!(matches!(conn.next_event().await, Ok(ResponseEvent::End(_))));
            assert_eq!(conn.is_reusable(), reusable, "app status {app_status}");
        }
    }
}
