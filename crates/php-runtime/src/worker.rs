//! A worker: FastCGI on the socket at fd 0, as php-cgi serves it.
//!
//! One connection at a time, one request at a time on it (FCGI_KEEP_CONN
//! keeps it open for the next), blocking I/O on a single thread. The request
//! body is read as PHP asks for it; the response is sent in records of up to
//! [`OUT_CHUNK`] bytes, and at once when PHP flushes.

use std::fs::File;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use bytes::BytesMut;
use fastcgi::ParamsLimits;
use fastcgi::record::{ProtocolStatus, RecordType, Role, put_stream};
use fastcgi::server::{RequestReader, ResponseWriter, ServerEvent, ServerValues};
use nix::sys::socket;

use crate::ffi::{self, Connection};

/// Response bytes gathered before they are sent (php-cgi's buffer is 8 KiB).
const OUT_CHUNK: usize = 16 * 1024;

/// Serves connections from the listening socket at fd 0 until it fails.
pub fn serve() -> ! {
    let allowed = allowed_addresses();
    loop {
        // SAFETY: fd 0 is the listening socket this process was given, open
        // for the process's whole life.
        let listener = unsafe { BorrowedFd::borrow_raw(0) };
        let fd = match socket::accept(listener) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
            Err(err) => {
                eprintln!("tqserver-php: accept on fd 0 failed: {err}");
                std::process::exit(1);
            }
        };
        let stream = File::from(fd);
        if !peer_allowed(&stream, allowed.as_deref()) {
            continue;
        }
        if let Err(err) = serve_connection(stream) {
            if err.kind() != io::ErrorKind::BrokenPipe
                && err.kind() != io::ErrorKind::ConnectionReset
            {
                eprintln!("tqserver-php: connection ended: {err}");
            }
        }
    }
}

/// FCGI_WEB_SERVER_ADDRS, as php-cgi reads it: who may connect over TCP.
fn allowed_addresses() -> Option<Vec<IpAddr>> {
    let list = std::env::var("FCGI_WEB_SERVER_ADDRS").ok()?;
    Some(
        list.split(',')
            .filter_map(|a| a.trim().parse().ok())
            .collect(),
    )
}

fn peer_allowed(stream: &File, allowed: Option<&[IpAddr]>) -> bool {
    let Some(allowed) = allowed else { return true };
    let Ok(peer) = socket2::SockRef::from(stream).peer_addr() else {
        return false;
    };
    match peer.as_socket() {
        Some(address) => allowed.contains(&address.ip()),
        // A unix socket: only tqserver can reach it.
        None => true,
    }
}

fn serve_connection(mut stream: File) -> io::Result<()> {
    let mut reader = RequestReader::new((), ParamsLimits::default());
    let mut writer = ResponseWriter::new(());
    loop {
        let Some(event) = next_event(&mut stream, &mut reader)? else {
            return Ok(());
        };
        match event {
            ServerEvent::Begin {
                request_id,
                role,
                keep_conn,
            } => {
                if role != Role::Responder {
                    writer.end_request(request_id, 0, ProtocolStatus::UnknownRole, false);
                    send(&mut stream, writer.buffer_mut())?;
                    reader.finish_request();
                    continue;
                }
                let params = loop {
                    match next_event(&mut stream, &mut reader)? {
                        Some(ServerEvent::Params { params, .. }) => break params,
                        Some(ServerEvent::Abort { .. }) | None => return Ok(()),
                        Some(other) => answer_management(other, &mut writer),
                    }
                };
                // php-cgi's FastCGI layer adds FCGI_ROLE before the
                // parameters; PHP lists it after them.
                let pairs =
                    std::iter::once((&b"FCGI_ROLE"[..], &b"RESPONDER"[..])).chain(params.iter());
                let mut request = Request {
                    stream: &mut stream,
                    reader: &mut reader,
                    writer: &mut writer,
                    request_id,
                    pending: bytes::Bytes::new(),
                    stdin_done: false,
                    gone: false,
                    ended: false,
                    had_stderr: false,
                };
                let status = ffi::run_request(pairs, &mut request);
                if !request.ended {
                    request.end();
                }
                let gone = request.gone;
                reader.finish_request();
                if status < 0 {
                    eprintln!("tqserver-php: PHP could not start a request; exiting");
                    std::process::exit(1);
                }
                if gone || !keep_conn {
                    return Ok(());
                }
            }
            other => {
                answer_management(other, &mut writer);
                send(&mut stream, writer.buffer_mut())?;
            }
        }
    }
}

fn answer_management(event: ServerEvent, writer: &mut ResponseWriter<()>) {
    match event {
        ServerEvent::GetValues(asked) => writer.get_values_result(
            &asked,
            ServerValues {
                max_conns: 1,
                max_reqs: 1,
                mpxs_conns: false,
            },
        ),
        ServerEvent::UnknownManagement(kind) => writer.unknown_type(kind),
        ServerEvent::Multiplexed { request_id } => {
            writer.end_request(request_id, 0, ProtocolStatus::CantMpxConn, false)
        }
        _ => {}
    }
}

/// The next event, reading the socket as needed; `None` at a clean end.
fn next_event(
    stream: &mut File,
    reader: &mut RequestReader<()>,
) -> io::Result<Option<ServerEvent>> {
    loop {
        if let Some(event) = reader.buffered_event().map_err(io::Error::other)? {
            return Ok(Some(event));
        }
        // Straight into the decoder's spare capacity: zeroing it first (to
        // hand `Read` a `&mut [u8]`) showed at 1.7 % of a hello request.
        let buf = reader.buffer_mut();
        buf.reserve(16 * 1024);
        let start = buf.len();
        let spare = buf.spare_capacity_mut();
        let read = loop {
            // SAFETY: read(2) writes at most `spare.len()` bytes into the
            // spare capacity, which `spare` borrows exclusively and which
            // stays allocated for the call; it never reads from it.
            let read =
                unsafe { libc::read(stream.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
            if read >= 0 {
                break read as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        };
        // SAFETY: the kernel initialised `read` bytes (at most the spare
        // capacity) right after the `start` bytes already there.
        unsafe { buf.set_len(start + read) };
        if read == 0 {
            return if start == 0 {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in a record",
                ))
            };
        }
    }
}

fn send(stream: &mut File, buf: &mut BytesMut) -> io::Result<()> {
    if !buf.is_empty() {
        stream.write_all(buf)?;
        buf.clear();
    }
    Ok(())
}

/// One request's connection, as PHP's callbacks see it.
struct Request<'a> {
    stream: &'a mut File,
    reader: &'a mut RequestReader<()>,
    /// The connection's encoder; its buffer holds the records not sent yet.
    writer: &'a mut ResponseWriter<()>,
    request_id: u16,
    /// Body bytes received and not yet given to PHP.
    pending: bytes::Bytes,
    stdin_done: bool,
    /// The web server closed the connection or stopped reading.
    gone: bool,
    /// END_REQUEST was sent (fastcgi_finish_request, or the end).
    ended: bool,
    had_stderr: bool,
}

impl Request<'_> {
    fn send_out(&mut self) -> bool {
        if self.gone {
            return false;
        }
        if send(self.stream, self.writer.buffer_mut()).is_err() {
            self.gone = true;
            self.writer.buffer_mut().clear();
        }
        !self.gone
    }

    /// Closes the streams and sends END_REQUEST.
    fn end(&mut self) {
        self.ended = true;
        self.writer.end_request(
            self.request_id,
            0,
            ProtocolStatus::RequestComplete,
            self.had_stderr,
        );
        self.send_out();
    }
}

impl Connection for Request<'_> {
    fn write(&mut self, bytes: &[u8]) -> usize {
        if self.gone {
            return 0;
        }
        for chunk in bytes.chunks(fastcgi::record::MAX_CONTENT_LEN) {
            let out = self.writer.buffer_mut();
            put_stream(out, RecordType::Stdout, self.request_id, chunk);
            if out.len() >= OUT_CHUNK && !self.send_out() {
                return 0;
            }
        }
        bytes.len()
    }

    fn flush(&mut self) -> bool {
        self.send_out()
    }

    fn read(&mut self, into: &mut [u8]) -> usize {
        while self.pending.is_empty() && !self.stdin_done {
            match next_event(self.stream, self.reader) {
                Ok(Some(ServerEvent::Stdin { data, .. })) => self.pending = data,
                Ok(Some(ServerEvent::StdinEnd { .. })) => self.stdin_done = true,
                Ok(Some(ServerEvent::Abort { .. })) | Ok(None) | Err(_) => {
                    self.stdin_done = true;
                    self.gone = true;
                }
                Ok(Some(_)) => {}
            }
        }
        let n = into.len().min(self.pending.len());
        into[..n].copy_from_slice(&self.pending[..n]);
        let _ = self.pending.split_to(n);
        n
    }

    fn log(&mut self, line: &[u8]) {
        if self.gone || self.ended {
            // Nobody to tell but our own stderr, which tqserver relays.
            let mut stderr = io::stderr().lock();
            let _ = stderr.write_all(line);
            let _ = stderr.write_all(b"\n");
            return;
        }
        let mut message = Vec::with_capacity(line.len() + 1);
        message.extend_from_slice(line);
        message.push(b'\n');
        for chunk in message.chunks(fastcgi::record::MAX_CONTENT_LEN) {
            put_stream(
                self.writer.buffer_mut(),
                RecordType::Stderr,
                self.request_id,
                chunk,
            );
        }
        self.had_stderr = true;
    }

    fn finish(&mut self) -> bool {
        if self.ended {
            return false;
        }
        self.end();
        true
    }
}
