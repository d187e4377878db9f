//! `tqserver status` and `tqserver reload`: talk to a running server, found
//! through its admin endpoint and its pid file (both read from server.yaml,
//! without validating the apps, so they work while a worker.yaml is broken).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;

use crate::config::ListenAddr;

/// GET `path` from the admin endpoint; returns the body.
fn admin_get(addr: &ListenAddr, path: &str) -> anyhow::Result<String> {
    let unreachable = || format!("cannot reach the admin endpoint at {addr}; is tqserver running?");
    let timeout = Some(Duration::from_secs(10));
    let mut stream: Box<dyn ReadWrite> = match addr {
        ListenAddr::Tcp(socket) => {
            let stream = TcpStream::connect_timeout(socket, Duration::from_secs(3))
                .with_context(unreachable)?;
            stream.set_read_timeout(timeout)?;
            Box::new(stream)
        }
        ListenAddr::Unix(socket) => {
            let stream = UnixStream::connect(socket).with_context(unreachable)?;
            stream.set_read_timeout(timeout)?;
            Box::new(stream)
        }
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed answer from {addr}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{addr}{path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn status_json(addr: &ListenAddr) -> anyhow::Result<Value> {
    let body = admin_get(addr, "/status?full")?;
    serde_json::from_str(&body).context("the admin endpoint answered something that is not JSON")
}

pub fn status(config: &Path) -> anyhow::Result<String> {
    let (admin, _) = crate::config::validate::control_settings(config)?;
    let admin = admin.ok_or_else(|| {
        anyhow!(
            "admin.enabled is false in {}; no status to read",
            config.display()
        )
    })?;
    Ok(render(&status_json(&admin)?))
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("-")
}

fn num(value: &Value, key: &str) -> u64 {
    value.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.1}M", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{}K", bytes / 1024)
    }
}

fn human_secs(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// A readable table of pools and their workers.
pub fn render(status: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tqserver {}  pid {}  {}  up {}  config {}",
        text(status, "version"),
        num(status, "pid"),
        text(status, "phase"),
        human_secs(num(status, "uptime")),
        text(status, "config"),
    );
    if let Some(reload) = status.get("last reload") {
        let errors = reload
            .get("errors")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if num(reload, "at") > 0 || !errors.is_empty() {
            let ok = reload.get("ok").and_then(Value::as_bool).unwrap_or(true);
            let _ = writeln!(
                out,
                "last reload: {}",
                if ok {
                    "applied"
                } else {
                    "REFUSED (old configuration still serving)"
                }
            );
            for error in errors {
                let _ = writeln!(out, "  {}", error.as_str().unwrap_or(""));
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{:<14} {:<12} {:<8} {:<9} {:>5} {:>5} {:>5} {:>6} {:>7} {:>9} {:>7} {:>8} {:>8} {:>7} {:>8}",
        "WORKER",
        "ROUTE",
        "PHP",
        "MANAGER",
        "PROCS",
        "IDLE",
        "BUSY",
        "QUEUE",
        "MIN-MAX",
        "REQUESTS",
        "SPAWNS",
        "RECYCLED",
        "TIMEOUTS",
        "CRASHES",
        "REJECTED"
    );
    let pools = status
        .get("pools")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for pool in &pools {
        let _ = writeln!(
            out,
            "{:<14} {:<12} {:<8} {:<9} {:>5} {:>5} {:>5} {:>6} {:>7} {:>9} {:>7} {:>8} {:>8} {:>7} {:>8}",
            text(pool, "pool"),
            text(pool, "route"),
            text(pool, "php version"),
            text(pool, "process manager"),
            num(pool, "total processes"),
            num(pool, "idle processes"),
            num(pool, "active processes"),
            num(pool, "listen queue"),
            format!(
                "{}-{}",
                num(pool, "min children"),
                num(pool, "max children")
            ),
            num(pool, "accepted conn"),
            num(pool, "spawns"),
            num(pool, "recycles"),
            num(pool, "timeouts"),
            num(pool, "crashes"),
            num(pool, "rejected queue full") + num(pool, "rejected queue timeout"),
        );
    }
    for pool in &pools {
        let processes = pool
            .get("processes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if processes.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{} workers:", text(pool, "pool"));
        let _ = writeln!(
            out,
            "  {:>8} {:<9} {:>8} {:>8} {:>7}  REQUEST",
            "PID", "STATE", "REQS", "RSS", "UP"
        );
        for process in processes {
            let request = match text(&process, "request method") {
                "-" => String::new(),
                method => format!(
                    "{method} {} ({} ms)",
                    text(&process, "request uri"),
                    num(&process, "request duration") / 1000
                ),
            };
            let _ = writeln!(
                out,
                "  {:>8} {:<9} {:>8} {:>8} {:>7}  {request}",
                num(&process, "pid"),
                text(&process, "state"),
                num(&process, "requests"),
                human_bytes(num(&process, "rss")),
                human_secs(num(&process, "start since")),
            );
        }
    }
    out
}

/// Asks the running server to reload and, when the admin endpoint is on,
/// waits for the outcome.
pub fn reload(config: &Path) -> anyhow::Result<String> {
    let (admin, pid_file) = crate::config::validate::control_settings(config)?;
    let pid_file = pid_file
        .ok_or_else(|| anyhow!("server.pid_file is off; send SIGHUP to tqserver instead"))?;
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .with_context(|| {
            format!(
                "cannot read {}; is tqserver running with this configuration?",
                pid_file.display()
            )
        })?
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a pid", pid_file.display()))?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "tqserver" {
        bail!(
            "{} names pid {pid}, which is not a running tqserver (stale pid file?)",
            pid_file.display()
        );
    }
    let before = admin
        .as_ref()
        .and_then(|addr| status_json(addr).ok())
        .map(|s| reload_at(&s));
    // SAFETY: kill(2) with a pid we just checked; no memory is involved.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        bail!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    let (Some(addr), Some(before)) = (admin, before) else {
        return Ok(format!("reload requested (SIGHUP to pid {pid})"));
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let Ok(status) = status_json(&addr) else {
            continue;
        };
        if reload_at(&status) != before {
            let reload = &status["last reload"];
            if reload["ok"].as_bool().unwrap_or(false) {
                return Ok(format!("configuration reloaded (pid {pid})"));
            }
            let errors: Vec<String> = reload["errors"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            bail!(
                "reload refused; the running configuration stays:\n{}",
                errors.join("\n")
            );
        }
    }
    bail!("no reload reported within 60 s (pid {pid})")
}

fn reload_at(status: &Value) -> u64 {
    status["last reload"]["seq"].as_u64().unwrap_or(0)
}
