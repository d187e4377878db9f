//! One instance of a `type: http` app: a process listening on its own port,
//! owned by one supervisor task from spawn to stop.
//!
//! Nobody else touches the child. Others read the instance's shared state
//! ([`Instance`]: state, pid, in-flight count, idle upstream connections)
//! and ask it to stop through its token. The supervisor spawns the process
//! (its own process group, a parent-death signal, killed on drop: instances
//! never outlive tqserver), logs its stdout and stderr line by line, and
//! polls its health path: an instance is routed to only while its last
//! health check answered 2xx. Before the first answer, an exit or the start
//! timeout fails the start (the caller keeps what ran before); after it, a
//! crash or three failed checks in a row restart the process on the same
//! port with exponential backoff, and only requests it was running fail.
//! Stopping drains: no new requests, in-flight ones may finish within
//! `drain_timeout`, then SIGTERM to the process group, then SIGKILL.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ports::PortLease;
use super::proxy::Upstream;
use crate::config::HttpAppConfig;

/// Lines of output kept to explain a failed start.
const OUTPUT_TAIL_LINES: usize = 30;
/// Longest output line logged as one.
const MAX_LINE: usize = 16 * 1024;
/// How often a starting instance is asked for its health path: short, so a
/// swap waits little longer than the app takes to listen.
const START_POLL: Duration = Duration::from_millis(25);
/// Failed health checks in a row that restart a running instance.
const UNHEALTHY_RESTART: u32 = 3;
/// Restart backoff: doubles per crash in a row from the first, up to the
/// last.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A run this long ends a streak of crashes.
const STABLE_RUN: Duration = Duration::from_secs(10);
/// After SIGTERM, how long before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Where an instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum InstanceState {
    /// Spawned, its health path has not answered yet.
    Starting = 0,
    /// Taking requests.
    Healthy = 1,
    /// Its last health check failed: not routed to.
    Unhealthy = 2,
    /// Crashed (or restarted for failing checks), waiting out its backoff.
    Restarting = 3,
    /// Finishing its requests before it stops.
    Draining = 4,
    Stopped = 5,
    /// Its first start failed.
    Failed = 6,
}

impl InstanceState {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Starting,
            1 => Self::Healthy,
            2 => Self::Unhealthy,
            3 => Self::Restarting,
            4 => Self::Draining,
            5 => Self::Stopped,
            _ => Self::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Restarting => "restarting",
            Self::Draining => "draining",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }
}

/// What the rest of tqserver sees of an instance.
pub struct Instance {
    pub app: String,
    /// Which generation (build) of the app it belongs to.
    pub generation: u64,
    pub index: usize,
    pub port: u16,
    state: AtomicU8,
    pid: AtomicU32,
    pub restarts: AtomicU64,
    /// Requests sent to it whose response has not ended.
    pub in_flight: AtomicUsize,
    pub requests: AtomicU64,
    /// Idle kept-alive connections to it.
    pub upstream: Upstream,
    /// Cancelled to stop it (drain, then signal).
    stop: CancellationToken,
    /// The supervisor's outcome of the first start.
    started: watch::Receiver<InstanceState>,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The last lines it wrote, for a failed start's error.
    output: Arc<Mutex<VecDeque<String>>>,
    /// Held for the instance's life.
    _port: PortLease,
}

impl Instance {
    pub fn state(&self) -> InstanceState {
        InstanceState::from_u8(self.state.load(Ordering::SeqCst))
    }

    fn set_state(&self, state: InstanceState) {
        // SeqCst with the in-flight count: see `drain_and_stop`.
        self.state.store(state as u8, Ordering::SeqCst);
    }

    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// The last lines of its output.
    pub fn output_tail(&self) -> String {
        self.output
            .lock()
            .map(|lines| lines.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Spawns the instance's supervisor; [`Instance::wait_started`] says
    /// whether it came up.
    pub fn spawn(
        config: Arc<HttpAppConfig>,
        env: Vec<(String, String)>,
        generation: u64,
        index: usize,
        port: PortLease,
    ) -> Arc<Self> {
        let (started_tx, started) = watch::channel(InstanceState::Starting);
        let instance = Arc::new(Self {
            app: config.name.clone(),
            generation,
            index,
            port: port.port(),
            state: AtomicU8::new(InstanceState::Starting as u8),
            pid: AtomicU32::new(0),
            restarts: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            upstream: Upstream::default(),
            stop: CancellationToken::new(),
            started,
            supervisor: Mutex::new(None),
            output: Arc::new(Mutex::new(VecDeque::new())),
            _port: port,
        });
        let task = tokio::spawn(supervise(instance.clone(), config, env, started_tx));
        if let Ok(mut supervisor) = instance.supervisor.lock() {
            *supervisor = Some(task);
        }
        instance
    }

    /// Waits until the first start is over: Ok once healthy, else why not.
    pub async fn wait_started(&self) -> Result<(), String> {
        let mut started = self.started.clone();
        let state = started
            .wait_for(|state| *state != InstanceState::Starting)
            .await
            .map(|state| *state)
            .unwrap_or(InstanceState::Failed);
        match state {
            InstanceState::Healthy => Ok(()),
            _ => Err(self.output_tail()),
        }
    }

    /// Drains and stops it; returns when the process is gone.
    pub async fn stop(&self) {
        self.stop.cancel();
        let task = self.supervisor.lock().ok().and_then(|mut task| task.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Whether requests may go to it now.
    pub fn routable(&self) -> bool {
        self.state() == InstanceState::Healthy
    }
}

/// The supervisor: one task per instance, for its whole life.
async fn supervise(
    instance: Arc<Instance>,
    config: Arc<HttpAppConfig>,
    env: Vec<(String, String)>,
    started: watch::Sender<InstanceState>,
) {
    let label = format!("{}#{}", instance.app, instance.index);
    let mut crashes_in_a_row: u32 = 0;
    let mut first = true;
    loop {
        instance.set_state(InstanceState::Starting);
        let spawned_at = Instant::now();
        let mut child = match spawn(&instance, &config, &env) {
            Ok(child) => child,
            Err(err) => {
                let message = format!("cannot start {}: {err}", config.command[0]);
                warn!(worker = %instance.app, instance = instance.index, "{message}");
                push_line(&instance.output, message);
                if first {
                    instance.set_state(InstanceState::Failed);
                    let _ = started.send(InstanceState::Failed);
                    return;
                }
                if !backoff(&instance, &mut crashes_in_a_row).await {
                    break;
                }
                continue;
            }
        };
        let pid = child.id().unwrap_or(0);
        instance.pid.store(pid, Ordering::Relaxed);

        // Up: the health path answers 2xx before the start timeout.
        let deadline = spawned_at + config.start_timeout;
        let up = loop {
            tokio::select! {
                _ = instance.stop.cancelled() => break Err("stopped while starting".to_owned()),
                status = child.wait() => {
                    break Err(format!("exited while starting ({})", describe(status)));
                }
                _ = tokio::time::sleep(START_POLL) => {
                    if check_health(instance.port, &config.health_path, config.health_timeout).await.is_ok() {
                        break Ok(());
                    }
                    if Instant::now() >= deadline {
                        break Err(format!(
                            "{} did not answer 2xx within start_timeout ({:?})",
                            config.health_path, config.start_timeout
                        ));
                    }
                }
            }
        };
        if let Err(why) = up {
            // Its last words, before they are read for the error.
            terminate(&mut child, pid, Duration::from_millis(500)).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            warn!(worker = %instance.app, instance = instance.index, pid, port = instance.port, "instance {label} did not start: {why}");
            push_line(&instance.output, why);
            if first || instance.stop.is_cancelled() {
                instance.set_state(if first {
                    InstanceState::Failed
                } else {
                    InstanceState::Stopped
                });
                let _ = started.send(InstanceState::Failed);
                return;
            }
            if !backoff(&instance, &mut crashes_in_a_row).await {
                break;
            }
            continue;
        }
        instance.set_state(InstanceState::Healthy);
        info!(
            worker = %instance.app,
            instance = instance.index,
            pid,
            port = instance.port,
            took_ms = spawned_at.elapsed().as_millis() as u64,
            "instance {label} healthy"
        );
        if first {
            first = false;
            let _ = started.send(InstanceState::Healthy);
        }

        // Running: poll health; a crash or failing checks restart it.
        let mut failed_checks = 0;
        let mut poll = tokio::time::interval_at(
            Instant::now() + config.health_interval,
            config.health_interval,
        );
        let ended = loop {
            tokio::select! {
                _ = instance.stop.cancelled() => break None,
                status = child.wait() => break Some(format!("exited ({})", describe(status))),
                _ = poll.tick() => {
                    match check_health(instance.port, &config.health_path, config.health_timeout).await {
                        Ok(()) => {
                            failed_checks = 0;
                            if instance.state() == InstanceState::Unhealthy {
                                info!(worker = %instance.app, instance = instance.index, "instance {label} healthy again");
                                instance.set_state(InstanceState::Healthy);
                            }
                        }
                        Err(why) => {
                            failed_checks += 1;
                            warn!(worker = %instance.app, instance = instance.index, pid, "health check of instance {label} failed ({failed_checks} in a row): {why}");
                            instance.set_state(InstanceState::Unhealthy);
                            if failed_checks >= UNHEALTHY_RESTART {
                                break Some(format!("{UNHEALTHY_RESTART} health checks failed"));
                            }
                        }
                    }
                }
            }
        };
        match ended {
            None => {
                drain_and_stop(&instance, &config, &mut child, pid).await;
                break;
            }
            Some(why) => {
                instance.set_state(InstanceState::Restarting);
                instance.upstream.clear();
                terminate(&mut child, pid, Duration::from_secs(1)).await;
                instance.restarts.fetch_add(1, Ordering::Relaxed);
                warn!(worker = %instance.app, instance = instance.index, pid, "instance {label} {why}; restarting");
                if spawned_at.elapsed() >= STABLE_RUN {
                    crashes_in_a_row = 0;
                }
                if !backoff(&instance, &mut crashes_in_a_row).await {
                    break;
                }
            }
        }
    }
    instance.upstream.clear();
    instance.set_state(InstanceState::Stopped);
}

/// Sleeps out the restart backoff; false if stopped meanwhile.
async fn backoff(instance: &Instance, crashes_in_a_row: &mut u32) -> bool {
    instance.set_state(InstanceState::Restarting);
    let delay = BACKOFF_FIRST
        .saturating_mul(1 << (*crashes_in_a_row).min(10))
        .min(BACKOFF_MAX);
    *crashes_in_a_row += 1;
    tokio::select! {
        _ = instance.stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Draining: no new requests, in-flight ones finish (within
/// drain_timeout), then the process stops.
async fn drain_and_stop(instance: &Instance, config: &HttpAppConfig, child: &mut Child, pid: u32) {
    // The state first, then the count (both SeqCst): a request counts
    // itself first, then checks the state, so it either sees Draining and
    // goes elsewhere, or is seen here and waited for.
    instance.set_state(InstanceState::Draining);
    let deadline = Instant::now() + config.drain_timeout;
    while instance.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            _ = child.wait() => break,
        }
    }
    instance.upstream.clear();
    terminate(child, pid, KILL_GRACE).await;
    info!(
        worker = %instance.app,
        instance = instance.index,
        pid,
        "instance {}#{} stopped",
        instance.app,
        instance.index
    );
}

/// SIGTERM to its process group, then SIGKILL after `grace`.
async fn terminate(child: &mut Child, pid: u32, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        kill_group(pid, nix::sys::signal::Signal::SIGKILL);
        return;
    }
    kill_group(pid, nix::sys::signal::Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        kill_group(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Whatever it left behind in its group.
    kill_group(pid, nix::sys::signal::Signal::SIGKILL);
}

fn kill_group(pid: u32, signal: nix::sys::signal::Signal) {
    if pid > 1 {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), signal);
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            _ => status.to_string(),
        },
        Err(err) => err.to_string(),
    }
}

/// The process: the app folder, the given environment only, stdin closed,
/// stdout and stderr piped to the log, its own process group, a
/// parent-death signal, killed if dropped.
fn spawn(
    instance: &Arc<Instance>,
    config: &HttpAppConfig,
    env: &[(String, String)],
) -> std::io::Result<Child> {
    let mut cmd = command(config, &config.command, env, config.credentials);
    cmd.env("WORKER_PORT", instance.port.to_string());
    pool::process::die_with_tqserver(&mut cmd);
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    for (stream, pipe) in [
        (
            "stdout",
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
        ),
        (
            "stderr",
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
        ),
    ] {
        if let Some(pipe) = pipe {
            tokio::spawn(relay_output(
                pipe,
                instance.app.clone(),
                instance.index,
                pid,
                stream,
                instance.output.clone(),
            ));
        }
    }
    Ok(child)
}

/// A command in the app's folder with `env` only, as `user` if given.
pub(super) fn command(
    config: &HttpAppConfig,
    argv: &[String],
    env: &[(String, String)],
    user: Option<(u32, u32)>,
) -> Command {
    let program = if argv[0].contains('/') {
        config.folder.join(&argv[0])
    } else {
        argv[0].clone().into()
    };
    let mut cmd = Command::new(program);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&config.folder)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn push_line(tail: &Mutex<VecDeque<String>>, line: String) {
    if let Ok(mut tail) = tail.lock() {
        if tail.len() == OUTPUT_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// Logs each line of an instance's output, labelled with app and instance.
async fn relay_output(
    pipe: impl AsyncRead + Unpin,
    app: String,
    index: usize,
    pid: u32,
    stream: &'static str,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            continue;
        }
        info!(worker = %app, instance = index, pid, stream, "{text}");
        push_line(&tail, text.to_owned());
    }
}

/// One GET of the health path on a fresh connection: Ok on 2xx.
pub(super) async fn check_health(port: u16, path: &str, timeout: Duration) -> Result<(), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|err| format!("connect: {err}"))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: tqserver-health\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|err| format!("write: {err}"))?;
        let mut head = [0u8; 64];
        let mut read = 0;
        while read < 12 {
            match stream.read(&mut head[read..]).await {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(err) => return Err(format!("read: {err}")),
            }
        }
        let line = String::from_utf8_lossy(&head[..read]);
        let code = line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse::<u16>().ok());
        match code {
            Some(code) if (200..300).contains(&code) => Ok(()),
            Some(code) => Err(format!("{path} answered {code}")),
            None => Err(format!("{path}: no HTTP response")),
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("{path}: no answer within {timeout:?}")),
    }
}
