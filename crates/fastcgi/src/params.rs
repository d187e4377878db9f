//! Name-value pairs: the payload of PARAMS, GET_VALUES and GET_VALUES_RESULT.
//!
//! A length below 128 takes one byte; anything longer takes four bytes with the
//! top bit set. Pairs may straddle record boundaries, so the PARAMS stream is
//! collected before it is parsed ([`ParamsCollector`]) and written as a stream
//! ([`ParamsWriter`]).

use bytes::{BufMut, Bytes, BytesMut};

use crate::record::{HEADER_LEN, Header, MAX_CONTENT_LEN, RecordType, padding_for, put_stream};

/// Longest name or value the 4-byte length form can express.
pub const MAX_PAIR_PART_LEN: usize = 0x7FFF_FFFF;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("name-value pair truncated at byte {offset}")]
    Truncated { offset: usize },
    #[error("params stream of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge { bytes: usize, limit: usize },
    #[error("params stream has more than {limit} pairs")]
    TooManyPairs { limit: usize },
}

/// Encoded length of one pair.
pub fn pair_len(name: &[u8], value: &[u8]) -> usize {
    length_len(name.len()) + length_len(value.len()) + name.len() + value.len()
}

fn length_len(len: usize) -> usize {
    if len < 128 { 1 } else { 4 }
}

fn put_length(buf: &mut BytesMut, len: usize) {
    if len < 128 {
        buf.put_u8(len as u8);
    } else {
        assert!(len <= MAX_PAIR_PART_LEN, "name-value part too long");
        buf.put_u32(len as u32 | 0x8000_0000);
    }
}

/// Appends the two length prefixes of a pair whose name and value the
/// caller appends next (to encode a transformed name without a copy).
pub fn put_pair_lengths(buf: &mut BytesMut, name_len: usize, value_len: usize) {
    buf.reserve(length_len(name_len) + length_len(value_len) + name_len + value_len);
    put_length(buf, name_len);
    put_length(buf, value_len);
}

/// Appends one encoded pair (no record framing).
pub fn put_pair(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    put_pair_lengths(buf, name.len(), value.len());
    buf.put_slice(name);
    buf.put_slice(value);
}

/// Iterates over the pairs in a complete name-value byte string.
pub fn parse_pairs(data: &[u8]) -> Pairs<'_> {
    Pairs { data, offset: 0 }
}

pub struct Pairs<'a> {
    data: &'a [u8],
    offset: usize,
}

impl<'a> Pairs<'a> {
    fn read_length(&mut self) -> Option<usize> {
        let first = *self.data.get(self.offset)?;
        if first & 0x80 == 0 {
            self.offset += 1;
            Some(first as usize)
        } else {
            let bytes = self.data.get(self.offset..self.offset + 4)?;
            self.offset += 4;
            Some(
                (u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & 0x7FFF_FFFF)
                    as usize,
            )
        }
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), ParamsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.offset >= self.data.len() {
            return None;
        }
        let start = self.offset;
        let truncated = || Some(Err(ParamsError::Truncated { offset: start }));
        let Some(name_len) = self.read_length() else {
            self.offset = self.data.len();
            return truncated();
        };
        let Some(value_len) = self.read_length() else {
            self.offset = self.data.len();
            return truncated();
        };
        let name_end = self.offset.checked_add(name_len);
        let value_end = name_end.and_then(|end| end.checked_add(value_len));
        match (name_end, value_end) {
            (Some(name_end), Some(value_end)) if value_end <= self.data.len() => {
                let name = &self.data[self.offset..name_end];
                let value = &self.data[name_end..value_end];
                self.offset = value_end;
                Some(Ok((name, value)))
            }
            _ => {
                self.offset = self.data.len();
                truncated()
            }
        }
    }
}

/// Writes a PARAMS stream straight into an output buffer.
///
/// Pairs are appended behind a reserved header; [`ParamsWriter::finish`] patches
/// that header, so the common case (under 64 KiB of params) costs no extra copy.
/// A larger stream is re-split into several records. `finish` also appends the
/// empty PARAMS record that ends the stream.
pub struct ParamsWriter<'a> {
    buf: &'a mut BytesMut,
    request_id: u16,
    header_at: usize,
}

impl<'a> ParamsWriter<'a> {
    pub fn new(buf: &'a mut BytesMut, request_id: u16) -> Self {
        let header_at = buf.len();
        buf.put_bytes(0, HEADER_LEN);
        Self {
            buf,
            request_id,
            header_at,
        }
    }

    pub fn pair(&mut self, name: &[u8], value: &[u8]) -> &mut Self {
        put_pair(self.buf, name, value);
        self
    }

    /// Appends a pair whose value is produced by several pieces, without
    /// building the value first (for example `HTTP_` + an upper-cased name).
    pub fn pair_parts(&mut self, name: &[&[u8]], value: &[&[u8]]) -> &mut Self {
        let name_len: usize = name.iter().map(|p| p.len()).sum();
        let value_len: usize = value.iter().map(|p| p.len()).sum();
        put_pair_lengths(self.buf, name_len, value_len);
        for part in name.iter().chain(value) {
            self.buf.put_slice(part);
        }
        self
    }

    /// Bytes of pairs written so far.
    pub fn len(&self) -> usize {
        self.buf.len() - self.header_at - HEADER_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Direct access to the pair bytes area, for callers that encode a pair in
    /// place (for example an upper-cased header name).
    pub fn buffer(&mut self) -> &mut BytesMut {
        self.buf
    }

    pub fn finish(self) {
        let content_len = self.len();
        if content_len == 0 {
            // Only the end-of-stream record.
            self.buf.truncate(self.header_at);
        } else if content_len <= MAX_CONTENT_LEN {
            let header = Header::new(RecordType::Params, self.request_id, content_len as u16);
            self.buf[self.header_at..self.header_at + HEADER_LEN]
                .copy_from_slice(&header.to_bytes());
            self.buf.put_bytes(0, padding_for(content_len) as usize);
        } else {
            let content = self.buf.split_off(self.header_at + HEADER_LEN);
            self.buf.truncate(self.header_at);
            put_stream(self.buf, RecordType::Params, self.request_id, &content);
        }
        crate::record::put_stream_end(self.buf, RecordType::Params, self.request_id);
    }
}

/// Limits on a PARAMS stream received from a peer.
#[derive(Clone, Copy, Debug)]
pub struct ParamsLimits {
    pub max_bytes: usize,
    pub max_pairs: usize,
}

impl Default for ParamsLimits {
    fn default() -> Self {
        // nginx sends a few KiB; 1 MiB leaves room for huge cookies while still
        // stopping a peer that streams params forever.
        Self {
            max_bytes: 1024 * 1024,
            max_pairs: 4096,
        }
    }
}

/// Collects PARAMS records until the empty record, then parses them.
#[derive(Debug, Default)]
pub struct ParamsCollector {
    buf: BytesMut,
}

impl ParamsCollector {
    /// Adds one record's content; an error means the peer went past `limits`.
    pub fn push(&mut self, content: &[u8], limits: ParamsLimits) -> Result<(), ParamsError> {
        let bytes = self.buf.len() + content.len();
        if bytes > limits.max_bytes {
            return Err(ParamsError::TooLarge {
                bytes,
                limit: limits.max_bytes,
            });
        }
        self.buf.extend_from_slice(content);
        Ok(())
    }

    /// Forgets a half-collected stream, keeping the buffer's memory.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Parses the collected stream into pairs that share one buffer.
    pub fn finish(&mut self, limits: ParamsLimits) -> Result<Params, ParamsError> {
        let raw = self.buf.split().freeze();
        Params::parse(raw, limits)
    }
}

/// A parsed set of name-value pairs sharing one buffer. Order is kept.
///
/// Pairs are kept as offsets into the received bytes rather than as `Bytes`
/// handles: thirty params would otherwise cost sixty reference-count updates
/// per request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    raw: Bytes,
    /// (name start, name end, value end); the value starts at the name end.
    pairs: Vec<(u32, u32, u32)>,
}

impl Params {
    pub fn parse(raw: Bytes, limits: ParamsLimits) -> Result<Self, ParamsError> {
        let mut pairs = Vec::with_capacity(32);
        let base = raw.as_ptr() as usize;
        for pair in parse_pairs(&raw) {
            let (name, value) = pair?;
            if pairs.len() == limits.max_pairs {
                return Err(ParamsError::TooManyPairs {
                    limit: limits.max_pairs,
                });
            }
            let name_start = name.as_ptr() as usize - base;
            let name_end = name_start + name.len();
            let value_end = value.as_ptr() as usize - base + value.len();
            pairs.push((name_start as u32, name_end as u32, value_end as u32));
        }
        Ok(Self { raw, pairs })
    }

    fn pair(&self, &(name_start, name_end, value_end): &(u32, u32, u32)) -> (&[u8], &[u8]) {
        (
            &self.raw[name_start as usize..name_end as usize],
            &self.raw[name_end as usize..value_end as usize],
        )
    }

    /// The first value for `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.pairs.iter().map(|pair| self.pair(pair))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The encoded pairs exactly as received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoder::RecordDecoder;

    #[test]
    fn short_and_long_lengths() {
        let mut buf = BytesMut::new();
        let long = vec![b'x'; 300];
        put_pair(&mut buf, b"A", b"b");
        put_pair(&mut buf, b"LONG", &long);
        assert_eq!(buf.len(), pair_len(b"A", b"b") + pair_len(b"LONG", &long));
        assert_eq!(&buf[..4], &[1, 1, b'A', b'b']);
        let pairs: Vec<_> = parse_pairs(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            pairs,
            vec![(&b"A"[..], &b"b"[..]), (&b"LONG"[..], &long[..])]
        );
    }

    #[test]
    fn truncated_pair_is_an_error() {
        let mut buf = BytesMut::new();
        put_pair(&mut buf, b"NAME", b"value");
        for cut in 1..buf.len() {
            let result: Result<Vec<_>, _> = parse_pairs(&buf[..cut]).collect();
            assert!(result.is_err(), "cut at {cut} parsed");
        }
    }

    #[test]
    fn huge_declared_length_does_not_overflow() {
        let data = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, b'a'];
        let result: Result<Vec<_>, _> = parse_pairs(&data).collect();
        assert_eq!(result, Err(ParamsError::Truncated { offset: 0 }));
    }

    fn decode_params_stream(buf: &mut BytesMut) -> Params {
        let mut decoder = RecordDecoder::new();
        let mut collector = ParamsCollector::default();
        let limits = ParamsLimits {
            max_bytes: usize::MAX,
            max_pairs: usize::MAX,
        };
        loop {
            let record = decoder.decode(buf).unwrap().expect("complete record");
            assert_eq!(record.record_type, RecordType::Params);
            if record.content.is_empty() {
                return collector.finish(limits).unwrap();
            }
            collector.push(&record.content, limits).unwrap();
        }
    }

    #[test]
    fn writer_small_stream_is_one_record_plus_end() {
        let mut buf = BytesMut::new();
        let mut writer = ParamsWriter::new(&mut buf, 1);
        writer.pair(b"SCRIPT_FILENAME", b"/srv/index.php");
        writer.pair_parts(&[b"HTTP_", b"HOST"], &[b"example", b".org"]);
        writer.finish();
        assert_eq!(buf.len() % 8, 0);
        let params = decode_params_stream(&mut buf);
        assert_eq!(params.get_str("SCRIPT_FILENAME"), Some("/srv/index.php"));
        assert_eq!(params.get_str("HTTP_HOST"), Some("example.org"));
        assert!(buf.is_empty());
    }

    #[test]
    fn writer_large_stream_is_split() {
        let mut buf = BytesMut::new();
        let big = vec![b'v'; 100_000];
        let mut writer = ParamsWriter::new(&mut buf, 3);
        writer.pair(b"BIG", &big);
        writer.pair(b"AFTER", b"1");
        writer.finish();
        let params = decode_params_stream(&mut buf);
        assert_eq!(params.get("BIG"), Some(&big[..]));
        assert_eq!(params.get_str("AFTER"), Some("1"));
    }

    #[test]
    fn empty_writer_is_just_the_end_record() {
        let mut buf = BytesMut::new();
        ParamsWriter::new(&mut buf, 1).finish();
        assert_eq!(buf.len(), HEADER_LEN);
    }

    #[test]
    fn collector_limits() {
        let mut collector = ParamsCollector::default();
        let limits = ParamsLimits {
            max_bytes: 10,
            max_pairs: 1,
        };
        assert!(collector.push(&[0; 8], limits).is_ok());
        assert!(matches!(
            collector.push(&[0; 8], limits),
            Err(ParamsError::TooLarge { .. })
        ));
        let mut buf = BytesMut::new();
        put_pair(&mut buf, b"a", b"1");
        put_pair(&mut buf, b"b", b"2");
        assert_eq!(
            Params::parse(buf.freeze(), limits),
            Err(ParamsError::TooManyPairs { limit: 1 })
        );
    }
}
