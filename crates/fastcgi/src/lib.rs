//! FastCGI 1.0, as web servers and PHP speak it.
//!
//! # Theory of operation
//! The protocol is a stream of records: an 8-byte [`record::Header`] (version,
//! type, request id, content length, padding length), then content and
//! padding. Requests are a BEGIN_REQUEST, a PARAMS stream of name-value pairs,
//! a STDIN stream (and for filters DATA); responses are STDOUT and STDERR
//! streams closed by END_REQUEST. A stream ends with an empty record.
//!
//! This crate is layered so that the codec never sees a socket:
//! - [`record`]: header and fixed bodies, and `put_*` functions that encode
//!   into a `BytesMut`;
//! - [`params`]: name-value pairs (1- and 4-byte lengths), a writer that
//!   frames a PARAMS stream in place, and a bounded collector for reading one;
//! - [`decoder`]: bytes in, records out; checks a record is complete before
//!   taking it; large content shares the input buffer instead of being
//!   copied, small content is copied out so the buffer can be reused;
//! - [`server`]: the protocol rules of the application's side (what may
//!   follow what, one request at a time) over a buffer, with thin async
//!   methods (feature `tokio`) that own the socket; a blocking caller reads
//!   and writes the socket itself;
//! - [`client`] (feature `tokio`): the web server's side, a thin async layer
//!   that owns a socket and a buffer and streams bodies through in
//!   record-sized pieces.
//!
//! The crate knows nothing of HTTP, PHP or process pools.
//!
//! # Why not an existing crate
//! `fastcgi-client` streams a response only in its one-request-per-connection
//! mode (`execute_once_stream` consumes the client); on a kept-alive
//! connection `execute` collects the whole response in memory, and its
//! parameters go through a `HashMap` of owned strings per request.
//! `tokio-fastcgi` is a server only, so it cannot talk to php-cgi. tqserver
//! needs both directions, streaming, over connections kept alive for
//! thousands of requests, with no per-request allocation it can avoid, so it
//! has its own codec.

#![forbid(unsafe_code)]

pub mod decoder;
pub mod params;
pub mod record;

#[cfg(feature = "tokio")]
pub mod client;
pub mod server;

pub use decoder::{DecodeError, RecordDecoder};
pub use params::{Params, ParamsError, ParamsLimits, ParamsWriter};
pub use record::{BeginRequest, EndRequest, Header, ProtocolStatus, Record, RecordType, Role};
