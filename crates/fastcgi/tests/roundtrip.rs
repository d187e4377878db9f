//! Property tests for the sans-io codec: whatever `record` and `params` encode,
//! `RecordDecoder`, `parse_pairs` and `ParamsCollector` decode back unchanged,
//! however the byte stream is cut into reads; and no input, however broken,
//! makes the decoder, the pair parser or the `RequestReader` panic.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use fastcgi::params::{ParamsCollector, pair_len, parse_pairs, put_pair};
use fastcgi::record::{
    HEADER_LEN, MAX_CONTENT_LEN, put_begin_request, put_end_request, put_record, put_stream,
    put_stream_end,
};
use fastcgi::server::RequestReader;
use fastcgi::{
    BeginRequest, EndRequest, Header, Params, ParamsLimits, ParamsWriter, ProtocolStatus, Record,
    RecordDecoder, RecordType, Role,
};
use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

/// Deterministic filler, so a case of 200 KB costs one `u64` of strategy
/// state instead of 200 000 shrinkable bytes.
fn filler(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Lengths that matter to the codec: the 1-/4-byte pair length switch at 128,
/// the record size limit at 65535, and plenty of small values.
fn interesting_len(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0..130usize,
        2 => 120..140usize,
        1 => 250..260usize,
        1 => (MAX_CONTENT_LEN - 10)..(MAX_CONTENT_LEN + 10),
        1 => 0..max,
    ]
    .prop_map(move |len| len.min(max))
}

/// Cuts `bytes` into pieces whose sizes cycle through `sizes` (each >= 1).
fn chunks<'a>(bytes: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = bytes;
    let mut size = sizes.iter().cycle();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let take = (*size.next()?).clamp(1, rest.len());
        let (piece, tail) = rest.split_at(take);
        rest = tail;
        Some(piece)
    })
}

/// Feeds `wire` to a decoder piece by piece, checking at every step that
/// `bytes_needed` says exactly whether `decode` can produce a record.
fn decode_in_pieces(wire: &[u8], sizes: &[usize]) -> Result<Vec<Record>, fastcgi::DecodeError> {
    let mut decoder = RecordDecoder::new();
    let mut buf = BytesMut::new();
    let mut records = Vec::new();
    for piece in chunks(wire, sizes) {
        buf.extend_from_slice(piece);
        loop {
            let needed = decoder.bytes_needed(&buf);
            let before = buf.len();
            match decoder.decode(&mut buf)? {
                Some(record) => {
                    assert_eq!(needed, 0, "decoded a record while bytes_needed > 0");
                    records.push(record);
                }
                None => {
                    assert!(needed > 0, "bytes_needed is 0 but decode wants more");
                    assert_eq!(buf.len(), before, "a partial record was consumed");
                    break;
                }
            }
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    Ok(records)
}

#[derive(Clone, Debug)]
struct StreamSpec {
    record_type: u8,
    request_id: u16,
    len: usize,
    seed: u64,
}

fn stream_spec() -> impl Strategy<Value = StreamSpec> {
    (
        any::<u8>(),
        any::<u16>(),
        interesting_len(200_000),
        any::<u64>(),
    )
        .prop_map(|(record_type, request_id, len, seed)| StreamSpec {
            record_type,
            request_id,
            len,
            seed,
        })
}

fn pair_strategy() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (interesting_len(300), interesting_len(100_000), any::<u64>()).prop_map(
        |(name_len, value_len, seed)| (filler(name_len, seed), filler(value_len, seed ^ 0xA5A5)),
    )
}

/// Decodes a PARAMS stream (ending with the empty record) into pairs.
fn collect_params(records: &[Record], request_id: u16) -> Params {
    let limits = ParamsLimits {
        max_bytes: usize::MAX,
        max_pairs: usize::MAX,
    };
    let mut collector = ParamsCollector::default();
    let (last, body) = records.split_last().expect("at least the end record");
    assert!(
        last.content.is_empty(),
        "stream not closed by an empty record"
    );
    for record in records {
        assert_eq!(record.record_type, RecordType::Params);
        assert_eq!(record.request_id, request_id);
    }
    for record in body {
        assert!(!record.content.is_empty(), "empty record inside the stream");
        collector.push(&record.content, limits).unwrap();
    }
    collector.finish(limits).unwrap()
}

/// An `AsyncRead` that hands out its bytes in the given piece sizes and never
/// returns `Pending`, so a `RequestReader` future finishes on its first poll.
struct PieceReader {
    data: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl AsyncRead for PieceReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let size = self.sizes[self.turn % self.sizes.len()].max(1);
        self.turn += 1;
        let end = (self.at + size).min(self.data.len());
        let take = (end - self.at).min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.data[at..at + take]);
        self.at += take;
        Poll::Ready(Ok(()))
    }
}

fn poll_once<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("reader never blocks, so the future must be ready"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any record that fits in one record decodes to itself, padded to 8.
    #[test]
    fn single_record_round_trip(
        record_type in any::<u8>(),
        request_id in any::<u16>(),
        len in interesting_len(MAX_CONTENT_LEN),
        seed in any::<u64>(),
    ) {
        let content = filler(len, seed);
        let mut wire = BytesMut::new();
        put_record(&mut wire, RecordType::from_u8(record_type), request_id, &content);
        prop_assert_eq!(wire.len() % 8, 0);
        prop_assert!(wire.len() - HEADER_LEN - content.len() < 8, "more padding than needed");
        let record = RecordDecoder::new().decode(&mut wire).unwrap().unwrap();
        prop_assert!(wire.is_empty());
        prop_assert_eq!(record.record_type.as_u8(), record_type);
        prop_assert_eq!(record.request_id, request_id);
        prop_assert_eq!(record.content.as_ref(), &content[..]);
    }

    /// Streams of up to 200 KB are split by `put_stream` into records of at
    /// most 65535 bytes and reassemble to the original data, stream by stream,
    /// even when several streams share the wire.
    #[test]
    fn streams_split_and_reassemble(
        streams in prop::collection::vec(stream_spec(), 1..4),
        sizes in prop::collection::vec(1..70_000usize, 1..8),
    ) {
        let mut wire = BytesMut::new();
        let mut expected = Vec::new();
        for spec in &streams {
            let data = filler(spec.len, spec.seed);
            let kind = RecordType::from_u8(spec.record_type);
            put_stream(&mut wire, kind, spec.request_id, &data);
            put_stream_end(&mut wire, kind, spec.request_id);
            expected.push((kind, spec.request_id, data));
        }
        let records = decode_in_pieces(&wire, &sizes).unwrap();
        let mut records = records.into_iter();
        for (kind, request_id, data) in expected {
            let mut reassembled = Vec::new();
            let mut pieces = 0;
            loop {
                let record = records.next().expect("stream ended early");
                prop_assert_eq!(record.record_type, kind);
                prop_assert_eq!(record.request_id, request_id);
                prop_assert!(record.content.len() <= MAX_CONTENT_LEN);
                if record.content.is_empty() {
                    break;
                }
                pieces += 1;
                reassembled.extend_from_slice(&record.content);
            }
            prop_assert_eq!(pieces, data.len().div_ceil(MAX_CONTENT_LEN));
            prop_assert_eq!(reassembled, data);
        }
        prop_assert!(records.next().is_none());
    }

    /// Any 8 header bytes survive parse + encode, except the reserved byte.
    #[test]
    fn header_bytes_round_trip(bytes in any::<[u8; 8]>()) {
        let header = Header::parse(&bytes);
        let mut expected = bytes;
        expected[7] = 0;
        prop_assert_eq!(header.to_bytes(), expected);
        prop_assert_eq!(
            header.record_len(),
            HEADER_LEN + u16::from_be_bytes([bytes[4], bytes[5]]) as usize + bytes[6] as usize
        );
    }

    /// BEGIN_REQUEST and END_REQUEST bodies carry every field value through.
    #[test]
    fn fixed_bodies_round_trip(
        role in any::<u16>(),
        keep_conn in any::<bool>(),
        app_status in any::<u32>(),
        protocol_status in any::<u8>(),
        request_id in any::<u16>(),
    ) {
        let mut wire = BytesMut::new();
        put_begin_request(&mut wire, request_id, Role::from_u16(role), keep_conn);
        let end = EndRequest {
            app_status,
            protocol_status: ProtocolStatus::from_u8(protocol_status),
        };
        put_end_request(&mut wire, request_id, end);
        let mut decoder = RecordDecoder::new();
        let begin = decoder.decode(&mut wire).unwrap().unwrap();
        prop_assert_eq!(begin.record_type, RecordType::BeginRequest);
        let body = BeginRequest::parse(&begin.content).unwrap();
        prop_assert_eq!(body.role.as_u16(), role);
        prop_assert_eq!(body.keep_conn(), keep_conn);
        let end_record = decoder.decode(&mut wire).unwrap().unwrap();
        prop_assert_eq!(end_record.record_type, RecordType::EndRequest);
        prop_assert_eq!(EndRequest::parse(&end_record.content), Some(end));
        prop_assert!(wire.is_empty());
    }

    /// Pairs of any size, on either side of the 127/128 length boundary,
    /// parse back to themselves, in order, using the shortest length form.
    #[test]
    fn pairs_round_trip(pairs in prop::collection::vec(pair_strategy(), 0..6)) {
        let mut wire = BytesMut::new();
        let mut expected_len = 0;
        for (name, value) in &pairs {
            let before = wire.len();
            put_pair(&mut wire, name, value);
            prop_assert_eq!(wire.len() - before, pair_len(name, value));
            let name_form = if name.len() < 128 { 1 } else { 4 };
            prop_assert_eq!(wire[before] & 0x80 != 0, name_form == 4);
            expected_len += pair_len(name, value);
        }
        prop_assert_eq!(wire.len(), expected_len);
        let parsed: Vec<(&[u8], &[u8])> = parse_pairs(&wire).collect::<Result<_, _>>().unwrap();
        let expected: Vec<(&[u8], &[u8])> =
            pairs.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        prop_assert_eq!(parsed, expected);
    }

    /// The 4-byte length form is accepted for short lengths too (cgi-fcgi
    /// sends it that way on purpose).
    #[test]
    fn long_form_of_short_lengths_is_accepted(name_len in 0..200usize, value_len in 0..200usize) {
        let name = filler(name_len, 1);
        let value = filler(value_len, 2);
        let mut wire = Vec::new();
        wire.extend_from_slice(&(name_len as u32 | 0x8000_0000).to_be_bytes());
        wire.extend_from_slice(&(value_len as u32 | 0x8000_0000).to_be_bytes());
        wire.extend_from_slice(&name);
        wire.extend_from_slice(&value);
        let parsed: Vec<_> = parse_pairs(&wire).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(parsed, vec![(&name[..], &value[..])]);
    }

    /// `ParamsWriter` (whole pairs and pairs built from parts, behind other
    /// records already in the buffer) produces a PARAMS stream that decodes,
    /// however it is cut into reads, to the same pairs in the same order.
    #[test]
    fn params_writer_round_trip(
        pairs in prop::collection::vec(pair_strategy(), 0..8),
        use_parts in any::<bool>(),
        request_id in any::<u16>(),
        sizes in prop::collection::vec(1..20_000usize, 1..6),
    ) {
        let mut wire = BytesMut::new();
        put_begin_request(&mut wire, request_id, Role::Responder, true);
        let prefix = wire.len();
        let mut writer = ParamsWriter::new(&mut wire, request_id);
        let mut written = 0;
        for (name, value) in &pairs {
            if use_parts {
                let (n1, n2) = name.split_at(name.len() / 2);
                let (v1, v2) = value.split_at(value.len() / 3);
                writer.pair_parts(&[n1, n2], &[v1, b"", v2]);
            } else {
                writer.pair(name, value);
            }
            written += pair_len(name, value);
            prop_assert_eq!(writer.len(), written);
        }
        writer.finish();
        prop_assert_eq!(wire.len() % 8, 0);

        let records = decode_in_pieces(&wire, &sizes).unwrap();
        prop_assert_eq!(records[0].record_type, RecordType::BeginRequest);
        let params = collect_params(&records[1..], request_id);
        let got: Vec<(&[u8], &[u8])> = params.iter().collect();
        let expected: Vec<(&[u8], &[u8])> =
            pairs.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        prop_assert_eq!(got, expected);
        prop_assert_eq!(params.raw().len(), written);
        prop_assert!(wire.len() > prefix);
    }

    /// Cutting the same wire bytes at arbitrary points yields the same
    /// records as decoding them in one piece.
    #[test]
    fn any_cut_decodes_the_same(
        streams in prop::collection::vec(
            (any::<u8>(), any::<u16>(), 0..3000usize, any::<u64>()), 0..12),
        sizes in prop::collection::vec(1..64usize, 1..16),
    ) {
        let mut wire = BytesMut::new();
        for (kind, id, len, seed) in &streams {
            let content = filler(*len, *seed);
            put_stream(&mut wire, RecordType::from_u8(*kind), *id, &content);
            put_stream_end(&mut wire, RecordType::from_u8(*kind), *id);
        }
        let whole = decode_in_pieces(&wire, &[wire.len().max(1)]).unwrap();
        let cut = decode_in_pieces(&wire, &sizes).unwrap();
        prop_assert_eq!(whole.len(), 2 * streams.iter().filter(|s| s.2 > 0).count()
            + streams.iter().filter(|s| s.2 == 0).count());
        prop_assert_eq!(whole, cut);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Garbage never panics the decoder; a bad version is reported without
    /// consuming anything, and every byte is either decoded or still buffered.
    #[test]
    fn garbage_never_panics_the_decoder(
        garbage in prop::collection::vec(any::<u8>(), 0..2048),
        sizes in prop::collection::vec(1..32usize, 1..8),
        force_version_1 in any::<bool>(),
    ) {
        let mut garbage = garbage;
        if force_version_1 {
            // Most records of random bytes die on the version byte; make the
            // first header plausible so lengths and padding get exercised.
            if let Some(first) = garbage.first_mut() {
                *first = 1;
            }
        }
        let mut decoder = RecordDecoder::new();
        let mut buf = BytesMut::new();
        let mut consumed = 0;
        'feed: for piece in chunks(&garbage, &sizes) {
            buf.extend_from_slice(piece);
            loop {
                let before = buf.len();
                match decoder.decode(&mut buf) {
                    Ok(Some(record)) => {
                        let taken = before - buf.len();
                        prop_assert!(taken >= HEADER_LEN + record.content.len());
                        consumed += taken;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        prop_assert_eq!(buf.len(), before, "error consumed input");
                        break 'feed;
                    }
                }
            }
        }
        prop_assert!(consumed + buf.len() <= garbage.len());
    }

    /// Garbage never panics the pair parser: it ends, stops after an error,
    /// and every pair it yields lies inside the input.
    #[test]
    fn garbage_never_panics_the_pair_parser(
        garbage in prop::collection::vec(any::<u8>(), 0..1024),
        max_pairs in 0..8usize,
        max_bytes in 0..2048usize,
    ) {
        let mut items = 0;
        let mut seen_error = false;
        for item in parse_pairs(&garbage) {
            prop_assert!(!seen_error, "pairs after an error");
            items += 1;
            prop_assert!(items <= garbage.len(), "parser does not advance");
            match item {
                Ok((name, value)) => {
                    prop_assert!(name.len() + value.len() < garbage.len());
                }
                Err(_) => seen_error = true,
            }
        }
        let limits = ParamsLimits { max_bytes, max_pairs };
        if let Ok(params) = Params::parse(bytes::Bytes::from(garbage.clone()), limits) {
            prop_assert!(params.len() <= max_pairs);
        }
        let mut collector = ParamsCollector::default();
        let mut total = 0;
        for piece in garbage.chunks(100) {
            total += piece.len();
            if collector.push(piece, limits).is_err() {
                prop_assert!(total > max_bytes);
                return Ok(());
            }
        }
        let _ = collector.finish(limits);
    }

    /// A random sequence of well-framed records of any type and a few request
    /// ids, read in random pieces, never panics the server-side reader, and
    /// every event it reports belongs to a request that began.
    #[test]
    fn random_records_never_panic_the_request_reader(
        records in prop::collection::vec(
            (1..13u8, 0..3u16, prop::collection::vec(any::<u8>(), 0..40)), 0..24),
        sizes in prop::collection::vec(1..40usize, 1..8),
        max_pair_count in 0..4usize,
    ) {
        let mut wire = BytesMut::new();
        for (kind, id, content) in &records {
            let kind = RecordType::from_u8(*kind);
            if kind == RecordType::BeginRequest && content.len() < 8 {
                // Give BEGIN_REQUEST a valid body most of the time.
                put_begin_request(&mut wire, *id, Role::Responder, content.is_empty());
            } else {
                put_record(&mut wire, kind, *id, content);
            }
        }
        let reader = PieceReader { data: wire.to_vec(), at: 0, sizes, turn: 0 };
        let limits = ParamsLimits { max_bytes: 64, max_pairs: max_pair_count };
        let mut reader = RequestReader::new(reader, limits);
        let mut began = std::collections::HashSet::new();
        for _ in 0..=records.len() {
            match poll_once(reader.next_event()) {
                Ok(Some(fastcgi::server::ServerEvent::Begin { request_id, .. })) => {
                    began.insert(request_id);
                }
                Ok(Some(fastcgi::server::ServerEvent::Params { request_id, params })) => {
                    prop_assert!(began.contains(&request_id));
                    prop_assert!(params.len() <= max_pair_count);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}
