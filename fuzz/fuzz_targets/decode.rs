//! Arbitrary bytes, cut into reads at arbitrary points, through every
//! decoding path of the FastCGI crate: `RecordDecoder`, the name-value parser
//! and `ParamsCollector`, the fixed BEGIN/END bodies, the server's
//! `RequestReader` and the client's `ClientConnection`. None may panic, stop
//! making progress, or lose track of a byte.
//!
//! Input layout: the first byte `k` says how many of the next bytes (k % 16)
//! are read sizes (each byte + 1); the rest is the stream. Reads cycle
//! through the sizes.

#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use fastcgi::client::ClientConnection;
use fastcgi::params::{ParamsCollector, parse_pairs};
use fastcgi::record::HEADER_LEN;
use fastcgi::server::RequestReader;
use fastcgi::{BeginRequest, EndRequest, Params, ParamsLimits, RecordDecoder, RecordType};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Small limits so that the limit paths are reached too.
const LIMITS: ParamsLimits = ParamsLimits {
    max_bytes: 4096,
    max_pairs: 32,
};

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = (count % 16) as usize;
    if rest.len() < count {
        return;
    }
    let (sizes, stream) = rest.split_at(count);
    let mut sizes: Vec<usize> = sizes.iter().map(|&b| b as usize + 1).collect();
    if sizes.is_empty() {
        sizes.push(stream.len().max(1));
    }

    decode_records(stream, &sizes);
    read_as_server(stream, &sizes);
    read_as_client(stream, &sizes);
});

/// Cuts `stream` into reads of the given sizes.
fn pieces<'a>(stream: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> {
    let mut rest = stream;
    let mut size = sizes.iter().cycle();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (piece, tail) = rest.split_at((*size.next()?).min(rest.len()));
        rest = tail;
        Some(piece)
    })
}

fn decode_records(stream: &[u8], sizes: &[usize]) {
    let mut decoder = RecordDecoder::new();
    let mut buf = BytesMut::new();
    let mut consumed = 0;
    let mut collector = ParamsCollector::default();
    'feed: for piece in pieces(stream, sizes) {
        buf.extend_from_slice(piece);
        loop {
            let needed = decoder.bytes_needed(&buf);
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(record)) => {
                    assert_eq!(needed, 0);
                    let taken = before - buf.len();
                    assert!(taken >= HEADER_LEN + record.content.len());
                    consumed += taken;
                    check_content(record.record_type, &record.content, &mut collector);
                }
                Ok(None) => {
                    assert!(needed > 0);
                    assert_eq!(buf.len(), before, "partial record consumed");
                    break;
                }
                Err(_) => {
                    assert_eq!(buf.len(), before, "error consumed input");
                    break 'feed;
                }
            }
        }
    }
    assert!(consumed + buf.len() <= stream.len());
    let _ = collector.finish(LIMITS);
}

fn check_content(kind: RecordType, content: &Bytes, collector: &mut ParamsCollector) {
    match kind {
        RecordType::Params | RecordType::GetValues | RecordType::GetValuesResult => {
            let mut seen_error = false;
            for (n, pair) in parse_pairs(content).enumerate() {
                assert!(!seen_error, "pairs after an error");
                assert!(n <= content.len(), "pair parser does not advance");
                match pair {
                    Ok((name, value)) => assert!(name.len() + value.len() < content.len()),
                    Err(_) => seen_error = true,
                }
            }
            if let Ok(params) = Params::parse(content.clone(), LIMITS) {
                assert!(params.len() <= LIMITS.max_pairs);
                let _ = params.get("SCRIPT_FILENAME");
            }
            if kind == RecordType::Params {
                let _ = collector.push(content, LIMITS);
            }
        }
        RecordType::BeginRequest => {
            let _ = BeginRequest::parse(content);
        }
        RecordType::EndRequest => {
            let _ = EndRequest::parse(content);
        }
        _ => {}
    }
}

/// A socket stand-in that returns the stream in the given read sizes, never
/// blocks, and swallows writes.
struct Pieces<'a> {
    stream: &'a [u8],
    sizes: &'a [usize],
    turn: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let size = self.sizes[self.turn % self.sizes.len()];
        self.turn += 1;
        let take = size.min(self.stream.len()).min(buf.remaining());
        let (piece, rest) = self.stream.split_at(take);
        buf.put_slice(piece);
        self.stream = rest;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Pieces<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Polls a future whose I/O never blocks; it must finish on the first poll.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("pending without any I/O that could block"),
    }
}

fn read_as_server(stream: &[u8], sizes: &[usize]) {
    let io = Pieces {
        stream,
        sizes,
        turn: 0,
    };
    let mut reader = RequestReader::new(io, LIMITS);
    // Every event consumes at least one record of at least 8 bytes.
    for _ in 0..=stream.len() / HEADER_LEN + 1 {
        match ready(reader.next_event()) {
            Ok(Some(fastcgi::server::ServerEvent::StdinEnd { .. })) => reader.finish_request(),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
    panic!("RequestReader produced more events than the input has records");
}

fn read_as_client(stream: &[u8], sizes: &[usize]) {
    let io = Pieces {
        stream,
        sizes,
        turn: 0,
    };
    let mut conn = ClientConnection::new(io);
    for _ in 0..=stream.len() / HEADER_LEN + 1 {
        match ready(conn.next_event()) {
            Ok(_) => {}
            Err(_) => return,
        }
    }
    panic!("ClientConnection produced more events than the input has records");
}
