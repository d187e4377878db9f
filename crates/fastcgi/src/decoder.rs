//! Turns bytes into records. Sans-io: the caller owns the buffer and the socket.
//!
//! `decode` first checks that a whole record (header, content and padding) is
//! buffered, then splits the content off without copying, then drops the
//! padding. A partial record leaves the buffer untouched.

use bytes::{Buf, Bytes, BytesMut};

use crate::record::{HEADER_LEN, Header, Record, VERSION_1};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported FastCGI version {0} (only version 1 exists)")]
    UnsupportedVersion(u8),
}

/// Content up to this size is copied out of the input buffer (see `decode`).
const SMALL_CONTENT: usize = 4096;

/// Stateless record decoder; a struct so limits can grow without API churn.
#[derive(Debug, Default, Clone)]
pub struct RecordDecoder {
    _private: (),
}

impl RecordDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the next complete record, or `None` when more bytes are needed.
    /// On error the buffer is left as it was; the connection should be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Record>, DecodeError> {
        let Some(header) = peek_header(buf) else {
            return Ok(None);
        };
        if header.version != VERSION_1 {
            return Err(DecodeError::UnsupportedVersion(header.version));
        }
        if buf.len() < header.record_len() {
            // Make room for the rest of this record in one allocation.
            buf.reserve(header.record_len() - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let length = header.content_length as usize;
        // Small content is copied out, so the buffer stays unshared and the
        // next read reuses its memory; large content is shared, not copied.
        let content = if length <= SMALL_CONTENT {
            let content = Bytes::copy_from_slice(&buf[..length]);
            buf.advance(length);
            content
        } else {
            buf.split_to(length).freeze()
        };
        buf.advance(header.padding_length as usize);
        Ok(Some(Record {
            record_type: header.record_type,
            request_id: header.request_id,
            content,
        }))
    }

    /// How many more bytes are needed before `decode` can return a record
    /// (at least 1 when `buf` holds less than a header).
    pub fn bytes_needed(&self, buf: &[u8]) -> usize {
        match peek_header(buf) {
            None => HEADER_LEN - buf.len(),
            Some(header) => header.record_len().saturating_sub(buf.len()),
        }
    }
}

fn peek_header(buf: &[u8]) -> Option<Header> {
    let bytes: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
    Some(Header::parse(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{RecordType, put_record};

    #[test]
    fn partial_records_wait_for_more() {
        let mut whole = BytesMut::new();
        put_record(&mut whole, RecordType::Stdout, 1, b"hello");
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(RecordDecoder::new().decode(&mut part), Ok(None));
            assert_eq!(part.len(), cut, "partial input must not be consumed");
        }
        let record = RecordDecoder::new().decode(&mut whole).unwrap().unwrap();
        assert_eq!(record.content.as_ref(), b"hello");
        assert!(whole.is_empty(), "padding consumed");
    }

    #[test]
    fn wrong_version_is_refused() {
        let mut buf = BytesMut::from(&[2u8, 6, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(
            RecordDecoder::new().decode(&mut buf),
            Err(DecodeError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn bytes_needed_counts_down() {
        let mut whole = BytesMut::new();
        put_record(&mut whole, RecordType::Stderr, 1, b"abc");
        let decoder = RecordDecoder::new();
        assert_eq!(decoder.bytes_needed(&whole[..3]), 5);
        assert_eq!(decoder.bytes_needed(&whole[..8]), 8);
        assert_eq!(decoder.bytes_needed(&whole), 0);
    }
}
