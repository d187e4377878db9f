//! Arbitrary bytes, cut into reads at arbitrary points, through the HTTP/1.1
//! request path of `tq-h1`: the head parser, the Host and framing rules, and
//! the chunked decoder fed from the same buffer. None may panic, stop making
//! progress, or produce more body than it was given.
//!
//! Input layout: the first byte `k` says how many of the next bytes (k % 16)
//! are read sizes (each byte + 1); the rest is the stream. Reads cycle
//! through the sizes.

#![no_main]

use bytes::BytesMut;
use h1::chunked::{ChunkError, ChunkedDecoder, Decoded};
use h1::head::{Framing, HeadLimits, check_authority, framing, parse_head};
use libfuzzer_sys::fuzz_target;

/// Small limits so that the limit paths are reached too.
const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 2048,
    max_headers: 16,
};

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let sizes_len = (k as usize % 16).min(rest.len());
    let (sizes, stream) = rest.split_at(sizes_len);
    let mut sizes = sizes.iter().map(|&s| s as usize + 1).cycle();
    let mut next_read = || sizes.next().unwrap_or(stream.len().max(1));

    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut feed = |buf: &mut BytesMut| -> bool {
        if fed >= stream.len() {
            return false;
        }
        let end = (fed + next_read()).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        true
    };

    // Heads, one after another, as on a kept-alive connection.
    loop {
        let before = buf.len();
        let head = match parse_head(&mut buf, LIMITS) {
            Ok(Some(head)) => head,
            Ok(None) => {
                assert!(buf.len() <= before, "parsing grew the buffer");
                if feed(&mut buf) {
                    continue;
                }
                return;
            }
            Err(_) => return,
        };
        assert!(buf.len() < before, "a head took no bytes");
        let mut head = head;
        if check_authority(&mut head).is_err() {
            return;
        }
        match framing(&head) {
            Ok(Framing::Chunked) => {
                let mut decoder = ChunkedDecoder::new(4096);
                let mut body = 0usize;
                loop {
                    let held = buf.len();
                    match decoder.decode(&mut buf) {
                        Ok(Decoded::Data(data)) => {
                            assert!(!data.is_empty(), "empty data");
                            assert!(buf.len() + data.len() <= held, "bytes from nowhere");
                            body += data.len();
                            assert!(body <= 4096, "more than the limit");
                        }
                        Ok(Decoded::Done) => {
                            assert!(decoder.is_done());
                            break;
                        }
                        Ok(Decoded::NeedMore) => {
                            if !feed(&mut buf) {
                                return;
                            }
                        }
                        Err(ChunkError::TooLarge | ChunkError::Invalid(_)) => return,
                    }
                }
            }
            Ok(Framing::Length(length)) => {
                let mut left = length;
                while left > 0 {
                    if buf.is_empty() && !feed(&mut buf) {
                        return;
                    }
                    let take = (buf.len() as u64).min(left) as usize;
                    let _ = buf.split_to(take);
                    left -= take as u64;
                }
            }
            Ok(Framing::None) => {}
            Err(_) => return,
        }
    }
});
