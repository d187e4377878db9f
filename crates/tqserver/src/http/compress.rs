//! Response compression, negotiated by Accept-Encoding: brotli, zstd or
//! gzip, for PHP output and static files alike. It runs in the service's
//! response path ([`super::service`]), so every protocol front that serves
//! through the service (HTTP/1.1, HTTP/2) gets it.
//!
//! What is compressed: a response whose Content-Type is in
//! `compression.types`, with a body of at least `min_size` (when its size is
//! known), to a client that accepts a coding of `algorithms`. Never: a
//! request with Range (or a 206), a HEAD, a 1xx, 204 or 304, a response that
//! already has a Content-Encoding, or one with `Cache-Control:
//! no-transform`. A response that could have been compressed says `Vary:
//! Accept-Encoding` whether or not it was. A compressed response loses its
//! Content-Length (the body is framed anew), its Accept-Ranges, and its
//! strong ETag becomes weak (the bytes differ; the meaning does not).
//!
//! A body in memory is compressed at once. A streamed one (a file, PHP
//! output still arriving) is compressed as it goes; whenever PHP's output
//! pauses (it flushed and works on), what came so far is flushed (a sync
//! flush) so the client gets it at once. Output that keeps coming is not
//! flushed piece by piece: a flush per FastCGI record (4 KB with
//! `output_buffering`) cost brotli ratio and CPU for nothing.
//!
//! Precompressed siblings (`x.css.br`, `x.css.zst`, `x.css.gz`) are chosen
//! here too ([`sibling`]) and served by the static file path.

use std::fs::{File, Metadata};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Body as _;

use super::body::Body;
use crate::config::edge::{Coding, CompressionConfig, Levels};

/// The codings a client accepts, best first (its q-values, then tqserver's
/// order of preference), and what else about its request matters here.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accepted {
    codings: [Option<Coding>; 3],
    /// A HEAD: its (empty) body is never compressed.
    head: bool,
    /// A Range request: served from the file as it is.
    range: bool,
}

impl Accepted {
    /// What a request accepts.
    pub fn of(method: &Method, headers: &HeaderMap) -> Self {
        let mut accepted = Self {
            codings: [None; 3],
            head: method == Method::HEAD,
            range: headers.contains_key(header::RANGE),
        };
        if !headers.contains_key(header::ACCEPT_ENCODING) {
            return accepted;
        }
        let mut q = [0u16; 3];
        let mut star: Option<u16> = None;
        let mut named = [false; 3];
        for value in headers.get_all(header::ACCEPT_ENCODING) {
            let Ok(text) = value.to_str() else { continue };
            for item in text.split(',') {
                let mut parts = item.split(';');
                let token = parts.next().unwrap_or("").trim();
                let weight = parts
                    .find_map(|p| {
                        let (name, value) = p.split_once('=')?;
                        name.trim()
                            .eq_ignore_ascii_case("q")
                            .then(|| qvalue(value.trim()))
                    })
                    .unwrap_or(Some(1000));
                let Some(weight) = weight else { continue };
                let index = match token.to_ascii_lowercase().as_str() {
                    "br" => 0,
                    "zstd" => 1,
                    "gzip" | "x-gzip" => 2,
                    "*" => {
                        star = Some(weight);
                        continue;
                    }
                    _ => continue,
                };
                named[index] = true;
                q[index] = q[index].max(weight);
            }
        }
        let weight = |i: usize| if named[i] { q[i] } else { star.unwrap_or(0) };
        let mut ranked = [(weight(0), 0), (weight(1), 1), (weight(2), 2)];
        // Stable: equal weights keep tqserver's order (br, zstd, gzip).
        ranked.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        let best = ranked.iter().filter(|(weight, _)| *weight > 0);
        for (slot, (_, index)) in accepted.codings.iter_mut().zip(best) {
            *slot = Some(Coding::ALL[*index]);
        }
        accepted
    }

    /// The client's best coding among `offered`.
    pub fn best(&self, offered: &[Coding]) -> Option<Coding> {
        self.codings
            .iter()
            .flatten()
            .copied()
            .find(|c| offered.contains(c))
    }

    pub fn codings(&self) -> impl Iterator<Item = Coding> + '_ {
        self.codings.iter().flatten().copied()
    }
}

/// A q-value (RFC 9110 12.4.2) in thousandths; None if malformed.
fn qvalue(text: &str) -> Option<u16> {
    let value: f32 = text.parse().ok()?;
    (0.0..=1.0)
        .contains(&value)
        .then(|| (value * 1000.0).round() as u16)
}

/// On a 304 from the static file handler: the Content-Type its 200 would
/// have had (a 304 carries no Content-Type), so that the 304 gets the same
/// Vary as the 200.
#[derive(Clone, Debug)]
pub struct NotModifiedType(pub HeaderValue);

/// A Content-Type's essence, lowercase: `text/html` of `text/html; charset=UTF-8`.
fn essence(content_type: &HeaderValue) -> Option<String> {
    let text = content_type.to_str().ok()?;
    Some(
        text.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Compresses `response` if it should be, and says `Vary: Accept-Encoding`
/// if it could have been (on a 304 too, as its 200 did: RFC 9110 15.4.5).
pub fn apply(
    mut response: Response<Body>,
    accepted: &Accepted,
    config: &CompressionConfig,
) -> Response<Body> {
    if !config.enabled {
        return response;
    }
    let status = response.status();
    if status == StatusCode::NOT_MODIFIED {
        let headers = response.headers();
        let content_type = response
            .extensions()
            .get::<NotModifiedType>()
            .map(|t| &t.0)
            .or_else(|| headers.get(header::CONTENT_TYPE));
        if content_type
            .and_then(essence)
            .is_some_and(|essence| config.compresses(&essence))
            && !has_token(headers, header::CACHE_CONTROL, "no-transform")
        {
            add_vary(response.headers_mut());
        }
        return response;
    }
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::PARTIAL_CONTENT
    {
        return response;
    }
    let headers = response.headers();
    if headers.contains_key(header::CONTENT_ENCODING)
        || headers.contains_key(header::CONTENT_RANGE)
        || has_token(headers, header::CACHE_CONTROL, "no-transform")
    {
        return response;
    }
    let Some(essence) = headers.get(header::CONTENT_TYPE).and_then(essence) else {
        return response;
    };
    if !config.compresses(&essence) {
        return response;
    }
    add_vary(response.headers_mut());
    if accepted.head || accepted.range {
        return response;
    }
    let Some(coding) = accepted.best(&config.algorithms) else {
        return response;
    };
    let known = response.body().size_hint().exact().or_else(|| {
        response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    });
    if matches!(response.body(), Body::Empty) || known.is_some_and(|size| size < config.min_size) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let body = match body {
        Body::Bytes(Some(bytes)) => match compress_all(coding, config.levels, &bytes) {
            Ok(compressed) => Body::Bytes(Some(compressed)),
            // Cannot happen with a Vec as the sink; sent as it is.
            Err(_) => return Response::from_parts(parts, Body::Bytes(Some(bytes))),
        },
        body => {
            // PHP flushes are passed on; a file is compressed in the
            // encoder's own rhythm.
            let flush_each = matches!(body, Body::Php(_));
            Body::Compressed(Box::new(CompressStream {
                inner: body,
                encoder: Some(Encoder::new(coding, config.levels, known)),
                flush_each,
                unflushed: false,
            }))
        }
    };
    let headers = &mut parts.headers;
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ACCEPT_RANGES);
    if let Some(etag) = headers.get(header::ETAG)
        && etag.as_bytes().starts_with(b"\"")
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(etag.as_bytes());
        if let Ok(weak) = HeaderValue::from_bytes(&weak) {
            headers.insert(header::ETAG, weak);
        }
    }
    headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.token()),
    );
    Response::from_parts(parts, body)
}

/// Adds `Accept-Encoding` to Vary unless it is there (or Vary is `*`).
pub fn add_vary(headers: &mut HeaderMap) {
    if has_token(headers, header::VARY, "accept-encoding") || has_token(headers, header::VARY, "*")
    {
        return;
    }
    headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
}

/// Whether a comma-separated header has `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',')
                .any(|item| item.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// A precompressed sibling of a static file, if the client accepts one and
/// it is a regular file at least as new as the file: opened under the
/// document root by the same rules (`open`) as the file itself.
pub fn sibling(
    accepted: &Accepted,
    meta: &Metadata,
    mut open: impl FnMut(&str) -> Option<(File, Metadata)>,
) -> Option<(File, Metadata, Coding)> {
    if accepted.range {
        return None;
    }
    for coding in accepted.codings() {
        let Some((file, sibling)) = open(coding.suffix()) else {
            continue;
        };
        if sibling.is_file() && sibling.mtime() >= meta.mtime() {
            return Some((file, sibling, coding));
        }
    }
    None
}

/// Compresses a whole body at once.
fn compress_all(coding: Coding, levels: Levels, data: &[u8]) -> io::Result<Bytes> {
    let mut encoder = Encoder::new(coding, levels, Some(data.len() as u64));
    encoder.write_all(data)?;
    encoder.finish()
}

/// Brotli's window for streams of unknown length: 512 KiB, as nginx's
/// brotli module; a smaller body gets a window its size.
const BROTLI_MAX_LGWIN: u32 = 19;

enum Encoder {
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
}

impl Encoder {
    fn new(coding: Coding, levels: Levels, size: Option<u64>) -> Self {
        match coding {
            Coding::Br => {
                let lgwin = size.map_or(BROTLI_MAX_LGWIN, |size| {
                    (64 - size.max(1).leading_zeros()).clamp(10, BROTLI_MAX_LGWIN)
                });
                Encoder::Br(Box::new(brotli::CompressorWriter::new(
                    Vec::new(),
                    16 * 1024,
                    levels.br,
                    lgwin,
                )))
            }
            Coding::Zstd => {
                match zstd::stream::write::Encoder::new(Vec::new(), levels.zstd) {
                    Ok(mut encoder) => {
                        if let Some(size) = size {
                            let _ = encoder.set_pledged_src_size(Some(size));
                        }
                        Encoder::Zstd(encoder)
                    }
                    // Only an allocation failure in libzstd; gzip then.
                    Err(_) => Encoder::Gzip(flate2::write::GzEncoder::new(
                        Vec::new(),
                        flate2::Compression::new(levels.gzip),
                    )),
                }
            }
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(levels.gzip),
            )),
        }
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Br(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
            Encoder::Gzip(e) => e.write_all(data),
        }
    }

    /// Everything written so far goes out, decodable by the client now.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Br(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Gzip(e) => e.flush(),
        }
    }

    /// Compressed bytes produced and not yet taken.
    fn pending(&mut self) -> usize {
        match self {
            Encoder::Br(e) => e.get_mut().len(),
            Encoder::Zstd(e) => e.get_mut().len(),
            Encoder::Gzip(e) => e.get_mut().len(),
        }
    }

    /// The compressed bytes produced so far.
    fn take(&mut self) -> Bytes {
        let out = match self {
            Encoder::Br(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
            Encoder::Gzip(e) => e.get_mut(),
        };
        Bytes::from(std::mem::take(out))
    }

    /// Ends the stream: what is left, with the trailer.
    fn finish(self) -> io::Result<Bytes> {
        Ok(Bytes::from(match self {
            Encoder::Br(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
            Encoder::Gzip(e) => e.finish()?,
        }))
    }
}

/// A streamed body, compressed as it goes.
pub struct CompressStream {
    pub(super) inner: Body,
    /// None once the stream is finished.
    encoder: Option<Encoder>,
    /// Flush when the source pauses (PHP output: what PHP flushed reaches
    /// the client at once); a file is compressed in the encoder's rhythm.
    flush_each: bool,
    /// Bytes written since the last flush.
    unflushed: bool,
}

impl CompressStream {
    pub fn is_done(&self) -> bool {
        self.encoder.is_none()
    }

    /// Takes what the inner body has ready into the encoder; when it has no
    /// more for now (PHP flushed and goes on working), flushes the encoder
    /// (a sync flush for PHP output) so the client can decode everything
    /// sent so far. Output already produced goes out once it is
    /// [`STREAM_CHUNK`] or more.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            let Some(encoder) = self.encoder.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if let Err(err) = encoder.write_all(&data) {
                        self.encoder = None;
                        return Poll::Ready(Some(Err(err)));
                    }
                    self.unflushed = true;
                    if encoder.pending() >= STREAM_CHUNK {
                        return Poll::Ready(Some(Ok(encoder.take())));
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    self.encoder = None;
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => {
                    let Some(encoder) = self.encoder.take() else {
                        return Poll::Ready(None);
                    };
                    return Poll::Ready(Some(encoder.finish()));
                }
                Poll::Pending => {
                    if self.flush_each && self.unflushed {
                        self.unflushed = false;
                        if let Err(err) = encoder.flush() {
                            self.encoder = None;
                            return Poll::Ready(Some(Err(err)));
                        }
                    }
                    let out = encoder.take();
                    if out.is_empty() {
                        return Poll::Pending;
                    }
                    return Poll::Ready(Some(Ok(out)));
                }
            }
        }
    }
}

/// Compressed output of a stream is sent in pieces of about this size while
/// its source keeps up (and sooner when the source pauses).
const STREAM_CHUNK: usize = 32 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn accepted(value: &str) -> Vec<Coding> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, value.parse().unwrap());
        Accepted::of(&Method::GET, &headers).codings().collect()
    }

    #[test]
    fn negotiation_follows_q_values_then_our_order() {
        use Coding::*;
        assert_eq!(accepted("gzip, deflate, br, zstd"), [Br, Zstd, Gzip]);
        assert_eq!(accepted("gzip;q=1.0, br;q=0.5"), [Gzip, Br]);
        assert_eq!(accepted("br;q=0, gzip"), [Gzip]);
        assert_eq!(accepted("*"), [Br, Zstd, Gzip]);
        assert_eq!(accepted("*;q=0.1, gzip"), [Gzip, Br, Zstd]);
        assert_eq!(accepted("identity;q=0, gzip;q=0.3"), [Gzip]);
        assert_eq!(accepted("identity"), []);
        assert_eq!(accepted("x-gzip"), [Gzip]);
        assert_eq!(accepted("BR;Q=0.9, gzip;q=bad"), [Br]);
        assert_eq!(accepted("*, br;q=0"), [Zstd, Gzip]);
        assert!(
            Accepted::of(&Method::GET, &HeaderMap::new())
                .best(&Coding::ALL)
                .is_none()
        );
    }

    fn response(content_type: &str, body: &[u8]) -> Response<Body> {
        let mut response = Response::new(Body::Bytes(Some(Bytes::copy_from_slice(body))));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        response
            .headers_mut()
            .insert(header::ETAG, "\"abc\"".parse().unwrap());
        response
    }

    fn gzip_accepted() -> Accepted {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
        Accepted::of(&Method::GET, &headers)
    }

    #[test]
    fn text_is_compressed_images_are_not() {
        let page = "hello world ".repeat(200);
        let config = CompressionConfig::default();
        let out = apply(
            response("text/html; charset=UTF-8", page.as_bytes()),
            &gzip_accepted(),
            &config,
        );
        assert_eq!(out.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(out.headers()[header::VARY], "Accept-Encoding");
        assert_eq!(out.headers()[header::ETAG], "W/\"abc\"");
        let Body::Bytes(Some(bytes)) = out.into_body() else {
            panic!()
        };
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, page);

        let out = apply(
            response("image/png", page.as_bytes()),
            &gzip_accepted(),
            &config,
        );
        assert!(out.headers().get(header::CONTENT_ENCODING).is_none());
        assert!(out.headers().get(header::VARY).is_none());
    }

    #[test]
    fn a_304_says_vary_as_its_200_would() {
        let config = CompressionConfig::default();
        let not_modified = |content_type: &'static str| {
            let mut r = Response::new(Body::Empty);
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r.extensions_mut()
                .insert(NotModifiedType(HeaderValue::from_static(content_type)));
            r
        };
        let out = apply(not_modified("text/css"), &gzip_accepted(), &config);
        assert_eq!(out.headers()[header::VARY], "Accept-Encoding");
        assert!(out.headers().get(header::CONTENT_ENCODING).is_none());
        let out = apply(not_modified("image/png"), &gzip_accepted(), &config);
        assert!(out.headers().get(header::VARY).is_none());
        // PHP's 304 carries its Content-Type itself.
        let mut php = Response::new(Body::Empty);
        *php.status_mut() = StatusCode::NOT_MODIFIED;
        php.headers_mut().insert(
            header::CONTENT_TYPE,
            "text/html; charset=UTF-8".parse().unwrap(),
        );
        let out = apply(php, &gzip_accepted(), &config);
        assert_eq!(out.headers()[header::VARY], "Accept-Encoding");
    }

    #[test]
    fn small_no_transform_and_encoded_bodies_are_left_alone() {
        let config = CompressionConfig::default();
        let out = apply(response("text/html", b"tiny"), &gzip_accepted(), &config);
        assert!(out.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(
            out.headers()[header::VARY],
            "Accept-Encoding",
            "could have been"
        );

        let page = "x".repeat(5000);
        let mut r = response("text/html", page.as_bytes());
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            "public, no-transform".parse().unwrap(),
        );
        let out = apply(r, &gzip_accepted(), &config);
        assert!(out.headers().get(header::CONTENT_ENCODING).is_none());

        let mut r = response("text/html", page.as_bytes());
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, "br".parse().unwrap());
        let out = apply(r, &gzip_accepted(), &config);
        assert_eq!(out.headers()[header::CONTENT_ENCODING], "br");

        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
        headers.insert(header::RANGE, "bytes=0-1".parse().unwrap());
        let ranged = Accepted::of(&Method::GET, &headers);
        let out = apply(response("text/html", page.as_bytes()), &ranged, &config);
        assert!(out.headers().get(header::CONTENT_ENCODING).is_none());
    }

    #[test]
    fn each_coding_round_trips_streamed_with_flushes() {
        let levels = CompressionConfig::default().levels;
        for coding in Coding::ALL {
            let mut encoder = Encoder::new(coding, levels, None);
            let mut out = Vec::new();
            encoder.write_all(b"first ").unwrap();
            encoder.flush().unwrap();
            let first = encoder.take();
            assert!(!first.is_empty(), "{coding:?}: a flush gives bytes at once");
            out.extend_from_slice(&first);
            encoder.write_all(b"second").unwrap();
            out.extend_from_slice(&encoder.take());
            out.extend_from_slice(&encoder.finish().unwrap());
            let mut text = Vec::new();
            match coding {
                Coding::Br => {
                    brotli::Decompressor::new(&out[..], 4096)
                        .read_to_end(&mut text)
                        .unwrap();
                }
                Coding::Zstd => text = zstd::stream::decode_all(&out[..]).unwrap(),
                Coding::Gzip => {
                    flate2::read::GzDecoder::new(&out[..])
                        .read_to_end(&mut text)
                        .unwrap();
                }
            }
            assert_eq!(text, b"first second", "{coding:?}");
        }
    }
}
