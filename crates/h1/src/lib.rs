//! HTTP/1.1 request framing without I/O, so it can be tested and fuzzed on
//! plain byte buffers (hyper's `proto/h1` is the model).
//!
//! Theory of operation: a connection reads bytes into a buffer and calls
//! [`head::parse_head`] until it returns a head (or an error the client gets
//! as a status). [`head::check_authority`] applies the Host rules, and
//! [`head::framing`] says how the body is delimited. A chunked body is
//! decoded by a [`chunked::ChunkedDecoder`] fed from the same buffer; it
//! leaves whatever follows the body (a pipelined request) in the buffer. The
//! server (crates/tqserver/src/http/h1.rs) owns the socket, the timeouts and
//! the writing side.

#![forbid(unsafe_code)]

pub mod chunked;
pub mod head;

pub use chunked::{ChunkError, ChunkedDecoder, Decoded};
pub use head::{Framing, Head, HeadError, HeadLimits};
