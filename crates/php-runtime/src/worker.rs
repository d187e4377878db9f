//! A worker: FastCGI on the socket at fd 0, as php-cgi serves it.
//!
//! One connection at a time, one request at a time on it (FCGI_KEEP_CONN
//! keeps it open for the next), blocking I/O on a single thread. The request
//! body is read as the [`Runner`] asks for it; the response is sent in
//! records of up to [`OUT_CHUNK`] bytes, and at once when the runner flushes.
//!
//! This module knows FastCGI and no PHP: `tqserver-php` passes a runner that
//! runs PHP (src/ffi.rs); the tests below and the fuzz target
//! (fuzz/fuzz_targets/worker.rs) pass stand-ins, over in-memory streams.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};

use bytes::BytesMut;
use fastcgi::ParamsLimits;
use fastcgi::record::{ProtocolStatus, RecordType, Role, put_stream};
use fastcgi::server::{RequestReader, ResponseWriter, ServerEvent, ServerValues};
use nix::sys::socket;

/// Response bytes gathered before they are sent (php-cgi's buffer is 8 KiB).
pub const OUT_CHUNK: usize = 16 * 1024;

/// What runs a request once its parameters are decoded: PHP in
/// `tqserver-php`.
pub trait Runner {
    /// Runs one request. `params` are its FastCGI parameters as php-cgi hands
    /// them to PHP (FCGI_ROLE first); `conn` gives the body and takes the
    /// response. False if the request could not be started at all.
    fn run<'p, C: Connection>(
        &mut self,
        params: impl Iterator<Item = (&'p [u8], &'p [u8])>,
        conn: &mut C,
    ) -> bool;
}

/// The worker's side of one request, as the runner (PHP's SAPI callbacks)
/// sees it.
pub trait Connection {
    /// Response bytes; how many were taken (fewer: the web server is gone).
    fn write(&mut self, bytes: &[u8]) -> usize;
    /// Sends what is buffered; false if the web server is gone.
    fn flush(&mut self) -> bool;
    /// Request body bytes; 0 at its end (or if the web server gave up).
    fn read(&mut self, into: &mut [u8]) -> usize;
    /// A line for the web server's error log (FCGI_STDERR).
    fn log(&mut self, line: &[u8]);
    /// Ends the response early (fastcgi_finish_request); false if it had
    /// ended already.
    fn finish(&mut self) -> bool;
}

/// Why a connection ended before the web server closed it.
#[derive(Debug)]
pub enum ConnectionError {
    /// The web server went away, or sent something that is not FastCGI.
    Io(io::Error),
    /// The runner could not start a request: this worker cannot serve.
    RunnerFailed,
}

impl From<io::Error> for ConnectionError {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

/// Serves connections from the listening socket at fd 0 until it fails.
pub fn serve<R: Runner>(runner: &mut R) -> ! {
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
        match serve_connection(stream, runner) {
            Ok(()) => {}
            Err(ConnectionError::RunnerFailed) => {
                eprintln!("tqserver-php: PHP could not start a request; exiting");
                std::process::exit(1);
            }
            Err(ConnectionError::Io(err)) => {
                if err.kind() != io::ErrorKind::BrokenPipe
                    && err.kind() != io::ErrorKind::ConnectionReset
                {
                    eprintln!("tqserver-php: connection ended: {err}");
                }
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

/// Serves one connection until the web server closes it, or a request
/// without FCGI_KEEP_CONN ends.
pub fn serve_connection<S: Read + Write, R: Runner>(
    mut stream: S,
    runner: &mut R,
) -> Result<(), ConnectionError> {
    let mut reader = RequestReader::new((), ParamsLimits::default());
    let mut writer = ResponseWriter::new(());
    while let Some(NewRequest {
        request_id,
        keep_conn,
        params,
    }) = next_request(&mut stream, &mut reader, &mut writer, |_| true)?
    {
        // php-cgi's FastCGI layer adds FCGI_ROLE before the parameters; PHP
        // lists it after them.
        let pairs = std::iter::once((&b"FCGI_ROLE"[..], &b"RESPONDER"[..])).chain(params.iter());
        let mut request = Request::new(&mut stream, &mut reader, &mut writer, request_id);
        let started = runner.run(pairs, &mut request);
        if !request.state.ended {
            request.end();
        }
        let gone = request.state.gone;
        reader.finish_request();
        if !started {
            return Err(ConnectionError::RunnerFailed);
        }
        if gone || !keep_conn {
            return Ok(());
        }
    }
    Ok(())
}

/// A responder request whose parameters have all arrived.
struct NewRequest {
    request_id: u16,
    keep_conn: bool,
    params: fastcgi::Params,
}

/// Reads up to the next responder request's parameters, answering
/// management records and refusing other roles on the way. `None` when the
/// web server closes the connection or aborts before the parameters end, or
/// when `wait` (called before each read with nothing of a request decoded)
/// says to stop.
fn next_request<S: Read + Write>(
    stream: &mut S,
    reader: &mut RequestReader<()>,
    writer: &mut ResponseWriter<()>,
    mut wait: impl FnMut(&S) -> bool,
) -> io::Result<Option<NewRequest>> {
    loop {
        // What is buffered may be the end of the last request's unread body.
        let event = match reader.buffered_event().map_err(io::Error::other)? {
            Some(event) => event,
            None if !wait(stream) => return Ok(None),
            None => match next_event(stream, reader)? {
                Some(event) => event,
                None => return Ok(None),
            },
        };
        match event {
            ServerEvent::Begin {
                request_id,
                role,
                keep_conn,
            } => {
                if role != Role::Responder {
                    writer.end_request(request_id, 0, ProtocolStatus::UnknownRole, false);
                    send(stream, writer.buffer_mut())?;
                    reader.finish_request();
                    continue;
                }
                loop {
                    match next_event(stream, reader)? {
                        Some(ServerEvent::Params { params, .. }) => {
                            return Ok(Some(NewRequest {
                                request_id,
                                keep_conn,
                                params,
                            }));
                        }
                        Some(ServerEvent::Abort { .. }) | None => return Ok(None),
                        Some(other) => answer_management(other, writer),
                    }
                }
            }
            other => {
                answer_management(other, writer);
                send(stream, writer.buffer_mut())?;
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
    stream: &mut impl Read,
    reader: &mut RequestReader<()>,
) -> io::Result<Option<ServerEvent>> {
    loop {
        if let Some(event) = reader.buffered_event().map_err(io::Error::other)? {
            return Ok(Some(event));
        }
        // 16 KB zeroed for each read, not the buffer's whole spare capacity,
        // which grows with a large body (zeroing it showed at 1.7 % of a
        // hello request).
        let buf = reader.buffer_mut();
        let start = buf.len();
        buf.resize(start + 16 * 1024, 0);
        let read = loop {
            match stream.read(&mut buf[start..]) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let read = match read {
            Ok(read) => read,
            Err(err) => {
                buf.truncate(start);
                return Err(err);
            }
        };
        buf.truncate(start + read);
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

fn send(stream: &mut impl Write, buf: &mut BytesMut) -> io::Result<()> {
    if !buf.is_empty() {
        stream.write_all(buf)?;
        buf.clear();
    }
    Ok(())
}

/// One request's connection, as PHP's callbacks see it.
struct Request<'a, S> {
    stream: &'a mut S,
    reader: &'a mut RequestReader<()>,
    /// The connection's encoder; its buffer holds the records not sent yet.
    writer: &'a mut ResponseWriter<()>,
    state: RequestState,
}

/// Where a request stands (kept between PHP's calls in worker mode).
struct RequestState {
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

impl RequestState {
    fn new(request_id: u16) -> Self {
        Self {
            request_id,
            pending: bytes::Bytes::new(),
            stdin_done: false,
            gone: false,
            ended: false,
            had_stderr: false,
        }
    }
}

impl<'a, S> Request<'a, S> {
    fn new(
        stream: &'a mut S,
        reader: &'a mut RequestReader<()>,
        writer: &'a mut ResponseWriter<()>,
        request_id: u16,
    ) -> Self {
        Self {
            stream,
            reader,
            writer,
            state: RequestState::new(request_id),
        }
    }
}

impl<S: Write> Request<'_, S> {
    fn send_out(&mut self) -> bool {
        if self.state.gone {
            return false;
        }
        if send(self.stream, self.writer.buffer_mut()).is_err() {
            self.state.gone = true;
            self.writer.buffer_mut().clear();
        }
        !self.state.gone
    }

    /// Closes the streams and sends END_REQUEST.
    fn end(&mut self) {
        self.end_with(0);
    }

    /// END_REQUEST with this application status: not 0 tells tqserver's
    /// pool that the worker ends after this response (so it never sends
    /// another request down this connection).
    fn end_with(&mut self, app_status: u32) {
        self.state.ended = true;
        self.writer.end_request(
            self.state.request_id,
            app_status,
            ProtocolStatus::RequestComplete,
            self.state.had_stderr,
        );
        self.send_out();
    }
}

impl<S: Read + Write> Connection for Request<'_, S> {
    fn write(&mut self, bytes: &[u8]) -> usize {
        if self.state.gone {
            return 0;
        }
        for chunk in bytes.chunks(fastcgi::record::MAX_CONTENT_LEN) {
            let out = self.writer.buffer_mut();
            put_stream(out, RecordType::Stdout, self.state.request_id, chunk);
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
        while self.state.pending.is_empty() && !self.state.stdin_done {
            match next_event(self.stream, self.reader) {
                Ok(Some(ServerEvent::Stdin { data, .. })) => self.state.pending = data,
                Ok(Some(ServerEvent::StdinEnd { .. })) => self.state.stdin_done = true,
                Ok(Some(ServerEvent::Abort { .. })) | Ok(None) | Err(_) => {
                    self.state.stdin_done = true;
                    self.state.gone = true;
                }
                // Answered with the response's next records: a web server
                // that opened a second request waits for CANT_MPX_CONN.
                Ok(Some(other)) => answer_management(other, self.writer),
            }
        }
        let n = into.len().min(self.state.pending.len());
        into[..n].copy_from_slice(&self.state.pending[..n]);
        let _ = self.state.pending.split_to(n);
        n
    }

    fn log(&mut self, line: &[u8]) {
        if self.state.gone || self.state.ended {
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
                self.state.request_id,
                chunk,
            );
        }
        self.state.had_stderr = true;
    }

    fn finish(&mut self) -> bool {
        if self.state.ended {
            return false;
        }
        self.end();
        true
    }
}

// ---------------------------------------------------------------------------
// Worker mode (php.worker): the worker script runs once and asks for each
// request in turn.

/// Set by SIGTERM in worker mode: stop once the request that runs is done.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The write end of a pipe that SIGTERM writes to (-1: none), so a wait for
/// the next request wakes even when the signal came just before it began.
static STOP_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
/// Its read end.
static STOP_WAKE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Waits until `fd` has bytes to read (true) or the worker must stop.
fn wait_readable_or_stop(fd: BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    let wake = STOP_WAKE.load(std::sync::atomic::Ordering::Relaxed);
    loop {
        if stopping() {
            return false;
        }
        let mut fds = [
            libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd; a negative fd (no
        // pipe) is ignored by poll.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return true; // let the read report it
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents != 0 {
            return true;
        }
    }
}

fn stopping() -> bool {
    STOP.load(std::sync::atomic::Ordering::Relaxed)
}

extern "C" fn on_sigterm(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
    let pipe = STOP_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    if pipe >= 0 {
        // SAFETY: write(2) is async-signal-safe; the pipe is non-blocking
        // and lives as long as the process; a full pipe is fine.
        unsafe { libc::write(pipe, b"x".as_ptr().cast(), 1) };
    }
}

/// Runs a worker script: PHP in `tqserver-php --worker`.
pub trait WorkerRunner {
    /// Runs the script named by `boot` (its parameters, SCRIPT_FILENAME
    /// first of all) once; each request it asks for comes from
    /// `conn.next()`. False if PHP could not start it at all.
    fn run_worker<'p, C: WorkerConnection>(
        &mut self,
        boot: impl Iterator<Item = (&'p [u8], &'p [u8])>,
        conn: &mut C,
    ) -> bool;
}

/// A worker script's connection: the current request's body and response
/// (output outside a request is dropped), and the next request.
pub trait WorkerConnection: Connection {
    /// Ends the request that ran, if its response is still open, and waits
    /// for the next: its parameters, or `None` when the worker must stop
    /// (the connection closed, or SIGTERM).
    fn next(&mut self) -> Option<fastcgi::Params>;
}

/// The parameters a worker script sees, as php-cgi would hand them over
/// (FCGI_ROLE first), plus FrankenPHP's and our own worker markers.
pub fn worker_params(params: &fastcgi::Params) -> impl Iterator<Item = (&[u8], &[u8])> {
    std::iter::once((&b"FCGI_ROLE"[..], &b"RESPONDER"[..]))
        .chain(params.iter())
        .chain(WORKER_MARKERS.iter().copied())
}

/// `$_SERVER['FRANKENPHP_WORKER']` and `$_SERVER['TQSERVER_WORKER']`.
pub const WORKER_MARKERS: [(&[u8], &[u8]); 2] =
    [(b"FRANKENPHP_WORKER", b"1"), (b"TQSERVER_WORKER", b"1")];

/// How a worker script ended.
#[derive(Debug, PartialEq, Eq)]
pub struct WorkerEnd {
    /// Client requests it was given (the probe not counted).
    pub requests: u64,
    /// It answered the pool's probe: it booted.
    pub booted: bool,
    /// PHP started the script.
    pub started: bool,
}

/// The END_REQUEST application status of a worker's last response.
const ENDING: u32 = 1;

/// Worker mode's side of the connection: accepted when the script first
/// asks for a request (so the pool's probe is answered once it booted).
pub struct Session<S, A> {
    accept: A,
    stream: Option<S>,
    reader: RequestReader<()>,
    writer: ResponseWriter<()>,
    current: Option<RequestState>,
    keep_conn: bool,
    requests: u64,
    booted: bool,
    /// Times the script asked for a request: a run of it that asked for
    /// none did not boot.
    asked: u64,
    /// A wait for the next request answered "stop" (SIGTERM, or the web
    /// server closed the connection).
    stopped: bool,
}

impl<S: Read + Write + AsFd, A: FnMut() -> io::Result<S>> Session<S, A> {
    pub fn new(accept: A) -> Self {
        Self {
            accept,
            stream: None,
            reader: RequestReader::new((), ParamsLimits::default()),
            writer: ResponseWriter::new(()),
            current: None,
            keep_conn: true,
            requests: 0,
            booted: false,
            asked: 0,
            stopped: false,
        }
    }

    /// Whether the script, which just ended, must run again on this
    /// connection: it ended on its own (it was not told to stop) after a
    /// response that ended normally, so the pool may already have sent the
    /// next request. A request it left open ends here with ENDING instead
    /// (exit(), a fatal error): that tells the pool to send no more.
    fn must_run_again(&mut self) -> bool {
        if self.stopped || stopping() || self.current.as_ref().is_some_and(|r| !r.ended) {
            return false;
        }
        self.stream.is_some() && self.end_current(0)
    }

    /// The current request, as the callbacks act on it; `None` outside one.
    fn with_request<T>(&mut self, act: impl FnOnce(&mut Request<'_, S>) -> T) -> Option<T> {
        let state = self.current.take()?;
        let stream = self.stream.as_mut()?;
        let mut request = Request {
            stream,
            reader: &mut self.reader,
            writer: &mut self.writer,
            state,
        };
        let out = act(&mut request);
        self.current = Some(request.state);
        Some(out)
    }

    /// Ends the current request (a fatal error or exit() left it open): the
    /// worker ends with it.
    pub fn end(&mut self) -> WorkerEnd {
        self.end_current(ENDING);
        WorkerEnd {
            requests: self.requests,
            booted: self.booted,
            started: true,
        }
    }

    /// Ends the request that ran; false if the connection cannot go on.
    /// `app_status` for its END_REQUEST if it is still open.
    fn end_current(&mut self, app_status: u32) -> bool {
        let Some(mut state) = self.current.take() else {
            return true;
        };
        if let Some(stream) = self.stream.as_mut() {
            let mut request = Request {
                stream,
                reader: &mut self.reader,
                writer: &mut self.writer,
                state,
            };
            if !request.state.ended {
                request.end_with(app_status);
            }
            state = request.state;
        }
        self.reader.finish_request();
        !state.gone && self.keep_conn
    }

    fn wait_for_request(&mut self) -> io::Result<Option<fastcgi::Params>> {
        if self.stream.is_none() {
            self.stream = Some((self.accept)()?);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        // The pool's probe (no SCRIPT_FILENAME) gets php-cgi's answer,
        // without PHP; the wait before each read ends on SIGTERM.
        while let Some(NewRequest {
            request_id,
            keep_conn,
            params,
        }) = next_request(stream, &mut self.reader, &mut self.writer, |s| {
            wait_readable_or_stop(s.as_fd())
        })? {
            self.keep_conn = keep_conn;
            self.booted = true;
            if params.get("SCRIPT_FILENAME").is_some() {
                self.current = Some(RequestState::new(request_id));
                self.requests += 1;
                return Ok(Some(params));
            }
            put_stream(
                self.writer.buffer_mut(),
                RecordType::Stdout,
                request_id,
                b"Status: 404 Not Found\r\nContent-type: text/html; charset=UTF-8\r\n\r\nNo input file specified.\n",
            );
            self.writer
                .end_request(request_id, 0, ProtocolStatus::RequestComplete, false);
            self.reader.finish_request();
            send(stream, self.writer.buffer_mut())?;
            if !keep_conn {
                break;
            }
        }
        Ok(None)
    }
}

impl<S: Read + Write + AsFd, A: FnMut() -> io::Result<S>> Connection for Session<S, A> {
    fn write(&mut self, bytes: &[u8]) -> usize {
        // Outside a request (the boot, between requests) output is dropped.
        self.with_request(|r| r.write(bytes)).unwrap_or(bytes.len())
    }

    fn flush(&mut self) -> bool {
        self.with_request(|r| r.flush()).unwrap_or(true)
    }

    fn read(&mut self, into: &mut [u8]) -> usize {
        self.with_request(|r| r.read(into)).unwrap_or(0)
    }

    fn log(&mut self, line: &[u8]) {
        if self.with_request(|r| r.log(line)).is_none() {
            let mut stderr = io::stderr().lock();
            let _ = stderr.write_all(line);
            let _ = stderr.write_all(b"\n");
        }
    }

    fn finish(&mut self) -> bool {
        self.with_request(|r| r.finish()).unwrap_or(false)
    }
}

impl<S: Read + Write + AsFd, A: FnMut() -> io::Result<S>> WorkerConnection for Session<S, A> {
    fn next(&mut self) -> Option<fastcgi::Params> {
        self.asked += 1;
        let params = self.next_params();
        self.stopped = params.is_none();
        params
    }
}

impl<S: Read + Write + AsFd, A: FnMut() -> io::Result<S>> Session<S, A> {
    fn next_params(&mut self) -> Option<fastcgi::Params> {
        if !self.end_current(0) {
            return None;
        }
        match self.wait_for_request() {
            Ok(params) => params,
            Err(err) => {
                if err.kind() != io::ErrorKind::Interrupted
                    && err.kind() != io::ErrorKind::ConnectionReset
                {
                    eprintln!("tqserver-php: worker connection ended: {err}");
                }
                None
            }
        }
    }
}

/// Worker mode on the listening socket at fd 0: runs the worker script
/// (`boot` are its parameters) once, serving the first connection accepted.
/// SIGTERM makes the script's next request wait return false.
pub fn serve_worker<R: WorkerRunner>(runner: &mut R, boot: &[(Vec<u8>, Vec<u8>)]) -> WorkerEnd {
    use std::os::fd::IntoRawFd;
    match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK) {
        Ok((wake, pipe)) => {
            // Kept open for the process's life: the handler writes to it.
            STOP_WAKE.store(wake.into_raw_fd(), std::sync::atomic::Ordering::Relaxed);
            STOP_PIPE.store(pipe.into_raw_fd(), std::sync::atomic::Ordering::Relaxed);
        }
        Err(err) => eprintln!("tqserver-php: no pipe for SIGTERM: {err}"),
    }
    let handler = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_sigterm),
        // The wait for the next request polls the pipe the handler writes.
        nix::sys::signal::SaFlags::SA_RESTART,
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic and writes to a pipe,
    // both async-signal-safe; the process has one thread.
    let installed =
        unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGTERM, &handler) };
    if let Err(err) = installed {
        eprintln!("tqserver-php: cannot handle SIGTERM: {err}");
    }
    let allowed = allowed_addresses();
    let accept = move || loop {
        // SAFETY: fd 0 is the listening socket this process was given, open
        // for the process's whole life.
        let listener = unsafe { BorrowedFd::borrow_raw(0) };
        match socket::accept(listener) {
            Ok(fd) => {
                let stream = File::from(fd);
                if peer_allowed(&stream, allowed.as_deref()) {
                    return Ok(stream);
                }
            }
            Err(nix::errno::Errno::ECONNABORTED) => continue,
            Err(nix::errno::Errno::EINTR) if !stopping() => continue,
            Err(err) => return Err(io::Error::from(err)),
        }
    };
    run_worker_session(runner, boot, Session::new(accept))
}

/// Runs the worker script over `session` and ends what it left open.
///
/// A script that ends on its own after a response (Octane's MAX_REQUESTS,
/// or an exception after fastcgi_finish_request()) runs again in this
/// process, as FrankenPHP restarts a worker script that ends: that response
/// told the pool the worker goes on, so the next request may already be on
/// the connection, and exiting would reset it unread. PHP's request
/// shutdown between the runs discards everything the script built.
pub fn run_worker_session<R: WorkerRunner, S: Read + Write + AsFd, A: FnMut() -> io::Result<S>>(
    runner: &mut R,
    boot: &[(Vec<u8>, Vec<u8>)],
    mut session: Session<S, A>,
) -> WorkerEnd {
    let mut runs = 0u64;
    loop {
        let (asked, requests) = (session.asked, session.requests);
        let started = runner.run_worker(
            boot.iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .chain(WORKER_MARKERS.iter().copied()),
            &mut session,
        );
        runs += 1;
        // A run that asked for no request failed to boot (a first run that
        // did not ask has `booted` false already).
        let booted_again = runs == 1 || session.asked > asked;
        if !started || !booted_again || !session.must_run_again() {
            let end = session.end();
            return WorkerEnd {
                started,
                booted: end.booted && booted_again,
                ..end
            };
        }
        eprintln!(
            "tqserver-php: the worker script ended after {} requests; booting it again",
            session.requests - requests
        );
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use fastcgi::record::{
        MANAGEMENT_REQUEST_ID, put_abort_request, put_begin_request, put_record, put_stream_end,
    };
    use fastcgi::{EndRequest, ParamsWriter, Record, RecordDecoder};

    use super::*;

    /// The web server's end of the connection: what it sends, handed over in
    /// reads of at most `read_size` bytes, and what the worker sent back.
    struct WebServer {
        input: Vec<u8>,
        at: usize,
        read_size: usize,
        /// The web server stops reading after this many response bytes.
        reads_up_to: usize,
        output: Vec<u8>,
    }

    impl Read for WebServer {
        fn read(&mut self, into: &mut [u8]) -> io::Result<usize> {
            let n = into
                .len()
                .min(self.read_size)
                .min(self.input.len() - self.at);
            into[..n].copy_from_slice(&self.input[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    impl Write for WebServer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let room = self.reads_up_to - self.output.len();
            if room == 0 {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = bytes.len().min(room);
            self.output.extend_from_slice(&bytes[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// One request as the runner saw it.
    #[derive(Debug, PartialEq)]
    struct Seen {
        params: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
        /// What each write of the response took.
        written: Vec<usize>,
    }

    /// Stands in for PHP: reads the body as PHP does (CONTENT_LENGTH bytes,
    /// in small reads), then answers with a head and the body back.
    #[derive(Default)]
    struct Echo {
        seen: Vec<Seen>,
        fails: bool,
    }

    impl Runner for Echo {
        fn run<'p, C: Connection>(
            &mut self,
            params: impl Iterator<Item = (&'p [u8], &'p [u8])>,
            conn: &mut C,
        ) -> bool {
            if self.fails {
                return false;
            }
            let params: Vec<_> = params.map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
            let length: usize = params
                .iter()
                .find(|(name, _)| name == b"CONTENT_LENGTH")
                .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok())
                .unwrap_or(0);
            let mut body = Vec::new();
            let mut piece = [0; 7];
            while body.len() < length {
                let want = piece.len().min(length - body.len());
                let n = conn.read(&mut piece[..want]);
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&piece[..n]);
            }
            let written = vec![
                conn.write(b"Content-type: text/plain\r\n\r\n"),
                conn.write(&body),
            ];
            self.seen.push(Seen {
                params,
                body,
                written,
            });
            true
        }
    }

    const GET: &[(&[u8], &[u8])] = &[
        (b"SCRIPT_FILENAME", b"/srv/index.php"),
        (b"REQUEST_METHOD", b"GET"),
        (b"QUERY_STRING", b"a=1"),
    ];

    /// A request as nginx sends it: BEGIN_REQUEST, the PARAMS and their empty
    /// record, the body in STDIN records, the empty STDIN record.
    fn put_request(
        buf: &mut BytesMut,
        id: u16,
        keep_conn: bool,
        params: &[(&[u8], &[u8])],
        body: &[u8],
    ) {
        put_begin_request(buf, id, Role::Responder, keep_conn);
        put_params(buf, id, params);
        put_body(buf, id, body);
    }

    fn put_params(buf: &mut BytesMut, id: u16, params: &[(&[u8], &[u8])]) {
        let mut writer = ParamsWriter::new(buf, id);
        for (name, value) in params {
            writer.pair(name, value);
        }
        writer.finish();
    }

    fn put_body(buf: &mut BytesMut, id: u16, body: &[u8]) {
        for piece in body.chunks(5) {
            put_stream(buf, RecordType::Stdin, id, piece);
        }
        put_stream_end(buf, RecordType::Stdin, id);
    }

    fn post(body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b"SCRIPT_FILENAME".to_vec(), b"/srv/form.php".to_vec()),
            (b"REQUEST_METHOD".to_vec(), b"POST".to_vec()),
            (
                b"CONTENT_LENGTH".to_vec(),
                body.len().to_string().into_bytes(),
            ),
        ]
    }

    fn pairs(params: &[(Vec<u8>, Vec<u8>)]) -> Vec<(&[u8], &[u8])> {
        params
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect()
    }

    /// Serves one connection that sends `input` in reads of `read_size`.
    fn serve_with(
        input: &[u8],
        read_size: usize,
        runner: &mut Echo,
    ) -> (Result<(), ConnectionError>, Vec<u8>) {
        let mut web_server = WebServer {
            input: input.to_vec(),
            at: 0,
            read_size,
            reads_up_to: usize::MAX,
            output: Vec::new(),
        };
        let result = serve_connection(&mut web_server, runner);
        (result, web_server.output)
    }

    /// The response's records; it must end on a record boundary.
    fn records(output: &[u8]) -> Vec<Record> {
        let mut buf = BytesMut::from(output);
        let mut decoder = RecordDecoder::new();
        let mut records = Vec::new();
        while let Some(record) = decoder.decode(&mut buf).expect("a valid record") {
            records.push(record);
        }
        assert!(buf.is_empty(), "the response ends in a partial record");
        records
    }

    fn stdout(records: &[Record], id: u16) -> Vec<u8> {
        records
            .iter()
            .filter(|r| r.record_type == RecordType::Stdout && r.request_id == id)
            .flat_map(|r| r.content.iter().copied())
            .collect()
    }

    fn ends(records: &[Record]) -> Vec<(u16, ProtocolStatus)> {
        records
            .iter()
            .filter(|r| r.record_type == RecordType::EndRequest)
            .map(|r| {
                let end = EndRequest::parse(&r.content).expect("END_REQUEST body");
                (r.request_id, end.protocol_status)
            })
            .collect()
    }

    #[test]
    fn a_request_in_one_byte_reads_is_the_same_request() {
        let body = b"name=value&other=%20x".repeat(3);
        let params = post(&body);
        let mut input = BytesMut::new();
        put_request(&mut input, 1, true, &pairs(&params), &body);

        let mut whole = Echo::default();
        let (result, whole_output) = serve_with(&input, usize::MAX, &mut whole);
        assert!(result.is_ok(), "{result:?}");
        let mut bytewise = Echo::default();
        let (result, bytewise_output) = serve_with(&input, 1, &mut bytewise);
        assert!(result.is_ok(), "{result:?}");

        assert_eq!(bytewise.seen, whole.seen);
        assert_eq!(bytewise_output, whole_output);
        let [seen] = &whole.seen[..] else {
            panic!("{} requests run", whole.seen.len())
        };
        // FCGI_ROLE first, as php-cgi's FastCGI layer adds it.
        let mut expected = vec![(b"FCGI_ROLE".to_vec(), b"RESPONDER".to_vec())];
        expected.extend(params);
        assert_eq!(seen.params, expected);
        assert_eq!(seen.body, body);
        let records = records(&whole_output);
        let mut response = b"Content-type: text/plain\r\n\r\n".to_vec();
        response.extend_from_slice(&body);
        assert_eq!(stdout(&records, 1), response);
        assert_eq!(ends(&records), [(1, ProtocolStatus::RequestComplete)]);
        assert_eq!(
            records.last().map(|r| r.record_type),
            Some(RecordType::EndRequest)
        );
    }

    #[test]
    fn an_abort_before_the_body_gives_an_empty_body_and_closes_the_connection() {
        let body = b"0123456789";
        let params = post(body);
        let mut input = BytesMut::new();
        put_begin_request(&mut input, 1, Role::Responder, true);
        put_params(&mut input, 1, &pairs(&params));
        put_abort_request(&mut input, 1);
        // Not served: the worker closed the connection.
        put_request(&mut input, 1, true, GET, b"");

        for read_size in [1, usize::MAX] {
            let mut runner = Echo::default();
            let (result, output) = serve_with(&input, read_size, &mut runner);
            assert!(result.is_ok(), "{result:?}");
            let [seen] = &runner.seen[..] else {
                panic!("{} requests run", runner.seen.len())
            };
            assert_eq!(seen.body, b"");
            // The web server gave up: nothing more is sent to it.
            assert_eq!(seen.written, [0, 0]);
            assert_eq!(output, b"");
        }
    }

    #[test]
    fn an_abort_before_the_params_end_runs_nothing() {
        let mut input = BytesMut::new();
        put_begin_request(&mut input, 1, Role::Responder, true);
        put_record(
            &mut input,
            RecordType::Params,
            1,
            b"\x0f\x0eSCRIPT_FILENAME/srv/index.php",
        );
        put_abort_request(&mut input, 1);
        let mut runner = Echo::default();
        let (result, output) = serve_with(&input, 3, &mut runner);
        assert!(result.is_ok(), "{result:?}");
        assert!(runner.seen.is_empty());
        assert_eq!(output, b"");
    }

    #[test]
    fn a_kept_connection_serves_the_next_request_after_an_unread_body() {
        let body = b"second body";
        let params = post(body);
        let mut input = BytesMut::new();
        // The first request's body is not read (no CONTENT_LENGTH): its STDIN
        // records are still on the connection when the second one begins,
        // with the same id, as nginx reuses it.
        put_request(&mut input, 1, true, GET, b"not read");
        put_request(&mut input, 1, true, &pairs(&params), body);

        for read_size in [1, 9, usize::MAX] {
            let mut runner = Echo::default();
            let (result, output) = serve_with(&input, read_size, &mut runner);
            assert!(result.is_ok(), "{result:?}");
            assert_eq!(runner.seen.len(), 2);
            assert_eq!(runner.seen[0].body, b"");
            assert_eq!(runner.seen[1].body, body);
            assert_eq!(runner.seen[1].params[1..], params);
            let records = records(&output);
            assert_eq!(
                ends(&records),
                [
                    (1, ProtocolStatus::RequestComplete),
                    (1, ProtocolStatus::RequestComplete)
                ]
            );
        }
    }

    #[test]
    fn without_keep_conn_the_connection_ends_with_the_request() {
        let mut input = BytesMut::new();
        put_request(&mut input, 1, false, GET, b"");
        put_request(&mut input, 1, false, GET, b"");
        let mut runner = Echo::default();
        let (result, output) = serve_with(&input, usize::MAX, &mut runner);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(runner.seen.len(), 1);
        assert_eq!(
            ends(&records(&output)),
            [(1, ProtocolStatus::RequestComplete)]
        );
    }

    #[test]
    fn management_records_are_answered_between_and_during_requests() {
        let mut input = BytesMut::new();
        let mut asked = BytesMut::new();
        fastcgi::params::put_pair(&mut asked, b"FCGI_MPXS_CONNS", b"");
        fastcgi::params::put_pair(&mut asked, b"FCGI_MAX_REQS", b"");
        put_record(
            &mut input,
            RecordType::GetValues,
            MANAGEMENT_REQUEST_ID,
            &asked,
        );
        put_record(
            &mut input,
            RecordType::Other(42),
            MANAGEMENT_REQUEST_ID,
            b"",
        );
        put_begin_request(&mut input, 1, Role::Responder, true);
        put_record(
            &mut input,
            RecordType::Other(43),
            MANAGEMENT_REQUEST_ID,
            b"",
        );
        put_params(&mut input, 1, GET);
        put_body(&mut input, 1, b"");

        let mut runner = Echo::default();
        let (result, output) = serve_with(&input, 1, &mut runner);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(runner.seen.len(), 1);
        let records = records(&output);
        let kinds: Vec<_> = records.iter().map(|r| r.record_type).collect();
        assert_eq!(
            kinds,
            [
                RecordType::GetValuesResult,
                RecordType::UnknownType,
                RecordType::UnknownType,
                RecordType::Stdout,
                // The empty record that ends the STDOUT stream.
                RecordType::Stdout,
                RecordType::EndRequest
            ]
        );
        let values = fastcgi::Params::parse(records[0].content.clone(), ParamsLimits::default())
            .expect("GET_VALUES_RESULT pairs");
        assert_eq!(values.get("FCGI_MPXS_CONNS"), Some(&b"0"[..]));
        assert_eq!(values.get("FCGI_MAX_REQS"), Some(&b"1"[..]));
        assert_eq!(records[1].content[0], 42);
        assert_eq!(records[2].content[0], 43);
    }

    #[test]
    fn another_role_is_refused_and_the_connection_goes_on() {
        let mut input = BytesMut::new();
        put_begin_request(&mut input, 1, Role::Authorizer, true);
        put_request(&mut input, 2, true, GET, b"");
        let mut runner = Echo::default();
        let (result, output) = serve_with(&input, 4, &mut runner);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(runner.seen.len(), 1);
        assert_eq!(
            ends(&records(&output)),
            [
                (1, ProtocolStatus::UnknownRole),
                (2, ProtocolStatus::RequestComplete)
            ]
        );
    }

    #[test]
    fn a_second_request_id_while_the_params_arrive_is_refused() {
        let mut input = BytesMut::new();
        put_begin_request(&mut input, 1, Role::Responder, true);
        put_begin_request(&mut input, 2, Role::Responder, true);
        put_params(&mut input, 1, GET);
        put_body(&mut input, 1, b"");
        let mut runner = Echo::default();
        let (result, output) = serve_with(&input, usize::MAX, &mut runner);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(runner.seen.len(), 1);
        assert_eq!(
            ends(&records(&output)),
            [
                (2, ProtocolStatus::CantMpxConn),
                (1, ProtocolStatus::RequestComplete)
            ]
        );
    }

    #[test]
    fn a_second_request_id_while_the_body_is_read_is_refused() {
        let body = b"0123456789";
        let params = post(body);
        let mut input = BytesMut::new();
        put_begin_request(&mut input, 1, Role::Responder, true);
        put_params(&mut input, 1, &pairs(&params));
        put_stream(&mut input, RecordType::Stdin, 1, &body[..4]);
        put_begin_request(&mut input, 2, Role::Responder, true);
        put_stream(&mut input, RecordType::Stdin, 1, &body[4..]);
        put_stream_end(&mut input, RecordType::Stdin, 1);
        let mut runner = Echo::default();
        let (result, output) = serve_with(&input, usize::MAX, &mut runner);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(runner.seen[0].body, body);
        // The web server waits for an answer to request 2.
        assert_eq!(
            ends(&records(&output)),
            [
                (2, ProtocolStatus::CantMpxConn),
                (1, ProtocolStatus::RequestComplete)
            ]
        );
    }

    #[test]
    fn a_large_response_goes_out_in_records_and_stops_when_the_web_server_does() {
        let body = vec![b'x'; 3 * fastcgi::record::MAX_CONTENT_LEN];
        let params = post(&body);
        let mut input = BytesMut::new();
        put_request(&mut input, 1, true, &pairs(&params), &body);
        put_request(&mut input, 1, true, GET, b"");

        let mut runner = Echo::default();
        let (result, output) = serve_with(&input, 1000, &mut runner);
        assert!(result.is_ok(), "{result:?}");
        let records = records(&output);
        assert_eq!(stdout(&records, 1).len(), 2 * 28 + body.len());
        assert_eq!(runner.seen.len(), 2);

        // A web server that stops reading part way through the response.
        let mut web_server = WebServer {
            input: input.to_vec(),
            at: 0,
            read_size: usize::MAX,
            reads_up_to: 2 * OUT_CHUNK,
            output: Vec::new(),
        };
        let mut runner = Echo::default();
        let result = serve_connection(&mut web_server, &mut runner);
        assert!(result.is_ok(), "{result:?}");
        let [seen] = &runner.seen[..] else {
            panic!("{} requests run", runner.seen.len())
        };
        assert_eq!(seen.written[0], 28);
        assert_eq!(
            seen.written[1], 0,
            "a write taken after the web server stopped reading"
        );
    }

    #[test]
    fn a_connection_cut_in_a_record_is_an_error() {
        let mut input = BytesMut::new();
        put_request(&mut input, 1, true, GET, b"");
        input.truncate(input.len() - 3);
        let mut runner = Echo::default();
        let (result, _) = serve_with(&input, 2, &mut runner);
        assert!(
            matches!(&result, Err(ConnectionError::Io(err)) if err.kind() == io::ErrorKind::UnexpectedEof),
            "{result:?}"
        );
    }

    #[test]
    fn a_runner_that_cannot_start_ends_the_connection() {
        let mut input = BytesMut::new();
        put_request(&mut input, 1, true, GET, b"");
        let mut runner = Echo {
            fails: true,
            ..Echo::default()
        };
        let (result, _) = serve_with(&input, usize::MAX, &mut runner);
        assert!(
            matches!(result, Err(ConnectionError::RunnerFailed)),
            "{result:?}"
        );
    }
}
