//! Server side over tokio: the application's end of a connection from a web
//! server (nginx, Apache, Caddy, cgi-fcgi).
//!
//! Split in two so a request can be read and answered at the same time (an
//! ABORT_REQUEST may arrive while the response streams):
//! - [`RequestReader`] decodes records into [`ServerEvent`]s and enforces the
//!   protocol: nothing before BEGIN_REQUEST, bounded PARAMS, one request at a
//!   time (a second request id is reported so the caller can refuse it with
//!   CANT_MPX_CONN, and its records are then dropped, never mixed up with the
//!   first request's).
//! - [`ResponseWriter`] encodes STDOUT, STDERR, END_REQUEST and management
//!   answers.
//!
//! Neither holds a request or response body whole.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
#[cfg(feature = "tokio")]
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::decoder::{DecodeError, RecordDecoder};
use crate::params::{Params, ParamsCollector, ParamsError, ParamsLimits, put_pair};
use crate::record::{
    BeginRequest, EndRequest, MANAGEMENT_REQUEST_ID, ProtocolStatus, RecordType, Role,
    put_end_request, put_record, put_stream, put_stream_end, put_unknown_type,
};

/// How many refused request ids a reader remembers (to drop their records).
const MAX_REFUSED_IDS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("bad record: {0}")]
    Decode(#[from] DecodeError),
    #[error("bad PARAMS: {0}")]
    Params(#[from] ParamsError),
    #[error("connection closed in the middle of a record")]
    TruncatedRecord,
    #[error("{record_type:?} record for request {request_id} before its BEGIN_REQUEST")]
    NoSuchRequest {
        record_type: RecordType,
        request_id: u16,
    },
    #[error("{record_type:?} record out of order for request {request_id}")]
    OutOfOrder {
        record_type: RecordType,
        request_id: u16,
    },
    #[error("malformed BEGIN_REQUEST body")]
    MalformedBeginRequest,
    #[error("management record {0:?} with a non-zero request id")]
    BadManagementRecord(RecordType),
    #[error("peer opened more than {MAX_REFUSED_IDS} concurrent requests")]
    TooManyConcurrentRequests,
}

/// What the web server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A new request begins.
    Begin {
        request_id: u16,
        role: Role,
        keep_conn: bool,
    },
    /// All PARAMS of the current request.
    Params { request_id: u16, params: Params },
    /// A non-empty piece of the request body.
    Stdin { request_id: u16, data: Bytes },
    /// The request body is complete.
    StdinEnd { request_id: u16 },
    /// A piece of the FCGI_DATA stream (filter role).
    Data { request_id: u16, data: Bytes },
    /// The web server gave up on the request.
    Abort { request_id: u16 },
    /// A BEGIN_REQUEST for another id while one request is open on this
    /// connection. Answer it with END_REQUEST(CANT_MPX_CONN); its further
    /// records are dropped by the reader.
    Multiplexed { request_id: u16 },
    /// GET_VALUES: answer with [`ResponseWriter::get_values_result`].
    GetValues(Params),
    /// A management record of an unknown type: answer with
    /// [`ResponseWriter::unknown_type`].
    UnknownManagement(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Params,
    Stdin,
    /// STDIN ended; only DATA or ABORT may follow until the response ends.
    Running,
}

pub struct RequestReader<R> {
    io: R,
    buf: BytesMut,
    decoder: RecordDecoder,
    limits: ParamsLimits,
    current: Option<(u16, Stage)>,
    params: ParamsCollector,
    refused: Vec<u16>,
    /// The request answered last: stragglers for it (a late ABORT_REQUEST,
    /// STDIN the answer did not wait for) are dropped, as the spec asks for
    /// records of requests that are not active.
    finished: Option<u16>,
}

impl<R> RequestReader<R> {
    pub fn new(io: R, limits: ParamsLimits) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(4 * 1024),
            decoder: RecordDecoder::new(),
            limits,
            current: None,
            params: ParamsCollector::default(),
            refused: Vec::new(),
            finished: None,
        }
    }

    /// The id of the request in progress, if any.
    pub fn current_request(&self) -> Option<u16> {
        self.current.map(|(id, _)| id)
    }

    /// Marks the current request as answered: the next BEGIN_REQUEST may
    /// reuse any id.
    pub fn finish_request(&mut self) {
        self.finished = self.current.map(|(id, _)| id);
        self.current = None;
        self.refused.clear();
        self.params.clear();
    }

    /// The socket, for a caller that reads it itself with blocking I/O:
    /// it puts what it reads into [`buffer_mut`](Self::buffer_mut) and takes
    /// events from [`buffered_event`](Self::buffered_event).
    pub fn io_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// The input buffer, for a caller that reads the socket itself.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The next event if its records are already buffered; never reads.
    pub fn buffered_event(&mut self) -> Result<Option<ServerEvent>, ServerError> {
        while let Some(record) = self.decoder.decode(&mut self.buf)? {
            if let Some(event) = self.on_record(record)? {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    fn on_record(
        &mut self,
        record: crate::record::Record,
    ) -> Result<Option<ServerEvent>, ServerError> {
        let id = record.request_id;
        let kind = record.record_type;
        if kind.is_management() {
            if id != MANAGEMENT_REQUEST_ID {
                return Err(ServerError::BadManagementRecord(kind));
            }
            return Ok(Some(match kind {
                RecordType::GetValues => {
                    ServerEvent::GetValues(Params::parse(record.content, self.limits)?)
                }
                other => ServerEvent::UnknownManagement(other.as_u8()),
            }));
        }
        if self.refused.contains(&id) {
            if kind == RecordType::AbortRequest {
                self.refused.retain(|refused| *refused != id);
            }
            return Ok(None);
        }
        let Some((current, stage)) = self.current else {
            if kind != RecordType::BeginRequest && self.finished == Some(id) {
                return Ok(None);
            }
            return if kind == RecordType::BeginRequest {
                self.finished = None;
                let begin = BeginRequest::parse(&record.content)
                    .ok_or(ServerError::MalformedBeginRequest)?;
                self.current = Some((id, Stage::Params));
                Ok(Some(ServerEvent::Begin {
                    request_id: id,
                    role: begin.role,
                    keep_conn: begin.keep_conn(),
                }))
            } else {
                Err(ServerError::NoSuchRequest {
                    record_type: kind,
                    request_id: id,
                })
            };
        };
        if id != current {
            return if kind == RecordType::BeginRequest {
                if self.refused.len() == MAX_REFUSED_IDS {
                    return Err(ServerError::TooManyConcurrentRequests);
                }
                self.refused.push(id);
                Ok(Some(ServerEvent::Multiplexed { request_id: id }))
            } else {
                Err(ServerError::NoSuchRequest {
                    record_type: kind,
                    request_id: id,
                })
            };
        }
        let out_of_order = || ServerError::OutOfOrder {
            record_type: kind,
            request_id: id,
        };
        match (kind, stage) {
            (RecordType::AbortRequest, _) => Ok(Some(ServerEvent::Abort { request_id: id })),
            (RecordType::Params, Stage::Params) if record.content.is_empty() => {
                let params = self.params.finish(self.limits)?;
                self.current = Some((id, Stage::Stdin));
                Ok(Some(ServerEvent::Params {
                    request_id: id,
                    params,
                }))
            }
            (RecordType::Params, Stage::Params) => {
                self.params.push(&record.content, self.limits)?;
                Ok(None)
            }
            (RecordType::Stdin, Stage::Stdin) if record.content.is_empty() => {
                self.current = Some((id, Stage::Running));
                Ok(Some(ServerEvent::StdinEnd { request_id: id }))
            }
            (RecordType::Stdin, Stage::Stdin) => Ok(Some(ServerEvent::Stdin {
                request_id: id,
                data: record.content,
            })),
            (RecordType::Data, Stage::Stdin | Stage::Running) => Ok(Some(ServerEvent::Data {
                request_id: id,
                data: record.content,
            })),
            _ => Err(out_of_order()),
        }
    }
}

/// What GET_VALUES is answered with.
#[derive(Clone, Copy, Debug)]
pub struct ServerValues {
    pub max_conns: u32,
    pub max_reqs: u32,
    pub mpxs_conns: bool,
}

#[cfg(feature = "tokio")]
impl<R: AsyncRead + Unpin> RequestReader<R> {
    /// Next event, or `None` at a clean end of stream (between records).
    pub async fn next_event(&mut self) -> Result<Option<ServerEvent>, ServerError> {
        loop {
            if let Some(event) = self.buffered_event()? {
                return Ok(Some(event));
            }
            self.buf.reserve(4 * 1024);
            let read = tokio::io::AsyncReadExt::read_buf(&mut self.io, &mut self.buf).await?;
            if read == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ServerError::TruncatedRecord)
                };
            }
        }
    }
}

pub struct ResponseWriter<W> {
    io: W,
    buf: BytesMut,
    write_timeout: Option<Duration>,
}

impl<W> ResponseWriter<W> {
    pub fn new(io: W) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(4 * 1024),
            write_timeout: None,
        }
    }

    /// Bounds every [`flush`](Self::flush): a peer that stops reading for
    /// longer than `limit` gets a `TimedOut` error instead of holding the
    /// connection (and whatever backs it) forever.
    pub fn with_write_timeout(mut self, limit: Duration) -> Self {
        self.write_timeout = Some(limit);
        self
    }

    pub fn stdout(&mut self, request_id: u16, data: &[u8]) {
        put_stream(&mut self.buf, RecordType::Stdout, request_id, data);
    }

    pub fn stderr(&mut self, request_id: u16, data: &[u8]) {
        put_stream(&mut self.buf, RecordType::Stderr, request_id, data);
    }

    /// Closes STDOUT (and STDERR if `had_stderr`) and ends the request.
    pub fn end_request(
        &mut self,
        request_id: u16,
        app_status: u32,
        protocol_status: ProtocolStatus,
        had_stderr: bool,
    ) {
        if protocol_status == ProtocolStatus::RequestComplete {
            put_stream_end(&mut self.buf, RecordType::Stdout, request_id);
            if had_stderr {
                put_stream_end(&mut self.buf, RecordType::Stderr, request_id);
            }
        }
        put_end_request(
            &mut self.buf,
            request_id,
            EndRequest {
                app_status,
                protocol_status,
            },
        );
    }

    /// Answers GET_VALUES with the names that were asked for and are known.
    pub fn get_values_result(&mut self, asked: &Params, values: ServerValues) {
        let mut pairs = BytesMut::new();
        for (name, _) in asked.iter() {
            let value = match name {
                b"FCGI_MAX_CONNS" => values.max_conns.to_string(),
                b"FCGI_MAX_REQS" => values.max_reqs.to_string(),
                b"FCGI_MPXS_CONNS" => u8::from(values.mpxs_conns).to_string(),
                _ => continue,
            };
            put_pair(&mut pairs, name, value.as_bytes());
        }
        put_record(
            &mut self.buf,
            RecordType::GetValuesResult,
            MANAGEMENT_REQUEST_ID,
            &pairs,
        );
    }

    pub fn unknown_type(&mut self, record_type: u8) {
        put_unknown_type(&mut self.buf, record_type);
    }

    /// Bytes waiting to be flushed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Encoded bytes not yet written, for a caller that writes the socket
    /// itself with blocking I/O (and clears what it wrote).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The socket, for a caller that writes it itself.
    pub fn io_mut(&mut self) -> &mut W {
        &mut self.io
    }
}

#[cfg(feature = "tokio")]
impl<W: AsyncWrite + Unpin> ResponseWriter<W> {
    pub async fn flush(&mut self) -> io::Result<()> {
        let write = async {
            if !self.buf.is_empty() {
                self.io.write_all(&self.buf).await?;
                self.buf.clear();
            }
            self.io.flush().await
        };
        match self.write_timeout {
            None => write.await,
            Some(limit) => tokio::time::timeout(limit, write)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading"))?,
        }
    }

    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.io.shutdown().await
    }
}

#[cfg(all(test, feature = "tokio"))]
mod tests {
    use super::*;
    use crate::params::ParamsWriter;
    use crate::record::put_begin_request;

    fn reader(bytes: BytesMut) -> RequestReader<std::io::Cursor<Vec<u8>>> {
        RequestReader::new(
            std::io::Cursor::new(bytes.to_vec()),
            ParamsLimits::default(),
        )
    }

    #[tokio::test]
    async fn a_whole_request() {
        let mut wire = BytesMut::new();
        put_begin_request(&mut wire, 7, Role::Responder, true);
        {
            let mut w = ParamsWriter::new(&mut wire, 7);
            w.pair(b"REQUEST_METHOD", b"POST");
            w.finish();
        }
        put_stream(&mut wire, RecordType::Stdin, 7, b"body");
        put_stream_end(&mut wire, RecordType::Stdin, 7);
        let mut reader = reader(wire);
        assert_eq!(
            reader.next_event().await.unwrap(),
            Some(ServerEvent::Begin {
                request_id: 7,
                role: Role::Responder,
                keep_conn: true
            })
        );
        match reader.next_event().await.unwrap() {
            Some(ServerEvent::Params { params, .. }) => {
                assert_eq!(params.get_str("REQUEST_METHOD"), Some("POST"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            reader.next_event().await.unwrap(),
            Some(ServerEvent::Stdin {
                request_id: 7,
                data: Bytes::from_static(b"body")
            })
        );
        assert_eq!(
            reader.next_event().await.unwrap(),
            Some(ServerEvent::StdinEnd { request_id: 7 })
        );
        assert_eq!(reader.next_event().await.unwrap(), None);
    }

    #[tokio::test]
    async fn params_before_begin_is_an_error() {
        let mut wire = BytesMut::new();
        {
            let mut w = ParamsWriter::new(&mut wire, 1);
            w.pair(b"A", b"1");
            w.finish();
        }
        assert!(matches!(
            reader(wire).next_event().await,
            Err(ServerError::NoSuchRequest { .. })
        ));
    }

    #[tokio::test]
    async fn second_request_id_is_reported_and_its_records_dropped() {
        let mut wire = BytesMut::new();
        put_begin_request(&mut wire, 1, Role::Responder, true);
        put_begin_request(&mut wire, 2, Role::Responder, true);
        {
            let mut w = ParamsWriter::new(&mut wire, 2);
            w.pair(b"WHO", b"two");
            w.finish();
        }
        {
            let mut w = ParamsWriter::new(&mut wire, 1);
            w.pair(b"WHO", b"one");
            w.finish();
        }
        let mut reader = reader(wire);
        assert!(matches!(
            reader.next_event().await.unwrap(),
            Some(ServerEvent::Begin { request_id: 1, .. })
        ));
        assert_eq!(
            reader.next_event().await.unwrap(),
            Some(ServerEvent::Multiplexed { request_id: 2 })
        );
        match reader.next_event().await.unwrap() {
            Some(ServerEvent::Params { request_id, params }) => {
                assert_eq!(request_id, 1);
                assert_eq!(params.get_str("WHO"), Some("one"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn stragglers_of_a_finished_request_are_dropped() {
        let mut wire = BytesMut::new();
        put_begin_request(&mut wire, 1, Role::Responder, true);
        ParamsWriter::new(&mut wire, 1).finish();
        // The application answered before reading STDIN; the rest and a late
        // abort arrive after, then the next request.
        put_stream(&mut wire, RecordType::Stdin, 1, b"late body");
        crate::record::put_abort_request(&mut wire, 1);
        put_begin_request(&mut wire, 1, Role::Responder, true);
        let mut reader = reader(wire);
        assert!(matches!(
            reader.next_event().await.unwrap(),
            Some(ServerEvent::Begin { .. })
        ));
        assert!(matches!(
            reader.next_event().await.unwrap(),
            Some(ServerEvent::Params { .. })
        ));
        reader.finish_request();
        assert!(matches!(
            reader.next_event().await.unwrap(),
            Some(ServerEvent::Begin { request_id: 1, .. })
        ));
    }

    #[tokio::test]
    async fn truncated_record_at_eof() {
        let mut wire = BytesMut::new();
        put_begin_request(&mut wire, 1, Role::Responder, false);
        wire.truncate(5);
        assert!(matches!(
            reader(wire).next_event().await,
            Err(ServerError::TruncatedRecord)
        ));
    }

    #[tokio::test]
    async fn get_values_answered_truthfully() {
        let mut asked = BytesMut::new();
        put_pair(&mut asked, b"FCGI_MAX_CONNS", b"");
        put_pair(&mut asked, b"FCGI_MPXS_CONNS", b"");
        put_pair(&mut asked, b"SOMETHING_ELSE", b"");
        let asked = Params::parse(asked.freeze(), ParamsLimits::default()).unwrap();
        let mut out = Vec::new();
        let mut writer = ResponseWriter::new(&mut out);
        writer.get_values_result(
            &asked,
            ServerValues {
                max_conns: 10,
                max_reqs: 10,
                mpxs_conns: false,
            },
        );
        writer.flush().await.unwrap();
        let mut buf = BytesMut::from(&out[..]);
        let record = RecordDecoder::new().decode(&mut buf).unwrap().unwrap();
        assert_eq!(record.record_type, RecordType::GetValuesResult);
        let answer = Params::parse(record.content, ParamsLimits::default()).unwrap();
        assert_eq!(answer.get_str("FCGI_MAX_CONNS"), Some("10"));
        assert_eq!(answer.get_str("FCGI_MPXS_CONNS"), Some("0"));
        assert_eq!(answer.len(), 2);
    }
}
