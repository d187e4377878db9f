//! Observability: metrics after a known workload, under saturation, for
//! timeouts and crashes; promtool; the php-fpm compatible status page in every
//! format (and in headless Chromium); health and readiness; the slow log, the
//! access log, STDERR relay; `tqserver status`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{BIN, Conn, Server, Site, holds_within, wait_until};
use nix::sys::signal::Signal;

fn site(pool: &str) -> Site {
    Site::new()
        .with_admin()
        .worker("app", &format!("path: /\nphp:\n  pool:\n{pool}"))
        .file("app", "ok.php", "<?php echo 'ok';")
        .file(
            "app",
            "index.php",
            "<?php http_response_code(404); echo 'no such page';",
        )
        .file(
            "app",
            "sleep.php",
            "<?php usleep((int)($_GET['ms'] ?? 100) * 1000); echo 'slept';",
        )
        .file(
            "app",
            "loop.php",
            "<?php set_time_limit(0); while (true) {}",
        )
        .file("app", "crash.php", "<?php posix_kill(getmypid(), 9);")
        .file(
            "app",
            "long-stderr.php",
            "<?php error_log('BEGIN' . str_repeat('x', 10240) . 'END'); echo 'logged';",
        )
}

fn background_get(server: &Server, path: &str) -> std::thread::JoinHandle<u16> {
    let port = server.port();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let mut conn = Conn::open(port);
        conn.send(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        conn.read_response(false).status
    })
}

#[test]
fn request_counters_and_histograms_match_a_known_workload() {
    let server = site("    manager: static\n    max_workers: 2\n").start();
    for _ in 0..8 {
        assert_eq!(server.get("/ok.php").status, 200);
    }
    for _ in 0..2 {
        assert_eq!(server.get("/missing/page").status, 404);
    }
    assert_eq!(
        server.metric("tqserver_requests_total{worker=\"app\",code=\"200\"}"),
        Some(8.0)
    );
    assert_eq!(
        server.metric("tqserver_requests_total{worker=\"app\",code=\"404\"}"),
        Some(2.0)
    );
    assert_eq!(
        server.metric("tqserver_request_duration_seconds_count{worker=\"app\"}"),
        Some(10.0)
    );
    assert_eq!(
        server.metric("tqserver_pool_requests_total{worker=\"app\"}"),
        Some(10.0)
    );
    assert_eq!(
        server.metric("tqserver_workers{worker=\"app\",state=\"idle\"}"),
        Some(2.0)
    );
    assert_eq!(
        server.metric("tqserver_workers_max{worker=\"app\"}"),
        Some(2.0)
    );
    assert!(
        server
            .metric("tqserver_worker_rss_bytes{worker=\"app\"}")
            .unwrap()
            > 1e6
    );
    assert!(
        server
            .metric("tqserver_process_resident_memory_bytes")
            .unwrap()
            > 1e6
    );
    let text = server.admin("/metrics").text();
    assert!(text.contains("tqserver_build_info{version=\""), "{text}");
    assert!(text.contains("php_version=\"8."), "{text}");
}

#[test]
fn promtool_accepts_the_metrics() {
    let server = site("    manager: dynamic\n    min_workers: 1\n    max_workers: 3\n").start();
    server.get("/ok.php");
    server.get("/nothing-here");
    for (accept, label) in [
        ("", "prometheus"),
        ("application/openmetrics-text; version=1.0.0", "openmetrics"),
    ] {
        let mut conn = Conn::open(server.site.admin_port.unwrap());
        conn.send(
            format!(
                "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        let response = conn.read_response(false);
        assert_eq!(response.status, 200);
        if label == "openmetrics" {
            // promtool reads the Prometheus format; OpenMetrics differs in
            // naming (counters' HELP lines drop _total), so check its shape.
            assert!(
                response
                    .header("content-type")
                    .unwrap()
                    .starts_with("application/openmetrics-text")
            );
            let text = response.text();
            assert!(text.trim_end().ends_with("# EOF"));
            assert!(text.contains("# TYPE tqserver_requests counter"), "{text}");
            continue;
        }
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus)");
        use std::io::Write;
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(&response.body)
            .unwrap();
        let output = promtool.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{label}: promtool says:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn queue_length_and_rejections_move_under_saturation() {
    let server = site(
        "    manager: static\n    max_workers: 1\n    max_queue: 3\n    queue_timeout: 800ms\n",
    )
    .start();
    let busy: Vec<_> = (0..4)
        .map(|_| background_get(&server, "/sleep.php?ms=1500"))
        .collect();
    // One runs, three wait (within queue_timeout: the wait ends at once).
    wait_until("three queued requests", Duration::from_secs(5), || {
        server.metric("tqserver_queue_length{worker=\"app\"}") == Some(3.0)
    });
    // The queue is full: refused at once.
    assert_eq!(server.get("/ok.php").status, 503);
    let statuses: Vec<u16> = busy.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        server.metric("tqserver_rejections_total{worker=\"app\",reason=\"queue_full\"}"),
        Some(1.0)
    );
    assert_eq!(
        server.metric("tqserver_rejections_total{worker=\"app\",reason=\"queue_timeout\"}"),
        Some(3.0)
    );
    assert_eq!(
        server.metric("tqserver_queue_length{worker=\"app\"}"),
        Some(0.0)
    );
    assert_eq!(
        server.metric("tqserver_queue_length_max{worker=\"app\"}"),
        Some(3.0)
    );
    assert_eq!(
        server.metric("tqserver_max_workers_reached_total{worker=\"app\"}"),
        Some(1.0)
    );
    assert_eq!(
        server.metric("tqserver_requests_total{worker=\"app\",code=\"503\"}"),
        Some(4.0)
    );
    assert!(
        server
            .metric("tqserver_queue_wait_seconds_count{worker=\"app\"}")
            .unwrap()
            >= 1.0
    );
}

#[test]
fn timeouts_and_crashes_are_counted() {
    let server =
        site("    manager: static\n    max_workers: 2\n    request_timeout: 500ms\n    kill_grace: 200ms\n").start();
    assert_eq!(server.get("/loop.php").status, 504);
    assert_eq!(server.get("/crash.php").status, 502);
    let deadline = Instant::now() + Duration::from_secs(5);
    let left = || deadline.saturating_duration_since(Instant::now());
    assert!(
        holds_within(left(), || server
            .metric("tqserver_worker_crashes_total{worker=\"app\"}")
            == Some(1.0)),
        "{}",
        server.admin("/metrics").text()
    );
    assert_eq!(
        server.metric("tqserver_worker_timeouts_total{worker=\"app\"}"),
        Some(1.0)
    );
    assert_eq!(
        server.metric("tqserver_requests_total{worker=\"app\",code=\"504\"}"),
        Some(1.0)
    );
    assert_eq!(
        server.metric("tqserver_requests_total{worker=\"app\",code=\"502\"}"),
        Some(1.0)
    );
    // Both replaced. A php-cgi is a child before the pool counts its spawn
    // (when it accepts), so wait for the counter too.
    assert!(
        holds_within(left(), || server.worker_pids().len() == 2
            && server.metric("tqserver_worker_spawns_total{worker=\"app\"}")
                >= Some(4.0)),
        "{:?}\n{}",
        server.worker_pids(),
        server.admin("/metrics").text()
    );
}

#[test]
fn status_json_full_has_every_php_fpm_field() {
    let server = site(
        "    manager: dynamic\n    min_workers: 2\n    max_workers: 5\n    start_workers: 2\n",
    )
    .start();
    for _ in 0..3 {
        server.get("/ok.php");
    }
    let response = server.admin("/status/app?json&full");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let status: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(status["pool"], "app");
    assert_eq!(status["process manager"], "dynamic");
    for field in [
        "start time",
        "start since",
        "accepted conn",
        "listen queue",
        "max listen queue",
        "listen queue len",
        "idle processes",
        "active processes",
        "total processes",
        "max active processes",
        "max children reached",
        "slow requests",
        "max children",
        "min children",
    ] {
        assert!(status[field].is_u64(), "{field}: {}", status[field]);
    }
    assert_eq!(status["accepted conn"], 3);
    assert_eq!(status["total processes"], 2);
    assert_eq!(status["max children"], 5);
    assert_eq!(status["min children"], 2);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let start = status["start time"].as_u64().unwrap();
    assert!(start <= now && now - start < 60, "start time {start}");
    let processes = status["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 2);
    for process in processes {
        for field in [
            "pid",
            "start time",
            "start since",
            "requests",
            "request duration",
            "content length",
            "last request memory",
            "rss",
        ] {
            assert!(process[field].is_u64(), "{field}: {process}");
        }
        for field in ["state", "request method", "request uri", "user", "script"] {
            assert!(process[field].is_string(), "{field}: {process}");
        }
        assert!(process["last request cpu"].is_number());
        assert!(process["rss"].as_u64().unwrap() > 1_000_000);
        assert_eq!(process["state"], "Idle");
    }
    let served: u64 = processes
        .iter()
        .map(|p| p["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 3);
    let busiest = processes
        .iter()
        .find(|p| p["requests"].as_u64().unwrap() > 0)
        .unwrap();
    assert_eq!(busiest["request method"], "GET");
    assert_eq!(busiest["request uri"], "/ok.php");
    assert!(busiest["script"].as_str().unwrap().ends_with("/ok.php"));

    // The other formats.
    let text = server.admin("/status/app").text();
    assert!(text.starts_with("pool:                 app\n"), "{text}");
    assert!(text.contains("accepted conn:        3"), "{text}");
    let full = server.admin("/status/app?full").text();
    assert_eq!(full.matches("************************").count(), 2);
    let xml = server.admin("/status/app?xml").text();
    assert!(xml.contains("<pool>app</pool>"));
    let om = server.admin("/status/app?openmetrics").text();
    assert!(om.contains("phpfpm_accepted_connections_total 3"), "{om}");
    assert!(om.trim_end().ends_with("# EOF"));
    assert_eq!(server.admin("/status/nope").status, 404);
    // All pools at once.
    let all: serde_json::Value = serde_json::from_slice(&server.admin("/status").body).unwrap();
    assert_eq!(all["phase"], "running");
    assert_eq!(all["pools"][0]["pool"], "app");
    assert_eq!(all["pools"][0]["route"], "/");
}

/// The only process of the pool, once it is idle, from `?json&full`.
fn idle_process(server: &Server) -> serde_json::Value {
    let mut process = serde_json::Value::Null;
    let idle = holds_within(Duration::from_secs(5), || {
        let status: serde_json::Value =
            serde_json::from_slice(&server.admin("/status/app?json&full").body).unwrap();
        process = status["processes"][0].clone();
        process["state"] == "Idle"
    });
    assert!(idle, "never idle: {process}");
    process
}

#[test]
fn last_request_cpu_and_memory_are_measured() {
    let server = site("    manager: static\n    max_workers: 1\n")
        .file(
            "app",
            "burn.php",
            "<?php $s = str_repeat('x', 20 << 20); $t = microtime(true); \
             while (microtime(true) - $t < 0.2) { $s[mt_rand(0, 1000)] = 'y'; } echo strlen($s);",
        )
        .start();
    assert_eq!(server.get("/burn.php").text(), (20 << 20).to_string());
    let burn = idle_process(&server);
    let cpu = burn["last request cpu"].as_f64().unwrap();
    let memory = burn["last request memory"].as_u64().unwrap();
    // A busy loop for most of the request's wall time (near 100% on an
    // idle machine; a loaded one gives it less).
    assert!(cpu > 5.0 && cpu < 150.0, "cpu {cpu}%: {burn}");
    assert!(memory >= 20 << 20, "memory {memory}: {burn}");

    // Measured per request: a light one after it peaks far lower. PHP
    // answers before it frees the request's memory; wait until it has.
    wait_until("PHP to free the 20 MB", Duration::from_secs(5), || {
        idle_process(&server)["rss"].as_u64().unwrap() + (15 << 20) <= memory
    });
    assert_eq!(server.get("/ok.php").text(), "ok");
    let light = idle_process(&server);
    let light_memory = light["last request memory"].as_u64().unwrap();
    assert!(light_memory > 0, "{light}");
    assert!(
        light_memory + (15 << 20) < memory,
        "light request {light_memory} vs {memory}"
    );
    let text = server.admin("/status/app?full").text();
    assert!(
        text.lines()
            .any(|l| l.starts_with("last request memory:") && !l.ends_with(" 0")),
        "{text}"
    );
}

#[test]
fn html_status_renders_in_headless_chromium() {
    let server = site("    manager: static\n    max_workers: 3\n").start();
    server.get("/ok.php");
    let html = server.admin("/status/app?html&full");
    assert_eq!(html.status, 200);
    assert!(html.text().contains("http-equiv=\"refresh\""));
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromium not found: install the Debian package chromium (scripts/deps.sh test)");
    let url = format!(
        "http://127.0.0.1:{}/status/app?html&full",
        server.site.admin_port.unwrap()
    );
    let profile = tempfile::tempdir().unwrap();
    let screenshot = std::env::temp_dir().join("tqserver-status.png");
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ];
    let dom = Command::new(chromium)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // Less than the page's 2 s refresh, so the DOM is of the first load.
        .args(["--virtual-time-budget=500", "--dump-dom"])
        .arg(&url)
        .output()
        .expect("run chromium");
    let errors = String::from_utf8_lossy(&dom.stderr).into_owned();
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("<h1>Pool app</h1>"), "{dom}\n{errors}");
    assert!(dom.contains("Processes"), "{dom}");
    assert_eq!(dom.matches("<tr class=\"Idle\">").count(), 3, "{dom}");
    let shot = Command::new(chromium)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg("--window-size=1200,700")
        .arg(&url)
        .output()
        .expect("run chromium");
    assert!(shot.status.success() || screenshot.exists());
    assert!(
        std::fs::metadata(&screenshot)
            .map(|m| m.len() > 1000)
            .unwrap_or(false)
    );
}

#[test]
fn health_and_readiness() {
    let mut server = site("    manager: static\n    max_workers: 1\n").start();
    assert_eq!(server.admin("/healthz").status, 200);
    let ready = server.admin("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());
    // Draining: a request keeps the server in its stop phase.
    let slow = background_get(&server, "/sleep.php?ms=1500");
    server.wait_busy("app", 1);
    server.signal(Signal::SIGTERM);
    let mut draining = server.admin("/readyz");
    wait_until("/readyz to fail", Duration::from_secs(1), || {
        draining = server.admin("/readyz");
        draining.status == 503
    });
    assert!(draining.text().contains("stopping"), "{}", draining.text());
    assert_eq!(slow.join().unwrap(), 200);
    assert!(
        server
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
}

#[test]
fn slow_requests_are_logged_and_quick_ones_are_not() {
    let server = site("    manager: static\n    max_workers: 2\n")
        .server_yaml("logging:\n  slow_log:\n    threshold: 1s\n")
        .start();
    assert_eq!(server.get("/sleep.php?ms=1500").status, 200);
    for _ in 0..5 {
        assert_eq!(server.get("/ok.php").status, 200);
    }
    assert!(
        server.wait_for_log("slow request", Duration::from_secs(3)),
        "{}",
        server.log()
    );
    let log = server.log();
    let slow: Vec<_> = log.lines().filter(|l| l.contains("slow request")).collect();
    assert_eq!(slow.len(), 1, "{log}");
    let line = slow[0];
    for part in [
        "worker=app",
        "pid=",
        "method=GET",
        "uri=/sleep.php?ms=1500",
        "script=",
        "sleep.php",
        "status=200",
        "duration_ms=",
    ] {
        assert!(line.contains(part), "{part} missing in {line}");
    }
    assert_eq!(
        server.metric("tqserver_slow_requests_total{worker=\"app\"}"),
        Some(1.0)
    );
    let status: serde_json::Value =
        serde_json::from_slice(&server.admin("/status/app?json").body).unwrap();
    assert_eq!(status["slow requests"], 1);
}

#[test]
fn each_app_may_have_its_own_slow_log() {
    let sleep = "<?php usleep((int)$_GET['ms'] * 1000); echo 'slept';";
    let pool = "php:\n  pool:\n    manager: static\n    max_workers: 1\n";
    let server = Site::new()
        .with_admin()
        .server_yaml("logging:\n  slow_log:\n    threshold: 300ms\n")
        .worker(
            "a",
            &format!("path: /a\n{pool}slow_log:\n  threshold: 100ms\n  file: a-slow.log\n"),
        )
        .worker("b", &format!("path: /b\n{pool}"))
        .worker(
            "c",
            &format!("path: /c\n{pool}slow_log:\n  enabled: false\n"),
        )
        .file("a", "sleep.php", sleep)
        .file("b", "sleep.php", sleep)
        .file("c", "sleep.php", sleep)
        .start();
    for path in [
        "/a/sleep.php?ms=200",
        "/b/sleep.php?ms=200",
        "/b/sleep.php?ms=400",
        "/c/sleep.php?ms=400",
    ] {
        assert_eq!(server.get(path).status, 200, "{path}");
    }
    let own = server.site.root().join("workers/a/a-slow.log");
    wait_until(
        &format!("a slow request in {}", own.display()),
        Duration::from_secs(5),
        || std::fs::read_to_string(&own).is_ok_and(|t| t.contains("slow request")),
    );
    let own = std::fs::read_to_string(&own).unwrap();
    assert!(
        own.contains("worker=a ") && own.contains("uri=/a/sleep.php?ms=200"),
        "{own}"
    );
    assert!(
        server.wait_for_log("uri=/b/sleep.php?ms=400", Duration::from_secs(3)),
        "{}",
        server.log()
    );
    let log = server.log();
    let slow: Vec<_> = log.lines().filter(|l| l.contains("slow request")).collect();
    assert_eq!(slow.len(), 1, "only b's 400 ms request: {log}");
    for (app, count) in [("a", 1.0), ("b", 1.0), ("c", 0.0)] {
        assert_eq!(
            server.metric(&format!("tqserver_slow_requests_total{{worker=\"{app}\"}}")),
            Some(count),
            "{app}"
        );
    }
}

#[test]
fn a_10_kb_stderr_line_is_logged_whole() {
    let server = site("    manager: static\n    max_workers: 1\n").start();
    assert_eq!(server.get("/long-stderr.php").text(), "logged");
    assert!(server.wait_for_log("END", Duration::from_secs(3)));
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("BEGIN"))
        .expect("stderr line");
    assert!(
        line.contains(&format!("BEGIN{}END", "x".repeat(10240))),
        "line was cut: {} bytes",
        line.len()
    );
    assert!(
        line.contains("worker=app") && line.contains("pid="),
        "{line}"
    );
}

#[test]
fn access_log_in_combined_and_json_formats() {
    let site = site("    manager: static\n    max_workers: 1\n");
    let combined = site.root().join("logs/access.log");
    let json = site.root().join("logs/app-access.json");
    let site = site.server_yaml(&format!(
        "logging:\n  access_log:\n    file: {}\n",
        combined.display()
    ));
    let server = site.start();
    server.request("GET /ok.php?x=1 HTTP/1.1\r\nHost: x\r\nReferer: http://ref.example/\r\nUser-Agent: tester/1.0\r\nConnection: close\r\n\r\n");
    server.get("/missing");
    let mut text = String::new();
    holds_within(Duration::from_secs(3), || {
        text = std::fs::read_to_string(&combined).unwrap_or_default();
        text.lines().count() >= 2
    });
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("127.0.0.1 - - ["), "{}", lines[0]);
    assert!(
        lines[0]
            .contains("\"GET /ok.php?x=1 HTTP/1.1\" 200 2 \"http://ref.example/\" \"tester/1.0\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("\"GET /missing HTTP/1.1\" 404 "),
        "{}",
        lines[1]
    );
    drop(server);

    // A worker's own JSON access log.
    let site = self::site("    manager: static\n    max_workers: 1\n");
    site.write(
        "workers/app/config/worker.yaml",
        format!(
            "path: /\nphp:\n  pool:\n    manager: static\n    max_workers: 1\naccess_log:\n  format: json\n  file: {}\n",
            json.display()
        ),
    );
    let server = site.start();
    server.get("/ok.php");
    let mut text = String::new();
    holds_within(Duration::from_secs(3), || {
        text = std::fs::read_to_string(&json).unwrap_or_default();
        !text.is_empty()
    });
    let entry: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(entry["worker"], "app");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["uri"], "/ok.php");
    assert_eq!(entry["bytes"], 2);
    assert!(entry["pid"].as_u64().unwrap() > 0);
    assert!(entry["duration_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn tqserver_status_prints_pools_and_workers() {
    let server = site("    manager: static\n    max_workers: 2\n").start();
    server.get("/ok.php");
    let output = Command::new(BIN)
        .args(["status", "--config"])
        .arg(server.site.config_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("WORKER"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("app "))
        .expect("pool row");
    assert!(row.contains("static"), "{row}");
    assert!(stdout.contains("app workers:"), "{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.contains(" Idle ")).count(),
        2,
        "{stdout}"
    );
}

fn tqserver_cli(args: &[&str], config: &std::path::Path) -> (bool, String) {
    let output = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn two_servers_with_default_admin_settings_each_answer_their_own_status() {
    // No admin section: each server's endpoint is the socket next to its
    // pid file, so two sites on one machine do not collide.
    let alpha = Site::new()
        .default_admin()
        .worker("alpha", "path: /\n")
        .file("alpha", "index.php", "<?php echo 'alpha';")
        .start();
    let beta = Site::new()
        .default_admin()
        .worker("beta", "path: /\n")
        .file("beta", "index.php", "<?php echo 'beta';")
        .start();
    assert_eq!(alpha.get("/").text(), "alpha");
    assert_eq!(beta.get("/").text(), "beta");
    for (server, own, other) in [(&alpha, "alpha", "beta"), (&beta, "beta", "alpha")] {
        let socket = server.site.root().join("tqserver.sock");
        assert!(socket.exists(), "{}", server.log());
        let (ok, text) = tqserver_cli(&["status"], &server.site.config_path());
        assert!(ok, "{text}");
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{own} "))),
            "{text}"
        );
        assert!(!text.contains(other), "{text}");
        assert!(text.contains(&format!("pid {}", server.pid())), "{text}");
        let (ok, text) = tqserver_cli(&["reload"], &server.site.config_path());
        assert!(ok && text.contains("configuration reloaded"), "{text}");
    }

    // A second server for the same site stops at once, says why, and
    // leaves the first one's pid file and socket alone.
    let pid_file = alpha.site.root().join("tqserver.pid");
    let (ok, text) = tqserver_cli(&["run"], &alpha.site.config_path());
    assert!(!ok, "{text}");
    assert!(text.contains("admin.listen"), "{text}");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        alpha.pid().to_string()
    );
    let (ok, text) = tqserver_cli(&["status"], &alpha.site.config_path());
    assert!(ok, "{text}");
}

#[test]
fn a_taken_admin_port_is_refused_naming_the_key_to_set() {
    let site = Site::new().with_admin().worker("app", "path: /\n").file(
        "app",
        "index.php",
        "<?php echo 1;",
    );
    let taken = std::net::TcpListener::bind(("127.0.0.1", site.admin_port.unwrap())).unwrap();
    let (ok, text) = tqserver_cli(&["run"], &site.config_path());
    assert!(!ok, "{text}");
    assert!(
        text.contains("cannot listen on admin.listen 127.0.0.1:")
            && text.contains(&format!(
                "set admin.listen in {} to a free address",
                site.config_path().display()
            )),
        "{text}"
    );
    drop(taken);
}

#[test]
fn the_server_log_can_be_json() {
    let server = site("    manager: static\n    max_workers: 1\n")
        .server_yaml("logging:\n  format: json\n  slow_log:\n    threshold: 1ms\n")
        .start();
    server.get("/sleep.php?ms=20");
    assert!(server.wait_for_log("slow request", Duration::from_secs(3)));
    let log = server.log();
    let mut parsed = 0;
    for line in log.lines().filter(|l| l.starts_with('{')) {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            entry["timestamp"].is_string() && entry["level"].is_string(),
            "{line}"
        );
        parsed += 1;
        if entry["message"] == "slow request" {
            assert_eq!(entry["worker"], "app");
            assert_eq!(entry["status"], 200);
        }
    }
    assert!(parsed >= 3, "{log}");
}
