//! Micro-benchmarks of the FastCGI codec's per-request work: what tqserver
//! does for every request it sends to php-cgi, and what its FastCGI listener
//! does for every request nginx sends it.
//!
//! Run with `cargo bench -p tq-fastcgi --bench codec`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fastcgi::params::ParamsCollector;
use fastcgi::record::{
    EndRequest, ProtocolStatus, RecordType, Role, put_begin_request, put_end_request, put_record,
    put_stream, put_stream_end,
};
use fastcgi::{ParamsLimits, ParamsWriter, RecordDecoder};

/// Thirty params as nginx's `fastcgi_params` and a browser's headers make them.
const CGI_PARAMS: [(&str, &str); 30] = [
    ("SCRIPT_FILENAME", "/srv/www/example/public/index.php"),
    ("QUERY_STRING", "page=2&sort=date"),
    ("REQUEST_METHOD", "GET"),
    ("CONTENT_TYPE", ""),
    ("CONTENT_LENGTH", ""),
    ("SCRIPT_NAME", "/index.php"),
    ("REQUEST_URI", "/blog/2024/05/hello-world?page=2&sort=date"),
    ("DOCUMENT_URI", "/index.php"),
    ("DOCUMENT_ROOT", "/srv/www/example/public"),
    ("SERVER_PROTOCOL", "HTTP/1.1"),
    ("REQUEST_SCHEME", "https"),
    ("HTTPS", "on"),
    ("GATEWAY_INTERFACE", "CGI/1.1"),
    ("SERVER_SOFTWARE", "tqserver/0.1.0"),
    ("REMOTE_ADDR", "203.0.113.42"),
    ("REMOTE_PORT", "53124"),
    ("SERVER_ADDR", "192.0.2.10"),
    ("SERVER_PORT", "443"),
    ("SERVER_NAME", "example.org"),
    ("REDIRECT_STATUS", "200"),
    ("PATH_INFO", ""),
    ("HTTP_HOST", "example.org"),
    (
        "HTTP_USER_AGENT",
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    ),
    (
        "HTTP_ACCEPT",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ),
    ("HTTP_ACCEPT_LANGUAGE", "en-GB,en;q=0.7,de;q=0.3"),
    ("HTTP_ACCEPT_ENCODING", "gzip, deflate, br, zstd"),
    (
        "HTTP_COOKIE",
        "session=9f2c4e0b7a1d4c3e8f6a5b4c3d2e1f00; theme=dark; consent=1",
    ),
    ("HTTP_REFERER", "https://example.org/blog/"),
    ("HTTP_CONNECTION", "keep-alive"),
    ("HTTP_UPGRADE_INSECURE_REQUESTS", "1"),
];

/// BEGIN_REQUEST, the PARAMS stream and an empty STDIN: one GET request.
fn encode_request(buf: &mut BytesMut) {
    put_begin_request(buf, 1, Role::Responder, true);
    let mut params = ParamsWriter::new(buf, 1);
    for (name, value) in CGI_PARAMS {
        params.pair(name.as_bytes(), value.as_bytes());
    }
    params.finish();
    put_stream_end(buf, RecordType::Stdin, 1);
}

/// What php-cgi sends for a small page: headers and a 1 KiB body in one
/// STDOUT record, the empty STDOUT record, END_REQUEST.
fn php_response() -> BytesMut {
    let mut stdout =
        b"X-Powered-By: PHP/8.2.36\r\nContent-type: text/html; charset=UTF-8\r\n\r\n".to_vec();
    stdout.extend(std::iter::repeat_n(b'x', 1024));
    let mut buf = BytesMut::new();
    put_record(&mut buf, RecordType::Stdout, 1, &stdout);
    put_stream_end(&mut buf, RecordType::Stdout, 1);
    put_end_request(
        &mut buf,
        1,
        EndRequest {
            app_status: 0,
            protocol_status: ProtocolStatus::RequestComplete,
        },
    );
    buf
}

fn decode_response(c: &mut Criterion) {
    let response = php_response();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(response.len() as u64));
    group.bench_function("php_response_1k", |b| {
        b.iter_batched_ref(
            || response.clone(),
            |buf| {
                let mut decoder = RecordDecoder::new();
                let mut stdout_bytes = 0;
                while let Some(record) = decoder.decode(buf).unwrap() {
                    if record.record_type == RecordType::EndRequest {
                        black_box(EndRequest::parse(&record.content));
                    } else {
                        stdout_bytes += record.content.len();
                    }
                }
                black_box(stdout_bytes)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn encode_begin_params_stdin(c: &mut Criterion) {
    let mut buf = BytesMut::with_capacity(4096);
    encode_request(&mut buf);
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Bytes(buf.len() as u64));
    group.bench_function("begin_30_params_stdin", |b| {
        b.iter(|| {
            // Reused like a connection's write buffer.
            buf.clear();
            encode_request(&mut buf);
            black_box(buf.len())
        })
    });
    group.finish();
}

fn parse_params_stream(c: &mut Criterion) {
    let mut pairs = BytesMut::new();
    for (name, value) in CGI_PARAMS {
        fastcgi::params::put_pair(&mut pairs, name.as_bytes(), value.as_bytes());
    }
    // As nginx frames it: the pairs in one or more records, then the end.
    let mut stream = BytesMut::new();
    put_stream(&mut stream, RecordType::Params, 1, &pairs);
    put_stream_end(&mut stream, RecordType::Params, 1);
    let limits = ParamsLimits::default();
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("params_stream_30", |b| {
        b.iter_batched_ref(
            || stream.clone(),
            |buf| {
                let mut decoder = RecordDecoder::new();
                let mut collector = ParamsCollector::default();
                loop {
                    let record = decoder.decode(buf).unwrap().expect("whole stream");
                    if record.content.is_empty() {
                        break;
                    }
                    collector.push(&record.content, limits).unwrap();
                }
                let params = collector.finish(limits).unwrap();
                black_box(params.get("SCRIPT_FILENAME"));
                params
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(
    benches,
    decode_response,
    encode_begin_params_stdin,
    parse_params_stream
);
criterion_main!(benches);
