//! The chunked transfer coding of a request body (RFC 9112 7.1) as a state
//! machine over a byte buffer: it takes what it can from the front of the
//! buffer and says whether it produced data, needs more bytes, or is done.
//! Strict on purpose: lenient parsers that disagree with a proxy in front
//! are how requests get smuggled.

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line (with extensions) accepted.
pub const MAX_CHUNK_LINE: usize = 1024;
/// Longest trailer section accepted after the last chunk.
pub const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk with this many bytes to go.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailers until an empty line (bytes so far).
    Trailers(usize),
    Done,
}

/// What one step of decoding gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes, split off the buffer.
    Data(Bytes),
    /// The buffer holds no complete next piece: read more, then call again.
    NeedMore,
    /// The body ended (last chunk and trailers consumed).
    Done,
}

/// Why a chunked body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Bad syntax (400).
    Invalid(&'static str),
    /// The announced chunks pass the body limit (413), known as soon as a
    /// chunk-size line says so.
    TooLarge,
}

/// Decodes one chunked body.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// Chunk bytes announced so far.
    announced: u64,
    max_bytes: u64,
}

impl ChunkedDecoder {
    /// A decoder for a body of at most `max_bytes` bytes.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            state: State::Size,
            announced: 0,
            max_bytes,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes the next piece of the body from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::Done),
                State::Size => {
                    let Some(end) = memchr::memchr(b'\n', buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(ChunkError::Invalid("chunk size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    if end > MAX_CHUNK_LINE {
                        return Err(ChunkError::Invalid("chunk size line too long"));
                    }
                    let size =
                        chunk_size(&buf[..end]).ok_or(ChunkError::Invalid("bad chunk size"))?;
                    self.announced = self.announced.saturating_add(size);
                    if self.announced > self.max_bytes {
                        return Err(ChunkError::TooLarge);
                    }
                    buf.advance(end + 1);
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = (buf.len() as u64).min(left) as usize;
                    let rest = left - take as u64;
                    self.state = if rest == 0 {
                        State::DataEnd
                    } else {
                        State::Data(rest)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkError::Invalid("chunk not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers(seen) => {
                    // Trailers are read and dropped, up to an empty line;
                    // MAX_TRAILERS bounds the whole section.
                    match memchr::memchr(b'\n', buf) {
                        None if seen + buf.len() > MAX_TRAILERS => {
                            return Err(ChunkError::Invalid("trailers too long"));
                        }
                        None => return Ok(Decoded::NeedMore),
                        Some(end) if seen + end + 1 > MAX_TRAILERS => {
                            return Err(ChunkError::Invalid("trailers too long"));
                        }
                        Some(end) if end == 0 || buf[end - 1] != b'\r' => {
                            return Err(ChunkError::Invalid("trailer line without CRLF"));
                        }
                        Some(end) => {
                            buf.advance(end + 1);
                            self.state = if end == 1 {
                                State::Done
                            } else {
                                State::Trailers(seen + end + 1)
                            };
                        }
                    }
                }
            }
        }
    }
}

/// The size in a chunk-size line (without its LF): hex digits, optionally
/// `;extensions`, then CR. Anything looser (a sign, spaces, a bare LF, a
/// bare CR or another control character in the extensions, more than 16
/// digits) is refused.
pub fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r")?;
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return None;
    }
    let digits = match line.iter().position(|&b| b == b';') {
        // Whitespace is allowed only before the extensions (BWS).
        Some(semi) => {
            let digits = &line[..semi];
            let end = digits
                .iter()
                .rposition(|&b| b != b' ' && b != b'\t')
                .map_or(0, |p| p + 1);
            &digits[..end]
        }
        None => line,
    };
    if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let text = std::str::from_utf8(digits).ok()?;
    u64::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; the body and what was
    /// left after it.
    fn decode_in_steps(
        input: &[u8],
        step: usize,
        max: u64,
    ) -> Result<(Vec<u8>, Vec<u8>), ChunkError> {
        let mut decoder = ChunkedDecoder::new(max);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::Done => return Ok((body, buf.to_vec())),
                Decoded::NeedMore => {
                    if fed >= input.len() {
                        return Err(ChunkError::Invalid("input ended"));
                    }
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn bodies_decode_and_leave_the_next_request() {
        let input = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nGET /next";
        for step in [1, 2, 3, 7, input.len()] {
            let (body, rest) = decode_in_steps(input, step, 1024).unwrap();
            assert_eq!(body, b"hello world", "step {step}");
            // Fed piecemeal, the rest is whatever arrived with the end.
            assert!(b"GET /next".starts_with(&rest), "step {step}: {rest:?}");
        }
    }

    #[test]
    fn a_chunk_past_the_limit_is_refused_before_its_bytes() {
        assert_eq!(
            decode_in_steps(b"200000\r\n", 64, 1 << 20),
            Err(ChunkError::TooLarge)
        );
        assert_eq!(
            decode_in_steps(b"80000\r\n", 64, 1 << 20).unwrap_err(),
            ChunkError::Invalid("input ended")
        );
    }

    #[test]
    fn bad_syntax_is_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello\r\n0\r\n\r\n",
            b"0\r\nbad trailer\n\r\n",
        ] {
            assert!(
                matches!(decode_in_steps(bad, 3, 1024), Err(ChunkError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunk_size_lines_are_strict() {
        assert_eq!(chunk_size(b"1a\r"), Some(26));
        assert_eq!(chunk_size(b"0\r"), Some(0));
        assert_eq!(chunk_size(b"5;name=value\r"), Some(5));
        assert_eq!(chunk_size(b"5 ;ext\r"), Some(5));
        assert_eq!(chunk_size(b"ffffffffffffffff\r"), Some(u64::MAX));
        for bad in [
            &b"5"[..],
            b"+5\r",
            b"-5\r",
            b" 5\r",
            b"5 \r",
            b"0x5\r",
            b"\r",
            b"1ffffffffffffffff\r",
            b"5\r\r",
            b"5;a\rb\r",
            b"5;a\x00\r",
        ] {
            assert_eq!(chunk_size(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn endless_trailers_are_refused() {
        let mut input = b"1\r\nx\r\n0\r\n".to_vec();
        for _ in 0..MAX_TRAILERS {
            input.extend_from_slice(b"X-T: 1\r\n");
        }
        assert_eq!(
            decode_in_steps(&input, 4096, 1024),
            Err(ChunkError::Invalid("trailers too long"))
        );
    }

    proptest::proptest! {
        /// Any body, cut into any chunks and fed in any steps, decodes to
        /// itself and leaves the bytes after it.
        #[test]
        fn round_trip(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            cuts in proptest::collection::vec(1usize..100, 1..20),
            step in 1usize..50,
        ) {
            let mut input = Vec::new();
            let mut at = 0;
            let mut cut = cuts.iter().cycle();
            while at < body.len() {
                let size = (*cut.next().unwrap()).min(body.len() - at);
                input.extend_from_slice(format!("{size:x}\r\n").as_bytes());
                input.extend_from_slice(&body[at..at + size]);
                input.extend_from_slice(b"\r\n");
                at += size;
            }
            input.extend_from_slice(b"0\r\n\r\nNEXT");
            let (decoded, rest) = decode_in_steps(&input, step, 1 << 20).unwrap();
            proptest::prop_assert_eq!(decoded, body);
            proptest::prop_assert!(b"NEXT".starts_with(&rest));
        }
    }
}
