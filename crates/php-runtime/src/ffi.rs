//! The C half's entry points (csrc/tq_sapi.h) and the callbacks it calls.
//!
//! PHP runs only inside `tq_php_*`, whose C frames hold the `zend_try` that
//! every bailout (fatal error, `exit()`, timeout, aborted connection) jumps
//! back to. The callbacks below are leaves: they touch the connection and
//! return, and never call into PHP, so no longjmp passes through a Rust frame.
//! A panic in a callback cannot unwind into C either: `extern "C"` functions
//! abort on panic.

use std::ffi::{CStr, c_char, c_int, c_void};

use php_runtime::worker::{Connection, Runner, WorkerConnection, WorkerRunner, worker_params};

/// `struct tq_param`.
#[repr(C)]
pub struct Param {
    pub name: *const c_char,
    pub name_len: usize,
    pub value: *const c_char,
    pub value_len: usize,
}

/// `struct tq_io`.
#[repr(C)]
pub struct Io {
    pub ctx: *mut c_void,
    pub write: unsafe extern "C" fn(*mut c_void, *const c_char, usize) -> usize,
    pub flush: unsafe extern "C" fn(*mut c_void) -> c_int,
    pub read: unsafe extern "C" fn(*mut c_void, *mut c_char, usize) -> usize,
    pub log: unsafe extern "C" fn(*mut c_void, *const c_char, usize),
    pub finish: unsafe extern "C" fn(*mut c_void) -> c_int,
    /// Worker mode only.
    pub next: Option<unsafe extern "C" fn(*mut c_void, *mut *const Param, *mut usize) -> c_int>,
}

unsafe extern "C" {
    pub fn tq_php_startup(ini_entries: *const c_char, ini_path: *const c_char) -> c_int;
    pub fn tq_php_after_fork();
    pub fn tq_php_version() -> *const c_char;
    pub fn tq_php_request(params: *const Param, count: usize, io: *const Io) -> c_int;
    pub fn tq_php_worker(params: *const Param, count: usize, io: *const Io) -> c_int;
}

fn param((name, value): (&[u8], &[u8])) -> Param {
    Param {
        name: name.as_ptr().cast(),
        name_len: name.len(),
        value: value.as_ptr().cast(),
        value_len: value.len(),
    }
}

/// Runs PHP's module startup. `ini` is "key=value\n" lines.
pub fn startup(ini: &CStr, ini_path: Option<&CStr>) -> bool {
    // SAFETY: called once, before any other tq_php_* function, from the only
    // thread; both strings outlive the call (PHP copies them).
    unsafe {
        tq_php_startup(
            ini.as_ptr(),
            ini_path.map_or(std::ptr::null(), CStr::as_ptr),
        ) == 0
    }
}

/// PHP's version ("8.2.32").
pub fn version() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(tq_php_version()) }
        .to_string_lossy()
        .into_owned()
}

/// In a new worker, right after fork.
pub fn after_fork() {
    // SAFETY: module startup has run; this only clears two flags.
    unsafe { tq_php_after_fork() }
}

/// The worker's runner: each request runs in PHP.
pub struct Php;

impl Runner for Php {
    fn run<'p, C: Connection>(
        &mut self,
        params: impl Iterator<Item = (&'p [u8], &'p [u8])>,
        conn: &mut C,
    ) -> bool {
        run_request(params, conn) >= 0
    }
}

/// Runs one request over `conn`; returns the script's exit status, or -1 if
/// PHP could not start the request.
fn run_request<'p, C: Connection>(
    params: impl Iterator<Item = (&'p [u8], &'p [u8])>,
    conn: &mut C,
) -> i32 {
    let params: Vec<Param> = params.map(param).collect();
    let io = Io {
        ctx: (conn as *mut C).cast(),
        write: write::<C>,
        flush: flush::<C>,
        read: read::<C>,
        log: log::<C>,
        finish: finish::<C>,
        next: None,
    };
    // SAFETY: `params` and `io` (and the `conn` its ctx points to, borrowed
    // mutably here) live until the call returns; the C side keeps neither
    // pointer after it returns, and calls the callbacks only on this thread.
    unsafe { tq_php_request(params.as_ptr(), params.len(), &io) }
}

/// Worker mode's runner: the worker script runs in PHP once.
pub struct PhpWorker;

impl WorkerRunner for PhpWorker {
    fn run_worker<'p, C: WorkerConnection>(
        &mut self,
        boot: impl Iterator<Item = (&'p [u8], &'p [u8])>,
        conn: &mut C,
    ) -> bool {
        let boot: Vec<Param> = boot.map(param).collect();
        let mut ctx = WorkerCtx {
            conn,
            params: None,
            list: Vec::new(),
        };
        let io = Io {
            ctx: (&mut ctx as *mut WorkerCtx<'_, C>).cast(),
            write: write::<WorkerCtx<'_, C>>,
            flush: flush::<WorkerCtx<'_, C>>,
            read: read::<WorkerCtx<'_, C>>,
            log: log::<WorkerCtx<'_, C>>,
            finish: finish::<WorkerCtx<'_, C>>,
            next: Some(next::<C>),
        };
        // SAFETY: `boot`, `io` and `ctx` (which borrows `conn`) live until
        // the call returns, and the C side keeps no pointer past it; the
        // callbacks run on this thread only, one at a time.
        unsafe { tq_php_worker(boot.as_ptr(), boot.len(), &io) >= 0 }
    }
}

/// What the worker-mode callbacks act on: the connection, and the current
/// request's parameters, which PHP reads until it asks for the next.
struct WorkerCtx<'c, C> {
    conn: &'c mut C,
    params: Option<fastcgi::Params>,
    list: Vec<Param>,
}

impl<C: WorkerConnection> Connection for WorkerCtx<'_, C> {
    fn write(&mut self, bytes: &[u8]) -> usize {
        self.conn.write(bytes)
    }
    fn flush(&mut self) -> bool {
        self.conn.flush()
    }
    fn read(&mut self, into: &mut [u8]) -> usize {
        self.conn.read(into)
    }
    fn log(&mut self, line: &[u8]) {
        self.conn.log(line)
    }
    fn finish(&mut self) -> bool {
        self.conn.finish()
    }
}

/// # Safety
/// `ctx` is the `WorkerCtx<C>` given to `tq_php_worker`, not otherwise
/// borrowed while the C side runs; `params` and `count` are writable.
unsafe extern "C" fn next<C: WorkerConnection>(
    ctx: *mut c_void,
    params: *mut *const Param,
    count: *mut usize,
) -> c_int {
    // SAFETY: see the function's contract.
    let ctx = unsafe { &mut *ctx.cast::<WorkerCtx<'_, C>>() };
    // The previous request's list points into its parameters: both go.
    ctx.list.clear();
    ctx.params = ctx.conn.next();
    let Some(current) = ctx.params.as_ref() else {
        return 0;
    };
    ctx.list.extend(worker_params(current).map(param));
    // SAFETY: see the function's contract. The list and the parameters it
    // points into stay in `ctx` until the next call.
    unsafe {
        *params = ctx.list.as_ptr();
        *count = ctx.list.len();
    }
    1
}

/// # Safety
/// `ctx` is the `&mut C` given to [`run_request`], not otherwise borrowed
/// while the C side runs; `bytes` points to `len` readable bytes.
unsafe extern "C" fn write<C: Connection>(
    ctx: *mut c_void,
    bytes: *const c_char,
    len: usize,
) -> usize {
    if len == 0 {
        return 0;
    }
    // SAFETY: see the function's contract.
    let (conn, bytes) = unsafe {
        (
            &mut *ctx.cast::<C>(),
            std::slice::from_raw_parts(bytes.cast::<u8>(), len),
        )
    };
    conn.write(bytes)
}

/// # Safety
/// As [`write`].
unsafe extern "C" fn flush<C: Connection>(ctx: *mut c_void) -> c_int {
    // SAFETY: see the function's contract.
    let conn = unsafe { &mut *ctx.cast::<C>() };
    if conn.flush() { 0 } else { -1 }
}

/// # Safety
/// As [`write`]; `into` points to `len` writable bytes.
unsafe extern "C" fn read<C: Connection>(ctx: *mut c_void, into: *mut c_char, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    // SAFETY: see the function's contract.
    let (conn, into) = unsafe {
        (
            &mut *ctx.cast::<C>(),
            std::slice::from_raw_parts_mut(into.cast::<u8>(), len),
        )
    };
    conn.read(into)
}

/// # Safety
/// As [`write`].
unsafe extern "C" fn log<C: Connection>(ctx: *mut c_void, line: *const c_char, len: usize) {
    // SAFETY: see the function's contract.
    let (conn, line) = unsafe {
        (
            &mut *ctx.cast::<C>(),
            std::slice::from_raw_parts(line.cast::<u8>(), len),
        )
    };
    conn.log(line);
}

/// # Safety
/// As [`write`].
unsafe extern "C" fn finish<C: Connection>(ctx: *mut c_void) -> c_int {
    // SAFETY: see the function's contract.
    let conn = unsafe { &mut *ctx.cast::<C>() };
    if conn.finish() { 0 } else { -1 }
}
