//! A pool's zygote: one `tqserver-php --zygote` process that ran PHP's module
//! startup once and forks a worker whenever the pool asks.
//!
//! The conversation runs over a SOCK_SEQPACKET socket that the zygote has as
//! fd 3 (the message formats are in crates/php-runtime/src/zygote.rs). For
//! each worker the pool sends the worker's listening socket and the write end
//! of a fresh stderr pipe; the zygote answers with the pid and a pidfd. The
//! zygote is the workers' parent: it reaps them and reports each exit status,
//! and the pidfd lets tqserver signal a worker with no risk of hitting a
//! recycled pid.
//!
//! The zygote is started on the first fork. If it dies, its workers die with
//! it (their parent-death signal) and the next fork starts a new zygote. It is
//! killed when the pool drops this handle, and gets SIGKILL if tqserver dies.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use tokio::io::unix::AsyncFd;
use tokio::process::Child;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::WorkerCommand;
use crate::error::SpawnError;

/// The zygote's end of the control socket.
const CONTROL_FD: RawFd = 3;

/// Starts and talks to a pool's zygote.
pub struct Zygote {
    command: WorkerCommand,
    pool: String,
    running: tokio::sync::Mutex<Option<Arc<Running>>>,
    /// The pid of the zygote that runs now (0: none), for status pages;
    /// cleared when its socket closes.
    pid: Arc<AtomicU32>,
    /// Zygotes started so far.
    starts: AtomicU64,
}

struct Running {
    /// Killed on drop.
    child: Mutex<Child>,
    pid: u32,
    socket: AsyncFd<OwnedFd>,
    next_token: AtomicU64,
    waiters: Mutex<Waiters>,
}

#[derive(Default)]
struct Waiters {
    /// Gone once the zygote's socket closed: nobody will answer.
    closed: bool,
    forks: HashMap<u64, oneshot::Sender<io::Result<Forked>>>,
    exits: HashMap<i32, oneshot::Sender<i32>>,
}

/// A worker forked by a zygote: tqserver's handle on a process that is not
/// its child.
pub struct Forked {
    pub pid: u32,
    pidfd: OwnedFd,
    exit: oneshot::Receiver<i32>,
    status: Option<ExitStatus>,
}

impl Zygote {
    /// `command` is the runtime's command line (program, `-c`/`-d`
    /// arguments, environment, user, directory); `--zygote` is added.
    pub fn new(command: WorkerCommand, pool: &str) -> Self {
        Self {
            command,
            pool: pool.to_owned(),
            running: tokio::sync::Mutex::new(None),
            pid: Arc::new(AtomicU32::new(0)),
            starts: AtomicU64::new(0),
        }
    }

    /// The zygote's pid, if one runs.
    pub fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::Relaxed)).filter(|&pid| pid != 0)
    }

    /// What a status page shows of it.
    pub fn status(&self) -> crate::stats::ZygoteStatus {
        let pid = self.pid();
        crate::stats::ZygoteStatus {
            pid,
            starts: self.starts.load(Ordering::Relaxed),
            rss_bytes: pid.and_then(crate::stats::rss_bytes),
            pss_bytes: pid.and_then(crate::stats::pss_bytes),
        }
    }

    /// Starts the zygote (PHP's module startup) if it is not running.
    pub async fn start_now(&self, timeout: Duration) -> Result<(), SpawnError> {
        self.running(timeout).await.map(drop)
    }

    /// Kills the zygote (its workers die with it) and waits for it.
    pub async fn stop(&self) {
        let running = self.running.lock().await.take();
        if let Some(running) = running {
            let _ = self
                .pid
                .compare_exchange(running.pid, 0, Ordering::Relaxed, Ordering::Relaxed);
            let mut child = running.child.lock().unwrap_or_else(|p| p.into_inner());
            let _ = child.start_kill();
            // Reaped by tokio's orphan queue if not here.
            let _ = child.try_wait();
        }
    }

    /// Forks a worker that serves FastCGI on `listener` and writes its stderr
    /// to `stderr`.
    pub async fn fork(
        &self,
        listener: OwnedFd,
        stderr: OwnedFd,
        timeout: Duration,
    ) -> Result<Forked, SpawnError> {
        let running = self.running(timeout).await?;
        let token = running.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = running.waiters.lock().unwrap_or_else(|p| p.into_inner());
            if waiters.closed {
                return Err(zygote_gone());
            }
            waiters.forks.insert(token, tx);
        }
        let mut message = vec![b'F'];
        message.extend_from_slice(&token.to_le_bytes());
        let fds = [listener.as_raw_fd(), stderr.as_raw_fd()];
        let sent = loop {
            let mut guard = running
                .socket
                .writable()
                .await
                .map_err(SpawnError::Socket)?;
            match guard.try_io(|socket| {
                let iov = [IoSlice::new(&message)];
                let rights = [ControlMessage::ScmRights(&fds)];
                sendmsg::<()>(
                    socket.as_raw_fd(),
                    &iov,
                    &rights,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            }) {
                Ok(result) => break result,
                Err(_would_block) => continue,
            }
        };
        // The zygote has its own copies now (or never will).
        drop(listener);
        drop(stderr);
        if let Err(err) = sent {
            return Err(SpawnError::Exec {
                program: self.command.program.clone(),
                cause: err,
            });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(forked))) => Ok(forked),
            Ok(Ok(Err(cause))) => Err(SpawnError::Exec {
                program: self.command.program.clone(),
                cause,
            }),
            Ok(Err(_)) => Err(zygote_gone()),
            Err(_) => Err(SpawnError::Probe {
                reason: format!("the zygote did not fork within {timeout:?}"),
                stderr: String::new(),
            }),
        }
    }

    /// The running zygote, started (and waited for) if there is none or it
    /// died.
    async fn running(&self, timeout: Duration) -> Result<Arc<Running>, SpawnError> {
        let mut slot = self.running.lock().await;
        if let Some(running) = slot.as_ref() {
            let alive = !running
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .closed;
            if alive {
                return Ok(running.clone());
            }
            warn!(worker = %self.pool, pid = running.pid, "the zygote died; starting a new one");
        }
        let running = self.start(timeout).await?;
        *slot = Some(running.clone());
        Ok(running)
    }

    async fn start(&self, timeout: Duration) -> Result<Arc<Running>, SpawnError> {
        let socket_error = |err: nix::Error| SpawnError::Socket(io::Error::from(err));
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(socket_error)?;
        let command = &self.command;
        let mut cmd = crate::process::base_command(command, Stdio::null());
        cmd.arg("--zygote");
        let parent = std::process::id();
        let theirs_raw = theirs.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and makes
        // only async-signal-safe calls (dup2, fcntl, and those of
        // `die_with_parent`). The control socket becomes fd 3 without
        // close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                if theirs_raw == CONTROL_FD {
                    let flags = libc::fcntl(CONTROL_FD, libc::F_GETFD);
                    if flags < 0
                        || libc::fcntl(CONTROL_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(theirs_raw, CONTROL_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                crate::process::die_with_parent(parent)
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|cause| crate::process::explain_exec_error(command, cause))?;
        drop(theirs);
        let pid = child.id().unwrap_or(0);
        let tail = crate::process::StderrTail::default();
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(crate::process::relay_stderr(
                stderr,
                self.pool.clone(),
                pid,
                tail.clone(),
            ));
        }
        // SAFETY: `ours` is an OwnedFd moved into the AsyncFd, which owns it
        // (and so keeps it open, the same descriptor) until it is dropped.
        let socket = unsafe { AsyncFd::register(ours) }
            .map_err(|err| SpawnError::Socket(io::Error::from(err)))?;

        // The first message says PHP started.
        let ready = async {
            loop {
                let mut guard = socket.readable().await?;
                match guard.try_io(|s| receive(s.as_raw_fd())) {
                    Ok(Ok(Some(message))) if message.bytes.first() == Some(&b'R') => {
                        return Ok(());
                    }
                    Ok(Ok(Some(_))) => continue,
                    Ok(Ok(None)) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the zygote closed its socket",
                        ));
                    }
                    Ok(Err(err)) => return Err(err),
                    Err(_would_block) => continue,
                }
            }
        };
        tokio::select! {
            result = tokio::time::timeout(timeout, ready) => match result {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    let status = tokio::time::timeout(Duration::from_millis(500), child.wait()).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Err(match status {
                        Ok(Ok(status)) => SpawnError::Exited {
                            status: format!("zygote: {}", crate::process::describe(status)),
                            stderr: tail.text(),
                        },
                        _ => SpawnError::Probe { reason: format!("zygote: {err}"), stderr: tail.text() },
                    });
                }
                Err(_) => {
                    return Err(SpawnError::Probe {
                        reason: format!("the zygote did not start PHP within {timeout:?}"),
                        stderr: tail.text(),
                    });
                }
            },
            status = child.wait() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let status = status.map(crate::process::describe).unwrap_or_else(|e| e.to_string());
                return Err(SpawnError::Exited { status: format!("zygote: {status}"), stderr: tail.text() });
            }
        }
        info!(worker = %self.pool, pid, "zygote started PHP");
        self.pid.store(pid, Ordering::Relaxed);
        self.starts.fetch_add(1, Ordering::Relaxed);
        let running = Arc::new(Running {
            child: Mutex::new(child),
            pid,
            socket,
            next_token: AtomicU64::new(1),
            waiters: Mutex::new(Waiters::default()),
        });
        tokio::spawn(read_replies(Arc::downgrade(&running), self.pid.clone()));
        Ok(running)
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        if let Some(running) = self.running.get_mut().take() {
            let mut child = running.child.lock().unwrap_or_else(|p| p.into_inner());
            let _ = child.start_kill();
        }
    }
}

fn zygote_gone() -> SpawnError {
    SpawnError::Probe {
        reason: "the zygote exited".to_owned(),
        stderr: String::new(),
    }
}

struct Message {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// One packet, or `None` when the zygote closed its end.
fn receive(fd: RawFd) -> io::Result<Option<Message>> {
    let mut buf = [0u8; 64];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let message = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in message.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this
            // process for this message; nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let len = message.bytes;
    if len == 0 {
        return Ok(None);
    }
    Ok(Some(Message {
        bytes: buf[..len].to_vec(),
        fds,
    }))
}

/// Hands the zygote's answers to whoever waits for them, until it closes.
async fn read_replies(running: std::sync::Weak<Running>, shown_pid: Arc<AtomicU32>) {
    loop {
        let Some(this) = running.upgrade() else {
            return;
        };
        let message = {
            let Ok(mut guard) = this.socket.readable().await else {
                break;
            };
            match guard.try_io(|s| receive(s.as_raw_fd())) {
                Ok(Ok(Some(message))) => message,
                Ok(Ok(None)) | Ok(Err(_)) => break,
                Err(_would_block) => continue,
            }
        };
        let mut waiters = this.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = &message.bytes;
        let u64_at = |at: usize| {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let i32_at = |at: usize| {
            bytes
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(i32::from_le_bytes)
        };
        match bytes.first() {
            Some(b'P') => {
                let (Some(token), Some(pid)) = (u64_at(1), i32_at(9)) else {
                    continue;
                };
                let Some(pidfd) = message.fds.into_iter().next() else {
                    continue;
                };
                let (exit_tx, exit_rx) = oneshot::channel();
                waiters.exits.insert(pid, exit_tx);
                let forked = Forked {
                    pid: pid as u32,
                    pidfd,
                    exit: exit_rx,
                    status: None,
                };
                if let Some(tx) = waiters.forks.remove(&token)
                    && let Err(Ok(forked)) = tx.send(Ok(forked))
                {
                    // Nobody waits any more (the spawn timed out): the
                    // worker must not live on unowned.
                    drop(forked);
                }
            }
            Some(b'E') => {
                let (Some(token), Some(errno)) = (u64_at(1), i32_at(9)) else {
                    continue;
                };
                if let Some(tx) = waiters.forks.remove(&token) {
                    let _ = tx.send(Err(io::Error::from_raw_os_error(errno)));
                }
            }
            Some(b'X') => {
                let (Some(pid), Some(status)) = (i32_at(1), i32_at(5)) else {
                    continue;
                };
                if let Some(tx) = waiters.exits.remove(&pid) {
                    let _ = tx.send(status);
                }
            }
            _ => {}
        }
    }
    if let Some(this) = running.upgrade() {
        let _ = shown_pid.compare_exchange(this.pid, 0, Ordering::Relaxed, Ordering::Relaxed);
        let mut waiters = this.waiters.lock().unwrap_or_else(|p| p.into_inner());
        waiters.closed = true;
        waiters.forks.clear();
        waiters.exits.clear();
    }
}

impl Forked {
    /// Waits for the worker to exit.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = match (&mut self.exit).await {
            Ok(raw) => ExitStatus::from_raw(raw),
            Err(_) => {
                // The zygote is gone, so the worker got its parent-death
                // SIGKILL; wait until it is really gone.
                let pidfd = self.pidfd.try_clone()?;
                // SAFETY: `pidfd` is an OwnedFd moved into the AsyncFd, which
                // owns it until it is dropped.
                let fd = unsafe {
                    AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
                }
                .map_err(io::Error::from)?;
                let _ = fd.readable().await?;
                ExitStatus::from_raw(libc::SIGKILL)
            }
        };
        self.status = Some(status);
        Ok(status)
    }

    /// The exit status if the worker has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none()
            && let Ok(raw) = self.exit.try_recv()
        {
            self.status = Some(ExitStatus::from_raw(raw));
        }
        Ok(self.status)
    }

    /// Sends `signal` to the worker (a no-op once it is gone).
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo; it
        // cannot reach another process even if the pid has been reused.
        let result = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if result == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for Forked {
    /// Like `kill_on_drop` for an exec'd worker: a dropped handle kills it.
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.signal(libc::SIGKILL);
        }
    }
}
