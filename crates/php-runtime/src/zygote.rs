//! The zygote: PHP started once, then a fork per worker.
//!
//! tqserver execs `tqserver-php --zygote` with a SOCK_SEQPACKET socket at fd
//! 3. The zygote runs PHP's module startup (OPcache maps its shared memory
//! here, `opcache.preload` runs here), says it is ready, and then serves one
//! kind of request: "fork a worker on this socket". It has a single thread,
//! no runtime and no sockets but fd 3, so a fork copies nothing that two
//! processes must not share; each worker forgets PHP's seeded random state.
//!
//! Messages (little-endian), one per packet:
//! - zygote → tqserver `R` pid:u32 — ready;
//! - tqserver → zygote `F` token:u64, with SCM_RIGHTS [listening socket,
//!   stderr pipe] — fork a worker;
//! - zygote → tqserver `P` token:u64 pid:i32, with SCM_RIGHTS [pidfd] — the
//!   worker runs; the pidfd lets tqserver signal it without pid reuse races;
//! - zygote → tqserver `E` token:u64 errno:i32 — the fork failed;
//! - zygote → tqserver `X` pid:i32 status:i32 — a worker exited (the raw wait
//!   status: the zygote is the workers' parent and reaps them).
//!
//! Workers get SIGKILL when the zygote dies, and the zygote when tqserver
//! dies, so no worker outlives tqserver. The zygote exits when tqserver closes
//! the socket.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::ffi;

const CONTROL_FD: RawFd = 3;

struct Child {
    pid: libc::pid_t,
    pidfd: OwnedFd,
}

/// `serve` is what a forked worker does: serve FastCGI on fd 0 (it does not
/// return).
pub fn run(serve: &dyn Fn()) -> ! {
    let zygote_pid = std::process::id();
    // SAFETY: fd 3 is the control socket tqserver passed; nothing else in
    // this process owns it.
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    let mut ready = vec![b'R'];
    ready.extend_from_slice(&zygote_pid.to_le_bytes());
    if send(&control, &ready, &[]).is_err() {
        std::process::exit(1);
    }
    let mut children: Vec<Child> = Vec::new();
    loop {
        let mut polled: Vec<libc::pollfd> = std::iter::once(control.as_raw_fd())
            .chain(children.iter().map(|c| c.pidfd.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `polled` is a valid array of pollfd of the given length,
        // alive for the call.
        let ready = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, -1) };
        if ready < 0 {
            if nix::errno::Errno::last() == nix::errno::Errno::EINTR {
                continue;
            }
            std::process::exit(1);
        }
        // Workers that ended: reap and report, newest index first so removal
        // keeps the others' indexes.
        for index in (1..polled.len()).rev() {
            if polled[index].revents == 0 {
                continue;
            }
            let child = children.swap_remove(index - 1);
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid on our own child's pid, which only we reap.
            let reaped = unsafe { libc::waitpid(child.pid, &mut status, libc::WNOHANG) };
            if reaped == child.pid {
                let mut message = vec![b'X'];
                message.extend_from_slice(&child.pid.to_le_bytes());
                message.extend_from_slice(&status.to_le_bytes());
                let _ = send(&control, &message, &[]);
            } else {
                children.push(child);
            }
        }
        if polled[0].revents != 0 {
            match receive(&control) {
                Received::Fork { token, fds } => {
                    fork_worker(&control, &mut children, token, fds, zygote_pid, serve)
                }
                Received::Other => {}
                Received::Closed => std::process::exit(0),
            }
        }
    }
}

enum Received {
    Fork { token: u64, fds: Vec<OwnedFd> },
    Other,
    Closed,
}

fn receive(control: &OwnedFd) -> Received {
    let mut buf = [0u8; 64];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let message = match recvmsg::<()>(
        control.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(message) => message,
        Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => return Received::Other,
        Err(_) => return Received::Closed,
    };
    let mut fds = Vec::new();
    if let Ok(cmsgs) = message.cmsgs() {
        for cmsg in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: the kernel just installed these descriptors in
                // this process for us; nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
    }
    let len = message.bytes;
    if len == 0 {
        return Received::Closed;
    }
    if len == 9 && buf[0] == b'F' && fds.len() == 2 {
        let token = u64::from_le_bytes(buf[1..9].try_into().unwrap_or_default());
        return Received::Fork { token, fds };
    }
    Received::Other
}

fn send(control: &OwnedFd, bytes: &[u8], fds: &[RawFd]) -> nix::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(control.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
}

fn fork_worker(
    control: &OwnedFd,
    children: &mut Vec<Child>,
    token: u64,
    fds: Vec<OwnedFd>,
    zygote_pid: u32,
    serve: &dyn Fn(),
) {
    // SAFETY: the zygote has one thread, so the child gets a consistent copy
    // of everything (no lock can be held by a thread that does not exist in
    // the child).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        become_worker(control, children, fds, zygote_pid, serve);
    }
    if pid < 0 {
        let errno = nix::errno::Errno::last() as i32;
        let mut message = vec![b'E'];
        message.extend_from_slice(&token.to_le_bytes());
        message.extend_from_slice(&errno.to_le_bytes());
        let _ = send(control, &message, &[]);
        return;
    }
    drop(fds);
    // SAFETY: pidfd_open on our own unreaped child: the pid cannot have been
    // reused, since only this process reaps it.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    if raw < 0 {
        let errno = nix::errno::Errno::last() as i32;
        // SAFETY: plain kill(2) of our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let mut message = vec![b'E'];
        message.extend_from_slice(&token.to_le_bytes());
        message.extend_from_slice(&errno.to_le_bytes());
        let _ = send(control, &message, &[]);
        return;
    }
    // SAFETY: pidfd_open returned a new descriptor that we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut message = vec![b'P'];
    message.extend_from_slice(&token.to_le_bytes());
    message.extend_from_slice(&pid.to_le_bytes());
    let _ = send(control, &message, &[pidfd.as_raw_fd()]);
    children.push(Child { pid, pidfd });
}

/// The child side of the fork: the given socket becomes fd 0 and the pipe fd
/// 2, everything of the zygote's is closed, and the worker serves.
fn become_worker(
    control: &OwnedFd,
    children: &mut Vec<Child>,
    fds: Vec<OwnedFd>,
    zygote_pid: u32,
    serve: &dyn Fn(),
) -> ! {
    // SAFETY: prctl and getppid only affect this process. The parent-death
    // signal is checked against a race with the zygote's death right after.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() as u32 != zygote_pid {
            libc::_exit(1);
        }
    }
    let _ = nix::unistd::close(control.as_raw_fd());
    for child in children.drain(..) {
        drop(child.pidfd);
    }
    let [listener, stderr]: [OwnedFd; 2] = match fds.try_into() {
        Ok(pair) => pair,
        // SAFETY: _exit ends the process without running the zygote's
        // atexit handlers.
        Err(_) => unsafe { libc::_exit(1) },
    };
    // SAFETY: dup2 onto fds 0 and 2, which this process owns (they were
    // the zygote's stdin and stderr); the originals are closed right after.
    unsafe {
        if libc::dup2(listener.as_raw_fd(), 0) < 0 || libc::dup2(stderr.as_raw_fd(), 2) < 0 {
            libc::_exit(1);
        }
    }
    drop(listener);
    drop(stderr);
    ffi::after_fork();
    serve();
    // Serving never returns; should it, the worker ends here.
    std::process::exit(1)
}
