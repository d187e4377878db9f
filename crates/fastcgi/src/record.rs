//! Record framing: the 8-byte header, record types, and the fixed-size bodies of
//! BEGIN_REQUEST and END_REQUEST. Pure data, no I/O.

use bytes::{BufMut, Bytes, BytesMut};

/// The only protocol version that exists.
pub const VERSION_1: u8 = 1;
/// Size of a record header on the wire.
pub const HEADER_LEN: usize = 8;
/// Largest content a single record can carry (`contentLength` is a u16).
pub const MAX_CONTENT_LEN: usize = 65535;
/// Request id used by management records (GET_VALUES and friends).
pub const MANAGEMENT_REQUEST_ID: u16 = 0;
/// `flags` bit of BEGIN_REQUEST: keep the connection open after this request.
pub const FLAG_KEEP_CONN: u8 = 1;

/// The record types of FastCGI 1.0, plus any other byte a peer may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordType {
    BeginRequest,
    AbortRequest,
    EndRequest,
    Params,
    Stdin,
    Stdout,
    Stderr,
    Data,
    GetValues,
    GetValuesResult,
    UnknownType,
    /// A type this version of the protocol does not define.
    Other(u8),
}

impl RecordType {
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::BeginRequest,
            2 => Self::AbortRequest,
            3 => Self::EndRequest,
            4 => Self::Params,
            5 => Self::Stdin,
            6 => Self::Stdout,
            7 => Self::Stderr,
            8 => Self::Data,
            9 => Self::GetValues,
            10 => Self::GetValuesResult,
            11 => Self::UnknownType,
            other => Self::Other(other),
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Self::BeginRequest => 1,
            Self::AbortRequest => 2,
            Self::EndRequest => 3,
            Self::Params => 4,
            Self::Stdin => 5,
            Self::Stdout => 6,
            Self::Stderr => 7,
            Self::Data => 8,
            Self::GetValues => 9,
            Self::GetValuesResult => 10,
            Self::UnknownType => 11,
            Self::Other(other) => other,
        }
    }

    /// Management records carry request id 0 and are not part of any request.
    pub fn is_management(self) -> bool {
        matches!(
            self,
            Self::GetValues | Self::GetValuesResult | Self::UnknownType | Self::Other(_)
        )
    }
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub record_type: RecordType,
    pub request_id: u16,
    pub content_length: u16,
    pub padding_length: u8,
}

impl Header {
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Self {
        Self {
            version: bytes[0],
            record_type: RecordType::from_u8(bytes[1]),
            request_id: u16::from_be_bytes([bytes[2], bytes[3]]),
            content_length: u16::from_be_bytes([bytes[4], bytes[5]]),
            padding_length: bytes[6],
        }
    }

    /// Header for `content_length` bytes of content, padded to a multiple of 8
    /// as the specification recommends (and nginx does).
    pub fn new(record_type: RecordType, request_id: u16, content_length: u16) -> Self {
        Self {
            version: VERSION_1,
            record_type,
            request_id,
            content_length,
            padding_length: padding_for(content_length as usize),
        }
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let id = self.request_id.to_be_bytes();
        let len = self.content_length.to_be_bytes();
        [
            self.version,
            self.record_type.as_u8(),
            id[0],
            id[1],
            len[0],
            len[1],
            self.padding_length,
            0,
        ]
    }

    /// Bytes taken on the wire by this record, header included.
    pub fn record_len(self) -> usize {
        HEADER_LEN + self.content_length as usize + self.padding_length as usize
    }
}

/// Padding that brings `content_length` up to a multiple of 8.
pub fn padding_for(content_length: usize) -> u8 {
    ((8 - content_length % 8) % 8) as u8
}

/// One decoded record. `content` excludes padding and shares the decoder's
/// buffer (no copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub record_type: RecordType,
    pub request_id: u16,
    pub content: Bytes,
}

/// The role a web server asks the application to play.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Responder,
    Authorizer,
    Filter,
    Other(u16),
}

impl Role {
    pub fn from_u16(value: u16) -> Self {
        match value {
            1 => Self::Responder,
            2 => Self::Authorizer,
            3 => Self::Filter,
            other => Self::Other(other),
        }
    }

    pub fn as_u16(self) -> u16 {
        match self {
            Self::Responder => 1,
            Self::Authorizer => 2,
            Self::Filter => 3,
            Self::Other(other) => other,
        }
    }
}

/// Body of a BEGIN_REQUEST record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BeginRequest {
    pub role: Role,
    pub flags: u8,
}

impl BeginRequest {
    pub const LEN: usize = 8;

    pub fn keep_conn(&self) -> bool {
        self.flags & FLAG_KEEP_CONN != 0
    }

    /// Parses the 8-byte body; `None` if the content is too short.
    pub fn parse(content: &[u8]) -> Option<Self> {
        if content.len() < Self::LEN {
            return None;
        }
        Some(Self {
            role: Role::from_u16(u16::from_be_bytes([content[0], content[1]])),
            flags: content[2],
        })
    }

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let role = self.role.as_u16().to_be_bytes();
        [role[0], role[1], self.flags, 0, 0, 0, 0, 0]
    }
}

/// `protocolStatus` of an END_REQUEST record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolStatus {
    RequestComplete,
    CantMpxConn,
    Overloaded,
    UnknownRole,
    Other(u8),
}

impl ProtocolStatus {
    pub fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::RequestComplete,
            1 => Self::CantMpxConn,
            2 => Self::Overloaded,
            3 => Self::UnknownRole,
            other => Self::Other(other),
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Self::RequestComplete => 0,
            Self::CantMpxConn => 1,
            Self::Overloaded => 2,
            Self::UnknownRole => 3,
            Self::Other(other) => other,
        }
    }
}

/// Body of an END_REQUEST record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndRequest {
    pub app_status: u32,
    pub protocol_status: ProtocolStatus,
}

impl EndRequest {
    pub const LEN: usize = 8;

    pub fn parse(content: &[u8]) -> Option<Self> {
        if content.len() < Self::LEN {
            return None;
        }
        Some(Self {
            app_status: u32::from_be_bytes([content[0], content[1], content[2], content[3]]),
            protocol_status: ProtocolStatus::from_u8(content[4]),
        })
    }

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let status = self.app_status.to_be_bytes();
        [
            status[0],
            status[1],
            status[2],
            status[3],
            self.protocol_status.as_u8(),
            0,
            0,
            0,
        ]
    }
}

// ---- encoding -------------------------------------------------------------

/// Appends one record whose content fits in a single record.
///
/// # Panics
/// If `content` is longer than [`MAX_CONTENT_LEN`]; use [`put_stream`] for data.
pub fn put_record(buf: &mut BytesMut, record_type: RecordType, request_id: u16, content: &[u8]) {
    assert!(content.len() <= MAX_CONTENT_LEN, "record content too long");
    let header = Header::new(record_type, request_id, content.len() as u16);
    buf.reserve(header.record_len());
    buf.put_slice(&header.to_bytes());
    buf.put_slice(content);
    buf.put_bytes(0, header.padding_length as usize);
}

/// Appends `data` as a stream (PARAMS, STDIN, STDOUT, STDERR, DATA), split into
/// records of at most [`MAX_CONTENT_LEN`] bytes. Empty `data` appends nothing:
/// the end of a stream is marked by [`put_stream_end`].
pub fn put_stream(buf: &mut BytesMut, record_type: RecordType, request_id: u16, data: &[u8]) {
    for chunk in data.chunks(MAX_CONTENT_LEN) {
        put_record(buf, record_type, request_id, chunk);
    }
}

/// Appends the empty record that closes a stream.
pub fn put_stream_end(buf: &mut BytesMut, record_type: RecordType, request_id: u16) {
    put_record(buf, record_type, request_id, &[]);
}

pub fn put_begin_request(buf: &mut BytesMut, request_id: u16, role: Role, keep_conn: bool) {
    let body = BeginRequest {
        role,
        flags: if keep_conn { FLAG_KEEP_CONN } else { 0 },
    };
    put_record(buf, RecordType::BeginRequest, request_id, &body.to_bytes());
}

pub fn put_end_request(buf: &mut BytesMut, request_id: u16, end: EndRequest) {
    put_record(buf, RecordType::EndRequest, request_id, &end.to_bytes());
}

pub fn put_abort_request(buf: &mut BytesMut, request_id: u16) {
    put_record(buf, RecordType::AbortRequest, request_id, &[]);
}

/// Answer to a management record of a type we do not understand.
pub fn put_unknown_type(buf: &mut BytesMut, unknown: u8) {
    put_record(
        buf,
        RecordType::UnknownType,
        MANAGEMENT_REQUEST_ID,
        &[unknown, 0, 0, 0, 0, 0, 0, 0],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let header = Header::new(RecordType::Stdout, 0xBEEF, 1234);
        assert_eq!(Header::parse(&header.to_bytes()), header);
        assert_eq!(header.padding_length, 6);
        assert_eq!(header.record_len(), 8 + 1234 + 6);
    }

    #[test]
    fn record_types_round_trip_every_byte() {
        for byte in 0..=255u8 {
            assert_eq!(RecordType::from_u8(byte).as_u8(), byte);
        }
    }

    #[test]
    fn stream_is_split_at_max_content() {
        let data = vec![7u8; MAX_CONTENT_LEN * 2 + 10];
        let mut buf = BytesMut::new();
        put_stream(&mut buf, RecordType::Stdin, 1, &data);
        let first = Header::parse(buf[..8].try_into().unwrap());
        assert_eq!(first.content_length as usize, MAX_CONTENT_LEN);
        let second_at = first.record_len();
        let second = Header::parse(buf[second_at..second_at + 8].try_into().unwrap());
        assert_eq!(second.content_length as usize, MAX_CONTENT_LEN);
        let third_at = second_at + second.record_len();
        let third = Header::parse(buf[third_at..third_at + 8].try_into().unwrap());
        assert_eq!(third.content_length, 10);
        assert_eq!(third_at + third.record_len(), buf.len());
    }

    #[test]
    fn begin_and_end_bodies() {
        let begin = BeginRequest {
            role: Role::Responder,
            flags: FLAG_KEEP_CONN,
        };
        assert_eq!(BeginRequest::parse(&begin.to_bytes()), Some(begin));
        assert!(begin.keep_conn());
        let end = EndRequest {
            app_status: 0xDEADBEEF,
            protocol_status: ProtocolStatus::CantMpxConn,
        };
        assert_eq!(EndRequest::parse(&end.to_bytes()), Some(end));
        assert_eq!(EndRequest::parse(&[0; 3]), None);
    }
}
