//! Arbitrary bytes, cut into reads at arbitrary points, through the embed
//! runtime's worker (`tq-php-runtime`'s `worker::serve_connection`, the
//! production code, built without PHP): FastCGI decoding, FCGI_ROLE, the
//! params handed to the runner, the body read through the connection's read
//! callback, aborts, management records, the response path. A stand-in
//! runner takes PHP's place. Nothing may panic or hang; the runner must see
//! the same requests, and the web server get the same bytes, however the
//! stream is cut and however the runner reads the body; what is sent must be
//! whole FastCGI records of the kinds a worker sends, and nothing of a
//! request after its END_REQUEST.
//!
//! Input layout:
//! - byte 0: low 4 bits, how many read sizes follow the header; high 4 bits,
//!   what the runner does ([`READ_ALL`], [`FINISH`], [`LOG`], [`FLUSH`]);
//! - byte 1: the size of the runner's body reads, minus one;
//! - byte 2: the web server stops reading after this many 64-byte units of
//!   response (0: it reads everything);
//! - the read sizes: 0 is a read interrupted by a signal (EINTR);
//! - the rest is the stream the web server sends.
//!
//! The seeds in fuzz/seeds/worker (made by fuzz/seeds/worker.py) follow it.

#![no_main]

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;

use bytes::BytesMut;
use fastcgi::record::HEADER_LEN;
use fastcgi::{EndRequest, ProtocolStatus, RecordDecoder, RecordType};
use libfuzzer_sys::fuzz_target;
use php_runtime::worker::{Connection, ConnectionError, Runner, serve_connection};

/// Read the body until the connection says it ended, not only
/// CONTENT_LENGTH bytes as PHP does.
const READ_ALL: u8 = 1;
/// Call fastcgi_finish_request after the head, and write nothing more (as
/// the SAPI, which drops output after it).
const FINISH: u8 = 2;
/// Log a line (a PHP warning: FCGI_STDERR) first.
const LOG: u8 = 4;
/// Flush after every write.
const FLUSH: u8 = 8;

fuzz_target!(|data: &[u8]| {
    let [k, piece, limit, rest @ ..] = data else {
        return;
    };
    let sizes_len = (k & 15) as usize;
    if rest.len() < sizes_len {
        return;
    }
    let (sizes, stream) = rest.split_at(sizes_len);
    let limit = match *limit {
        0 => usize::MAX,
        units => units as usize * 64,
    };
    let flags = k >> 4;
    let piece = *piece as usize + 1;

    // The same stream in reads of the given sizes, and whole, with the body
    // read through the connection in `piece` bytes and in single bytes.
    let cut = serve(stream, sizes, limit, flags, piece);
    let whole = serve(stream, &[], limit, flags, 1);
    assert_eq!(cut.runs, whole.runs, "the cuts changed what the runner saw");
    assert_eq!(
        cut.output, whole.output,
        "the cuts changed what the worker sent"
    );
    assert_eq!(cut.result, whole.result, "the cuts changed how it ended");
    // Every run needs a BEGIN_REQUEST and an empty PARAMS record.
    assert!(cut.runs.len() <= stream.len() / (2 * HEADER_LEN));
    check_response(&cut, limit);
});

/// The web server's end: sends `stream` in reads of the given sizes, takes
/// the response up to `limit` bytes and then fails as a closed socket does.
struct WebServer<'a> {
    stream: &'a [u8],
    sizes: &'a [usize],
    turn: usize,
    interrupted: bool,
    limit: usize,
    output: Rc<RefCell<Vec<u8>>>,
}

impl Read for WebServer<'_> {
    fn read(&mut self, into: &mut [u8]) -> io::Result<usize> {
        let size = if self.sizes.is_empty() {
            usize::MAX
        } else {
            self.sizes[self.turn % self.sizes.len()]
        };
        self.turn += 1;
        // Never twice in a row, so that it ends even if every size is 0.
        if size == 0 && !self.interrupted {
            self.interrupted = true;
            return Err(io::ErrorKind::Interrupted.into());
        }
        self.interrupted = false;
        let n = size.max(1).min(into.len()).min(self.stream.len());
        let (piece, rest) = self.stream.split_at(n);
        into[..n].copy_from_slice(piece);
        self.stream = rest;
        Ok(n)
    }
}

impl Write for WebServer<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut output = self.output.borrow_mut();
        let room = self.limit - output.len();
        if room == 0 {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = bytes.len().min(room);
        output.extend_from_slice(&bytes[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One request as the runner saw it.
#[derive(Debug, PartialEq)]
struct Run {
    params: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    /// Response bytes sent before the request began.
    output_at: usize,
}

/// Stands in for PHP: takes the params, reads the body through the
/// connection in `piece`-byte reads, answers with a head and the body back
/// (once, then 17 times in one write).
struct Echo {
    flags: u8,
    piece: usize,
    output: Rc<RefCell<Vec<u8>>>,
    runs: Vec<Run>,
}

impl Runner for Echo {
    fn run<'p, C: Connection>(
        &mut self,
        params: impl Iterator<Item = (&'p [u8], &'p [u8])>,
        conn: &mut C,
    ) -> bool {
        let output_at = self.output.borrow().len();
        let params: Vec<_> = params.map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
        let [(role, responder), ..] = &params[..] else {
            panic!("no FCGI_ROLE");
        };
        assert_eq!(
            (&role[..], &responder[..]),
            (&b"FCGI_ROLE"[..], &b"RESPONDER"[..])
        );
        if self.flags & LOG != 0 {
            conn.log(b"PHP Warning:  a warning");
        }
        let length = if self.flags & READ_ALL != 0 {
            usize::MAX
        } else {
            // As PHP reads CONTENT_LENGTH.
            params
                .iter()
                .find(|(name, _)| name == b"CONTENT_LENGTH")
                .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok())
                .unwrap_or(0)
        };
        let mut body = Vec::new();
        let mut piece = vec![0; self.piece];
        while body.len() < length {
            let want = piece.len().min(length - body.len());
            let n = conn.read(&mut piece[..want]);
            assert!(n <= want);
            if n == 0 {
                break;
            }
            body.extend_from_slice(&piece[..n]);
        }
        self.write(conn, b"Content-type: text/plain\r\n\r\n");
        if self.flags & FINISH != 0 {
            assert!(conn.finish(), "the first finish");
            assert!(!conn.finish(), "a second finish");
        } else {
            self.write(conn, &body);
            // Past OUT_CHUNK and, from 3,856 bytes of body, past a record.
            self.write(conn, &body.repeat(17));
        }
        self.runs.push(Run {
            params,
            body,
            output_at,
        });
        true
    }
}

impl Echo {
    fn write(&self, conn: &mut impl Connection, bytes: &[u8]) {
        let taken = conn.write(bytes);
        assert!(taken == bytes.len() || taken == 0, "took {taken} bytes");
        if self.flags & FLUSH != 0 {
            conn.flush();
        }
    }
}

struct Served {
    runs: Vec<Run>,
    output: Vec<u8>,
    result: Result<(), String>,
}

fn serve(stream: &[u8], sizes: &[u8], limit: usize, flags: u8, piece: usize) -> Served {
    let output = Rc::new(RefCell::new(Vec::new()));
    let sizes: Vec<usize> = sizes.iter().map(|&s| s as usize).collect();
    let mut web_server = WebServer {
        stream,
        sizes: &sizes,
        turn: 0,
        interrupted: false,
        limit,
        output: output.clone(),
    };
    let mut runner = Echo {
        flags,
        piece,
        output: output.clone(),
        runs: Vec::new(),
    };
    let result = match serve_connection(&mut web_server, &mut runner) {
        Ok(()) => Ok(()),
        Err(ConnectionError::Io(err)) => Err(format!("{:?}: {err}", err.kind())),
        Err(ConnectionError::RunnerFailed) => panic!("the runner never fails"),
    };
    Served {
        runs: runner.runs,
        output: output.take(),
        result,
    }
}

/// What the worker sent is whole records (unless the web server stopped
/// reading at `limit` bytes), of the kinds a worker sends; no request's
/// STDOUT or STDERR follows its END_REQUEST.
fn check_response(served: &Served, limit: usize) {
    let mut buf = BytesMut::from(&served.output[..]);
    let mut decoder = RecordDecoder::new();
    let mut run = 0;
    let mut ended = false;
    loop {
        let at = served.output.len() - buf.len();
        while run < served.runs.len() && served.runs[run].output_at <= at {
            run += 1;
            ended = false;
        }
        let record = match decoder.decode(&mut buf) {
            Ok(Some(record)) => record,
            Ok(None) => break,
            Err(err) => panic!("the worker sent a bad record: {err}"),
        };
        match record.record_type {
            RecordType::Stdout | RecordType::Stderr => {
                assert!(run > 0, "output before any request ran");
                assert!(!ended, "output after END_REQUEST");
            }
            RecordType::EndRequest => {
                let end = EndRequest::parse(&record.content).expect("an END_REQUEST body");
                if end.protocol_status == ProtocolStatus::RequestComplete {
                    assert!(run > 0, "a request completed before any ran");
                    assert!(!ended, "a request completed twice");
                    ended = true;
                }
            }
            RecordType::GetValuesResult | RecordType::UnknownType => {}
            other => panic!("a worker does not send {other:?}"),
        }
    }
    if served.output.len() < limit {
        assert!(buf.is_empty(), "a partial record at the end");
    }
}
