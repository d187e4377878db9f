//! One worker process: spawned with its listening socket as fd 0, proven alive
//! by a probe request, then owned by a single task until it exits.
//!
//! Nobody else touches the `Child`: others send [`Control`] messages through
//! the worker's handle. Stopping is "SIGTERM, grace period, SIGKILL". Workers
//! never outlive tqserver: each gets a parent-death signal (SIGKILL) and its
//! own process group (so a terminal's Ctrl-C reaches tqserver, which then
//! stops workers in order), and `kill_on_drop` covers a dropped task.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fastcgi::ParamsWriter;
use fastcgi::client::{ClientConnection, REQUEST_ID, ResponseEvent};
use fastcgi::record::{RecordType, Role, put_begin_request, put_stream_end};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{Launch, WorkerCommand};
use crate::error::SpawnError;
use crate::socket::{self, WorkerStream};
use crate::zygote::{Forked, Zygote};

/// Lines of a worker's stderr kept to explain an early exit.
const STDERR_TAIL_LINES: usize = 20;
/// Longest stderr line relayed in one piece; longer lines are split (and
/// say so) rather than buffered without bound.
const MAX_STDERR_LINE: usize = 1024 * 1024;

/// Messages to the task that owns a worker process.
#[derive(Debug)]
pub enum Control {
    /// SIGTERM now, SIGKILL after `grace` if still alive.
    Stop { grace: Duration },
}

/// A freshly spawned worker that answered its probe request.
pub struct Spawned {
    pub process: WorkerProcess,
    pub pid: u32,
    pub conn: ClientConnection<WorkerStream>,
    /// From the spawn's start to the probe's answer: the process start, PHP's
    /// (or a fork's) and, in worker mode, the app's boot.
    pub started_in: Duration,
}

/// How a pool makes workers: exec its command for each, or ask its zygote to
/// fork one. Cheap to clone.
#[derive(Clone)]
pub enum Launcher {
    Exec,
    Zygote(Arc<Zygote>),
}

impl Launcher {
    pub fn new(command: &WorkerCommand, pool: &str) -> Self {
        match command.launch {
            Launch::Exec => Launcher::Exec,
            Launch::Zygote => Launcher::Zygote(Arc::new(Zygote::new(command.clone(), pool))),
        }
    }
}

/// A worker process: tqserver's child (exec'd) or its zygote's (forked).
pub enum WorkerProcess {
    Exec(Child),
    Forked(Forked),
}

impl WorkerProcess {
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            WorkerProcess::Exec(child) => child.wait().await,
            WorkerProcess::Forked(forked) => forked.wait().await,
        }
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        match self {
            WorkerProcess::Exec(child) => child.try_wait(),
            WorkerProcess::Forked(forked) => forked.try_wait(),
        }
    }

    fn terminate(&mut self, pid: u32) {
        match self {
            WorkerProcess::Exec(_) => {
                if pid != 0 {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
            WorkerProcess::Forked(forked) => {
                let _ = forked.signal(libc::SIGTERM);
            }
        }
    }

    fn start_kill(&mut self) -> std::io::Result<()> {
        match self {
            WorkerProcess::Exec(child) => child.start_kill(),
            WorkerProcess::Forked(forked) => forked.signal(libc::SIGKILL),
        }
    }
}

/// Spawns one worker and waits until it has answered a probe request over the
/// connection that will carry its real requests. A process that exits or
/// stalls first is reported with its exit status and the end of its stderr.
pub async fn spawn(
    launcher: &Launcher,
    command: &WorkerCommand,
    pool: &str,
    slot: u64,
    spawn_timeout: Duration,
) -> Result<Spawned, SpawnError> {
    let began = std::time::Instant::now();
    spawn_timed(launcher, command, pool, slot, spawn_timeout)
        .await
        .map(|spawned| Spawned {
            started_in: began.elapsed(),
            ..spawned
        })
}

async fn spawn_timed(
    launcher: &Launcher,
    command: &WorkerCommand,
    pool: &str,
    slot: u64,
    spawn_timeout: Duration,
) -> Result<Spawned, SpawnError> {
    let bound = socket::bind(&command.socket, pool, slot).map_err(SpawnError::Socket)?;
    let stream = socket::connect(&bound.addr)
        .await
        .map_err(SpawnError::Socket)?;
    if let Launcher::Zygote(zygote) = launcher {
        return fork(zygote, bound.listener, stream, pool, spawn_timeout).await;
    }

    let mut cmd = base_command(command, Stdio::from(bound.listener));
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (see `die_with_parent`).
    unsafe {
        cmd.pre_exec(move || die_with_parent(parent));
    }
    let mut child = cmd
        .spawn()
        .map_err(|cause| explain_exec_error(command, cause))?;
    let pid = child.id().unwrap_or(0);
    let stderr_tail = StderrTail::default();
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(relay_stderr(
            stderr,
            pool.to_owned(),
            pid,
            stderr_tail.clone(),
        ));
    }
    probe_new(
        WorkerProcess::Exec(child),
        pid,
        stream,
        stderr_tail,
        spawn_timeout,
    )
    .await
}

/// A worker's (or a zygote's) process: the given environment and nothing
/// else, its directory and user, stdout discarded, stderr piped, a process
/// group of its own (a terminal's Ctrl-C reaches tqserver only), killed if
/// its handle is dropped.
pub(crate) fn base_command(command: &WorkerCommand, stdin: Stdio) -> Command {
    let mut cmd = Command::new(&command.program);
    cmd.args(&command.args)
        .env_clear()
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &command.cwd {
        cmd.current_dir(cwd);
    }
    if let Some((uid, gid)) = command.credentials {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Makes `cmd`'s process die with tqserver (a parent-death SIGKILL), as
/// every worker does: for other programs tqserver runs (`type: http` apps).
pub fn die_with_tqserver(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (see `die_with_parent`).
    unsafe {
        cmd.pre_exec(move || die_with_parent(parent));
    }
}

/// For a `pre_exec` hook: SIGKILL when tqserver (`parent`) dies, and fail
/// the exec if it already has. Only async-signal-safe calls (prctl,
/// getppid), no allocation. Runs after the uid and gid changes, which would
/// otherwise clear the parent-death signal.
pub(crate) fn die_with_parent(parent: u32) -> std::io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    // tqserver died between fork and prctl: do not run orphaned.
    if nix::unistd::getppid().as_raw() as u32 != parent {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// A worker forked by the pool's zygote, with its own stderr pipe.
async fn fork(
    zygote: &Zygote,
    listener: std::os::fd::OwnedFd,
    stream: WorkerStream,
    pool: &str,
    spawn_timeout: Duration,
) -> Result<Spawned, SpawnError> {
    let (stderr_tx, stderr_rx) = tokio::net::unix::pipe::pipe().map_err(SpawnError::Socket)?;
    let stderr_tx = stderr_tx.into_blocking_fd().map_err(SpawnError::Socket)?;
    let forked = zygote.fork(listener, stderr_tx, spawn_timeout).await?;
    let pid = forked.pid;
    let stderr_tail = StderrTail::default();
    tokio::spawn(relay_stderr(
        stderr_rx,
        pool.to_owned(),
        pid,
        stderr_tail.clone(),
    ));
    probe_new(
        WorkerProcess::Forked(forked),
        pid,
        stream,
        stderr_tail,
        spawn_timeout,
    )
    .await
}

/// Sends the probe request to a new worker and waits for its answer (or its
/// exit).
async fn probe_new(
    mut child: WorkerProcess,
    pid: u32,
    stream: WorkerStream,
    stderr_tail: StderrTail,
    spawn_timeout: Duration,
) -> Result<Spawned, SpawnError> {
    let mut conn = ClientConnection::new(stream);
    let probe = tokio::time::timeout(spawn_timeout, probe(&mut conn));
    tokio::select! {
        result = probe => match result {
            Ok(Ok(())) => Ok(Spawned { process: child, pid, conn, started_in: Duration::ZERO }),
            Ok(Err(err)) => {
                // The probe failed: usually the process died. Give the exit
                // status a moment to arrive for a useful message.
                let status = tokio::time::timeout(Duration::from_millis(500), child.wait()).await;
                let stderr = stderr_tail.text();
                match status {
                    Ok(Ok(status)) => Err(SpawnError::Exited { status: describe(status), stderr }),
                    _ => Err(SpawnError::Probe { reason: err.to_string(), stderr }),
                }
            }
            Err(_) => Err(SpawnError::Probe {
                reason: format!("no answer within {spawn_timeout:?}"),
                stderr: stderr_tail.text(),
            }),
        },
        status = child.wait() => {
            // Let the stderr relay catch up with the last words.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let status = status.map(describe).unwrap_or_else(|e| e.to_string());
            Err(SpawnError::Exited { status, stderr: stderr_tail.text() })
        }
    }
}

/// A failed exec, with the directory in the way when the worker's user was
/// refused its working directory.
pub(crate) fn explain_exec_error(command: &WorkerCommand, cause: std::io::Error) -> SpawnError {
    if cause.kind() == std::io::ErrorKind::PermissionDenied
        && let (Some((uid, gid)), Some(cwd)) = (command.credentials, &command.cwd)
        && let Ok(Some(blocked)) = crate::access::first_blocked(cwd, uid, gid)
    {
        return SpawnError::NoAccess {
            program: command.program.clone(),
            user: crate::access::user_name(uid),
            cwd: cwd.clone(),
            blocked,
        };
    }
    SpawnError::Exec {
        program: command.program.clone(),
        cause,
    }
}

/// A request with no script: php-cgi answers "No input file specified" at
/// once, which proves the process runs PHP and that the connection works.
async fn probe(
    conn: &mut ClientConnection<WorkerStream>,
) -> Result<(), fastcgi::client::ClientError> {
    let buf = conn.write_buf();
    put_begin_request(buf, REQUEST_ID, Role::Responder, true);
    {
        let mut params = ParamsWriter::new(buf, REQUEST_ID);
        params.pair(b"REQUEST_METHOD", b"GET");
        params.pair(b"SERVER_SOFTWARE", b"tqserver-probe");
        params.finish();
    }
    put_stream_end(buf, RecordType::Stdin, REQUEST_ID);
    conn.flush().await?;
    loop {
        if let ResponseEvent::End(_) = conn.next_event().await? {
            return Ok(());
        }
    }
}

/// How a worker process ended.
#[derive(Debug)]
pub struct Exit {
    pub status: std::io::Result<ExitStatus>,
    /// It ended because tqserver stopped it; otherwise it crashed (or was
    /// killed by someone else).
    pub requested: bool,
}

/// Owns the child until it exits.
pub async fn supervise(
    mut child: WorkerProcess,
    pid: u32,
    mut control: mpsc::UnboundedReceiver<Control>,
) -> Exit {
    tokio::select! {
        status = child.wait() => Exit { status, requested: false },
        message = control.recv() => match message {
            Some(Control::Stop { grace }) => stop(&mut child, pid, grace).await,
            // Every handle is gone: the pool itself was dropped.
            None => stop(&mut child, pid, Duration::ZERO).await,
        }
    }
}

async fn stop(child: &mut WorkerProcess, pid: u32, grace: Duration) -> Exit {
    // Already dead before we signalled it: a crash, not our stop.
    if let Ok(Some(status)) = child.try_wait() {
        return Exit {
            status: Ok(status),
            requested: false,
        };
    }
    if !grace.is_zero() && pid != 0 {
        // Our own child, not reaped yet, or a pidfd: the pid is still this
        // worker's.
        child.terminate(pid);
        if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
            // Death by any signal but ours means something else killed it.
            let requested = status
                .as_ref()
                .map(|s| s.signal().is_none_or(|signal| signal == libc::SIGTERM))
                .unwrap_or(true);
            return Exit { status, requested };
        }
        warn!(pid, "worker ignored SIGTERM for {grace:?}; sending SIGKILL");
    }
    if let Err(err) = child.start_kill() {
        return Exit {
            status: Err(err),
            requested: true,
        };
    }
    Exit {
        status: child.wait().await,
        requested: true,
    }
}

/// The last lines a worker wrote to stderr, to explain an early exit.
#[derive(Clone, Default)]
pub(crate) struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    pub(crate) fn text(&self) -> String {
        self.0
            .lock()
            .map(|lines| lines.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

pub(crate) async fn relay_stderr(
    stderr: impl AsyncRead + Unpin,
    pool: String,
    pid: u32,
    tail: StderrTail,
) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_STDERR_LINE as u64)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let split = !line.ends_with(b"\n");
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            continue;
        }
        if split {
            warn!(worker = %pool, pid, stream = "stderr", "{text} [line continues]");
        } else {
            info!(worker = %pool, pid, stream = "stderr", "{text}");
        }
        if let Ok(mut tail) = tail.0.lock() {
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text.chars().take(2000).collect());
        }
    }
}

use tokio::io::AsyncReadExt as _;

/// "exit code 255" or "signal 9 (SIGKILL)".
pub fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(signal) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(signal)
            .map(|s| s.as_str())
            .unwrap_or("?");
        format!("signal {signal} ({name})")
    } else {
        status.to_string()
    }
}
