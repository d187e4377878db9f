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
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::WorkerCommand;
use crate::error::SpawnError;
use crate::socket::{self, WorkerStream};

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
    pub child: Child,
    pub pid: u32,
    pub conn: ClientConnection<WorkerStream>,
}

/// Spawns one worker and waits until it has answered a probe request over the
/// connection that will carry its real requests. A process that exits or
/// stalls first is reported with its exit status and the end of its stderr.
pub async fn spawn(
    command: &WorkerCommand,
    pool: &str,
    slot: u64,
    spawn_timeout: Duration,
) -> Result<Spawned, SpawnError> {
    let bound = socket::bind(&command.socket, pool, slot).map_err(SpawnError::Socket)?;
    let stream = socket::connect(&bound.addr)
        .await
        .map_err(SpawnError::Socket)?;

    let mut cmd = Command::new(&command.program);
    cmd.args(&command.args)
        .env_clear()
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::from(bound.listener))
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
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (prctl, getppid, _exit). It runs after the uid
    // and gid changes, which would otherwise clear the parent-death signal.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // tqserver died between fork and prctl: do not run orphaned.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|cause| explain_exec_error(command, cause))?;
    let pid = child.id().unwrap_or(0);
    let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(relay_stderr(
            stderr,
            pool.to_owned(),
            pid,
            stderr_tail.clone(),
        ));
    }

    let mut conn = ClientConnection::new(stream);
    let probe = tokio::time::timeout(spawn_timeout, probe(&mut conn));
    tokio::select! {
        result = probe => match result {
            Ok(Ok(())) => Ok(Spawned { child, pid, conn }),
            Ok(Err(err)) => {
                // The probe failed: usually the process died. Give the exit
                // status a moment to arrive for a useful message.
                let status = tokio::time::timeout(Duration::from_millis(500), child.wait()).await;
                let stderr = tail_text(&stderr_tail);
                match status {
                    Ok(Ok(status)) => Err(SpawnError::Exited { status: describe(status), stderr }),
                    _ => Err(SpawnError::Probe { reason: err.to_string(), stderr }),
                }
            }
            Err(_) => Err(SpawnError::Probe {
                reason: format!("no answer within {spawn_timeout:?}"),
                stderr: tail_text(&stderr_tail),
            }),
        },
        status = child.wait() => {
            // Let the stderr relay catch up with the last words.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let status = status.map(describe).unwrap_or_else(|e| e.to_string());
            Err(SpawnError::Exited { status, stderr: tail_text(&stderr_tail) })
        }
    }
}

/// A failed exec, with the directory in the way when the worker's user was
/// refused its working directory.
fn explain_exec_error(command: &WorkerCommand, cause: std::io::Error) -> SpawnError {
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
    mut child: Child,
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

async fn stop(child: &mut Child, pid: u32, grace: Duration) -> Exit {
    // Already dead before we signalled it: a crash, not our stop.
    if let Ok(Some(status)) = child.try_wait() {
        return Exit {
            status: Ok(status),
            requested: false,
        };
    }
    if !grace.is_zero() && pid != 0 {
        // SAFETY: plain kill(2) on our own child, which we have not reaped.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
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

async fn relay_stderr(
    stderr: ChildStderr,
    pool: String,
    pid: u32,
    tail: Arc<Mutex<VecDeque<String>>>,
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
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text.chars().take(2000).collect());
        }
    }
}

use tokio::io::AsyncReadExt as _;

fn tail_text(tail: &Mutex<VecDeque<String>>) -> String {
    tail.lock()
        .map(|lines| lines.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

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
