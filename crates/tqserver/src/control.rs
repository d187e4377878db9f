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

use crate::config::ListenAddr;
use crate::status::ServerPage;

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

fn server_page(addr: &ListenAddr) -> anyhow::Result<ServerPage> {
    let body = admin_get(addr, "/status?full")?;
    serde_json::from_str(&body)
        .context("the admin endpoint answered something that is not tqserver's status JSON")
}

pub fn status(config: &Path) -> anyhow::Result<String> {
    let (admin, _) = crate::config::validate::control_settings(config)?;
    let admin = admin.ok_or_else(|| {
        anyhow!(
            "admin.enabled is false in {}; no status to read",
            config.display()
        )
    })?;
    Ok(render(&server_page(&admin)?))
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
pub fn render(status: &ServerPage) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tqserver {}  pid {}  {}  up {}  config {}",
        status.version,
        status.pid,
        status.phase,
        human_secs(status.uptime),
        status.config,
    );
    let reload = &status.last_reload;
    if reload.at > 0 || !reload.errors.is_empty() {
        let _ = writeln!(
            out,
            "last reload: {}",
            if reload.ok {
                "applied"
            } else {
                "REFUSED (old configuration still serving)"
            }
        );
        for error in &reload.errors {
            let _ = writeln!(out, "  {error}");
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
    for app in &status.pools {
        let pool = &app.pool;
        let _ = writeln!(
            out,
            "{:<14} {:<12} {:<8} {:<9} {:>5} {:>5} {:>5} {:>6} {:>7} {:>9} {:>7} {:>8} {:>8} {:>7} {:>8}",
            pool.pool,
            app.route,
            app.php_version,
            pool.process_manager,
            pool.total_processes,
            pool.idle_processes,
            pool.active_processes,
            pool.listen_queue,
            format!("{}-{}", pool.min_children, pool.max_children),
            pool.accepted_conn,
            pool.spawns,
            pool.recycles,
            pool.timeouts,
            pool.crashes,
            pool.rejected_queue_full + pool.rejected_queue_timeout,
        );
    }
    for app in &status.pools {
        let processes = app.pool.processes.as_deref().unwrap_or_default();
        if processes.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{} workers:", app.pool.pool);
        if let (Some(pid), Some(starts)) = (app.pool.zygote_pid, app.pool.zygote_starts) {
            let _ = writeln!(
                out,
                "  zygote pid {pid}, RSS {}, PSS {}, started {starts} time{}",
                human_bytes(app.pool.zygote_rss.unwrap_or(0)),
                human_bytes(app.pool.zygote_pss.unwrap_or(0)),
                if starts == 1 { "" } else { "s" }
            );
        }
        let _ = writeln!(
            out,
            "  {:>8} {:<9} {:>8} {:>8} {:>8} {:>7} {:>8}  REQUEST",
            "PID", "STATE", "REQS", "RSS", "PSS", "UP", "START"
        );
        for process in processes {
            let request = match process.request_method.as_str() {
                "-" | "" => String::new(),
                method => format!(
                    "{method} {} ({} ms)",
                    process.request_uri,
                    process.request_duration / 1000
                ),
            };
            let _ = writeln!(
                out,
                "  {:>8} {:<9} {:>8} {:>8} {:>8} {:>7} {:>8}  {request}",
                process.pid,
                process.state,
                process.requests,
                human_bytes(process.rss),
                human_bytes(process.pss),
                human_secs(process.start_since),
                format!("{:.1}ms", process.start_duration as f64 / 1000.0),
            );
        }
    }
    render_http_apps(&mut out, &status.http_apps);
    out
}

/// The `type: http` apps: one line each, then their instances.
fn render_http_apps(out: &mut String, apps: &[crate::status::HttpAppPage]) {
    if apps.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n{:<14} {:<12} {:>10} {:>6} {:>6}  LAST BUILD",
        "HTTP APP", "ROUTE", "GENERATION", "SWAPS", "SWAP"
    );
    for app in apps {
        let build = match &app.last_build {
            None => "-".to_owned(),
            Some(build) if build.ok => format!("ok ({} ms)", build.duration_ms),
            Some(_) => "FAILED (old instances still serving)".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<14} {:<12} {:>10} {:>6} {:>6}  {build}",
            app.name,
            app.route,
            app.generation,
            app.swaps,
            format!("{}ms", app.last_swap_ms),
        );
        if let Some(error) = &app.last_error {
            for line in error.lines().take(20) {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    for app in apps {
        let _ = writeln!(out, "\n{} instances:", app.name);
        let _ = writeln!(
            out,
            "  {:>3} {:>8} {:<10} {:>6} {:>8} {:>9} {:>9}",
            "#", "PID", "STATE", "PORT", "RESTARTS", "IN-FLIGHT", "REQUESTS"
        );
        for instance in &app.instances {
            let _ = writeln!(
                out,
                "  {:>3} {:>8} {:<10} {:>6} {:>8} {:>9} {:>9}",
                instance.index,
                instance.pid,
                instance.state,
                instance.port,
                instance.restarts,
                instance.in_flight,
                instance.requests,
            );
        }
    }
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
    // A reload that is running now (the file watcher's, say) read the
    // files before this was asked: wait for one that begins after it.
    let before = admin
        .as_ref()
        .and_then(|addr| server_page(addr).ok())
        .map(|s| s.last_reload.seq.max(s.last_reload.begun));
    if let Err(errno) = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    ) {
        bail!("cannot signal pid {pid}: {errno}");
    }
    let (Some(addr), Some(before)) = (admin, before) else {
        return Ok(format!("reload requested (SIGHUP to pid {pid})"));
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let Ok(status) = server_page(&addr) else {
            continue;
        };
        let reload = status.last_reload;
        if reload.seq > before {
            if reload.ok {
                return Ok(format!("configuration reloaded (pid {pid})"));
            }
            bail!(
                "reload refused; the running configuration stays:\n{}",
                reload.errors.join("\n")
            );
        }
    }
    bail!("no reload reported within 60 s (pid {pid})")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::status::{AppPage, PoolPage, ReloadPage};

    fn server_page() -> ServerPage {
        let now = UNIX_EPOCH + Duration::from_secs(crate::status::tests::STARTED + 90);
        ServerPage {
            version: "1.2.3".into(),
            phase: "running".into(),
            uptime: 3700,
            pid: 321,
            config: "/srv/site/config/server.yaml".into(),
            last_reload: ReloadPage {
                seq: 2,
                ok: false,
                at: 1_795_654_000,
                errors: vec!["workers/app/config/worker.yaml:3: php.pool: unknown key".into()],
                begun: 2,
            },
            pools: vec![AppPage {
                pool: PoolPage::new(&crate::status::tests::sample_pool(), true, now),
                route: "/blog".into(),
                php_version: "8.4".into(),
            }],
            http_apps: Vec::new(),
        }
    }

    /// What the admin endpoint sends is what `tqserver status` reads.
    #[test]
    fn server_page_round_trips_through_json() {
        let page = server_page();
        let body = crate::status::json(&page);
        assert!(
            body.starts_with(
                r#"{"version":"1.2.3","phase":"running","uptime":3700,"pid":321,"config":"/srv/site/config/server.yaml","last reload":{"seq":2,"ok":false,"at":1795654000,"errors":["#
            ),
            "{body}"
        );
        // The app's route and PHP version follow the pool's fields.
        assert!(
            body.ends_with(
                r#""rss":26214400,"pss":9437184,"start duration":2500}],"route":"/blog","php version":"8.4"}]}"#
            ),
            "{body}"
        );
        let read: ServerPage = serde_json::from_str(&body).unwrap();
        assert_eq!(read, page);
    }

    #[test]
    fn an_older_server_s_page_reads_with_defaults() {
        let read: ServerPage =
            serde_json::from_str(r#"{"version":"0.9","pools":[{"pool":"app","extra":1}]}"#)
                .unwrap();
        assert_eq!(read.pools[0].pool.pool, "app");
        assert!(read.last_reload.ok);
        assert!(read.pools[0].pool.processes.is_none());
    }

    #[test]
    fn render_shows_http_apps_their_instances_and_a_failed_build() {
        use crate::status::{BuildPage, HttpAppPage, InstancePage};
        let mut page = server_page();
        page.http_apps = vec![HttpAppPage {
            name: "api".into(),
            route: "/api".into(),
            generation: 3,
            swaps: 2,
            last_swap_ms: 812,
            last_build: Some(BuildPage {
                ok: false,
                output: "./main.go:3: undefined: x".into(),
                ..BuildPage::default()
            }),
            last_error: Some("build failed:\n./main.go:3: undefined: x".into()),
            instances: vec![InstancePage {
                index: 0,
                generation: 3,
                state: "healthy".into(),
                pid: 4242,
                port: 20001,
                restarts: 1,
                in_flight: 2,
                requests: 99,
            }],
        }];
        let text = render(&page);
        let row = text.lines().find(|l| l.starts_with("api ")).unwrap();
        assert!(
            row.contains("FAILED (old instances still serving)"),
            "{row}"
        );
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns[..5], ["api", "/api", "3", "2", "812ms"]);
        assert!(text.contains("\n  ./main.go:3: undefined: x\n"), "{text}");
        assert!(text.contains("\napi instances:\n"), "{text}");
        let instance = text.lines().find(|l| l.contains(" healthy ")).unwrap();
        let columns: Vec<&str> = instance.split_whitespace().collect();
        assert_eq!(columns, ["0", "4242", "healthy", "20001", "1", "2", "99"]);
        // Read back from JSON, as `tqserver status` does.
        let json = serde_json::to_string(&page).unwrap();
        let read: ServerPage = serde_json::from_str(&json).unwrap();
        assert_eq!(read.http_apps, page.http_apps);
    }

    #[test]
    fn render_shows_pools_workers_and_a_refused_reload() {
        let text = render(&server_page());
        assert!(
            text.starts_with(
                "tqserver 1.2.3  pid 321  running  up 1h1m  config /srv/site/config/server.yaml\n"
            ),
            "{text}"
        );
        assert!(text.contains("last reload: REFUSED"), "{text}");
        assert!(
            text.contains("\n  workers/app/config/worker.yaml:3:"),
            "{text}"
        );
        let row = text.lines().find(|l| l.starts_with("app ")).unwrap();
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            columns,
            [
                "app", "/blog", "8.4", "dynamic", "2", "1", "1", "3", "2-5", "11", "3", "2", "1",
                "1", "3"
            ]
        );
        assert!(text.contains("\napp workers:\n"), "{text}");
        let running = text.lines().find(|l| l.contains(" Running ")).unwrap();
        assert!(running.ends_with("POST /a?<b> (1 ms)"), "{running}");
        let columns: Vec<&str> = running.split_whitespace().collect();
        assert_eq!(columns[..5], ["4002", "Running", "7", "25.0M", "9.0M"]);
        assert!(!text.contains("zygote"), "{text}");

        let mut page = server_page();
        page.pools[0].pool.zygote_pid = Some(4000);
        page.pools[0].pool.zygote_starts = Some(1);
        page.pools[0].pool.zygote_pss = Some(30 << 20);
        let text = render(&page);
        assert!(
            text.contains("\napp workers:\n  zygote pid 4000, RSS 0K, PSS 30.0M, started 1 time\n"),
            "{text}"
        );
        assert!(running.contains(" 25.0M "), "{running}");
        let idle = text.lines().find(|l| l.contains(" Idle ")).unwrap();
        assert!(idle.ends_with("GET /ok.php (2 ms)"), "{idle}");
    }
}
