//! What php-cgi's per-process OPcache costs on WordPress, measured (not a
//! test: `bench_opcache` is ignored and prints a table for docs/OPCACHE.md).
//!
//! ```text
//! cargo nextest run -p tqserver --features app-tests --test apps \
//!     --run-ignored only -E 'test(bench_opcache)' --no-capture
//! ```
//!
//! php-fpm forks its children from a master that created the OPcache shared
//! memory, so they share compiled scripts. tqserver starts every php-cgi on
//! its own, so each worker has a private OPcache that it fills itself. For
//! each configuration, with the same WordPress site, database and pool size
//! (static, 4 processes) in one run, this measures:
//!
//! - throughput and latency of the front page under load (wrk, concurrency
//!   20, several short rounds, configurations alternating);
//! - memory per worker after the load (RSS and PSS from smaps_rollup);
//! - warm-up: the first requests of a fresh worker, with an empty and with
//!   a filled `opcache.file_cache` (a restart replaces every worker the way a
//!   recycle replaces one);
//! - for reference, workers that do share one OPcache because they are
//!   forked from one master, behind nginx: php-fpm (pm=static) and php-cgi's
//!   own manager (`php-cgi -b` with PHP_FCGI_CHILDREN).
//!
//! Environment: `BENCH_SECONDS` (default 5) per wrk run, `BENCH_ROUNDS`
//! (default 3), `BENCH_VERBOSE=1` prints wrk's whole output.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::browser::Browser;
use crate::html::{json_quote, json_scalar};
use crate::mariadb;
use crate::setup::{Runtime, give_to_workers, run, run_ok};
use crate::support::{children_named, spawn_server};
use crate::wordpress::{Front, WordpressSite, install, login};

const WORKERS: usize = 4;
const CONCURRENCY: usize = 20;

struct Variant {
    name: &'static str,
    /// `php.settings` lines for worker.yaml.
    settings: String,
    /// An `opcache.file_cache` folder, emptied before the first round.
    file_cache: Option<PathBuf>,
}

#[derive(Default)]
struct Sample {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    first_ms: f64,
    second_ms: f64,
    warm_ms: f64,
    rss_kib: u64,
    pss_kib: u64,
    opcache_used_mib: f64,
    cached_scripts: u64,
}

/// A tqserver started by the benchmark itself (the harness's Server owns
/// its Site; here one site is restarted with different settings on the
/// same port, because WordPress keeps its URL with the port in it).
struct Tq {
    child: Child,
}

impl Tq {
    fn start(config: &Path, log: &Path, port: u16) -> Self {
        let child = spawn_server(config, log, &[]);
        let tq = Self { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tqserver did not start:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        tq
    }

    fn worker_pids(&self) -> Vec<u32> {
        children_named(self.child.id(), "php-cgi")
    }
}

impl Drop for Tq {
    fn drop(&mut self) {
        // SIGTERM: a graceful stop, workers included.
        crate::support::stop_child(&mut self.child, Duration::from_secs(15));
    }
}

/// A FastCGI server that forks its workers from one master, so they share
/// the master's OPcache: php-fpm (pm=static) or php-cgi's own manager
/// (`php-cgi -b` with PHP_FCGI_CHILDREN). Behind nginx, for reference.
struct ForkingServer {
    child: Child,
    socket: PathBuf,
    worker_name: &'static str,
}

impl ForkingServer {
    fn php_fpm(dir: &Path) -> Self {
        let socket = dir.join("fpm.sock");
        let config = dir.join("php-fpm.conf");
        std::fs::write(
            &config,
            format!(
                "[global]\npid = {dir}/fpm.pid\nerror_log = {dir}/fpm.log\ndaemonize = no\n\
                 [www]\nuser = www-data\ngroup = www-data\nlisten = {socket}\nlisten.mode = 0666\n\
                 pm = static\npm.max_children = {WORKERS}\ncatch_workers_output = yes\n\
                 php_admin_value[memory_limit] = 256M\n",
                dir = dir.display(),
                socket = socket.display()
            ),
        )
        .expect("write php-fpm.conf");
        let mut command = Command::new("php-fpm8.2");
        command
            .arg("--nodaemonize")
            .arg("--fpm-config")
            .arg(&config);
        Self::start(command, socket, "php-fpm8.2")
    }

    fn php_cgi_children(dir: &Path) -> Self {
        let socket = dir.join("php-cgi.sock");
        let mut command = Command::new("php-cgi");
        command
            .arg("-d")
            .arg("memory_limit=256M")
            .arg("-b")
            .arg(&socket)
            .env_clear()
            .env("PHP_FCGI_CHILDREN", WORKERS.to_string())
            .env("PHP_FCGI_MAX_REQUESTS", "0");
        if crate::setup::is_root() {
            let user = nix::unistd::User::from_name("www-data")
                .ok()
                .flatten()
                .expect("the www-data user");
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        Self::start(command, socket, "php-cgi")
    }

    fn start(mut command: Command, socket: PathBuf, worker_name: &'static str) -> Self {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the hook runs between fork and exec, where only
        // async-signal-safe calls are sound: set_pdeathsig is one prctl
        // call that only sets the child's parent-death signal.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {worker_name}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "{worker_name} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            socket,
            worker_name,
        }
    }

    fn worker_pids(&self) -> Vec<u32> {
        children_named(self.child.id(), self.worker_name)
    }
}

impl Drop for ForkingServer {
    fn drop(&mut self) {
        // Both stop their children on SIGTERM.
        crate::support::stop_child(&mut self.child, Duration::from_secs(10));
    }
}

/// `Rss` and `Pss` (KiB) of a process.
fn memory_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

fn average_memory(pids: &[u32]) -> (u64, u64) {
    assert!(!pids.is_empty(), "no worker processes to measure");
    let (rss, pss) = pids
        .iter()
        .map(|pid| memory_kib(*pid))
        .fold((0, 0), |(r, p), (r2, p2)| (r + r2, p + p2));
    (rss / pids.len() as u64, pss / pids.len() as u64)
}

/// wrk against the front page; returns (requests/s, p50 ms, p99 ms).
fn wrk(port: u16, seconds: u64) -> (f64, f64, f64) {
    let output = run_ok(
        Command::new("wrk")
            .arg("-t2")
            .arg(format!("-c{CONCURRENCY}"))
            .arg(format!("-d{seconds}s"))
            .args(["--timeout", "10s", "--latency"])
            .arg(format!("http://localhost:{port}/")),
        Duration::from_secs(seconds + 60),
    );
    assert!(
        !output.contains("Non-2xx") && !output.contains("Socket errors"),
        "wrk saw errors:\n{output}"
    );
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!("{output}");
    }
    let value = |prefix: &str| -> f64 {
        let line = output
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in wrk's output:\n{output}"));
        let text = line[prefix.len()..].trim();
        let (number, unit) = text
            .find(|c: char| c.is_ascii_alphabetic())
            .map(|at| text.split_at(at))
            .unwrap_or((text, ""));
        let number: f64 = number.trim().parse().expect("a number in wrk's output");
        match unit.trim() {
            "us" => number / 1000.0,
            "s" => number * 1000.0,
            _ => number,
        }
    };
    (value("Requests/sec:"), value("50%"), value("99%"))
}

/// Sequential front-page requests on an idle server: under MRU dispatch
/// they all go to the same (fresh) worker. Returns (first, second, median of
/// the rest) in ms.
fn first_requests(port: u16) -> (f64, f64, f64) {
    let mut browser = Browser::new(port);
    let mut times = Vec::new();
    for _ in 0..8 {
        let start = Instant::now();
        let page = browser.get("/");
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(page.status, 200, "front page: {}", page.status);
        assert!(page.text().contains("Benchmark post 5"), "front page");
    }
    let mut rest = times[2..].to_vec();
    rest.sort_by(f64::total_cmp);
    (times[0], times[1], rest[rest.len() / 2])
}

fn opcache_status(port: u16) -> (f64, u64) {
    let text = Browser::new(port).get("/tq-opcache.php").text();
    let used: f64 = json_scalar(&text, "used_memory")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let scripts = json_scalar(&text, "num_cached_scripts")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (used / 1024.0 / 1024.0, scripts)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[test]
#[ignore = "benchmark for docs/OPCACHE.md: --run-ignored only -E 'test(bench_opcache)'"]
fn bench_opcache() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let db = mariadb::shared().create_database("wp_bench");
    let wordpress = WordpressSite::new("/", &db, WORKERS, None, Runtime::Cgi);
    let root = wordpress.site.root().to_path_buf();
    let config = wordpress.site.config_path();
    let port = wordpress.site.port;
    let docroot = wordpress.docroot.clone();
    std::fs::write(
        docroot.join("tq-opcache.php"),
        "<?php $s = opcache_get_status(false); echo json_encode(['used_memory' => $s['memory_usage']['used_memory'] ?? 0, 'num_cached_scripts' => $s['opcache_statistics']['num_cached_scripts'] ?? 0]);",
    )
    .expect("write tq-opcache.php");
    crate::setup::make_readable(&docroot);
    let log = root.join("bench.log");

    let cache_dir = |name: &str| {
        let dir = root.join("opcache").join(name);
        std::fs::create_dir_all(&dir).expect("create a file cache folder");
        give_to_workers(&root.join("opcache"));
        dir
    };
    let file_cache = cache_dir("file");
    let file_cache_only = cache_dir("only");
    let variants = [
        Variant {
            name: "opcache off",
            settings: "    opcache.enable: 0\n".into(),
            file_cache: None,
        },
        Variant {
            name: "opcache on (php default)",
            settings: "    opcache.enable: 1\n".into(),
            file_cache: None,
        },
        Variant {
            name: "opcache on + file_cache",
            settings: format!(
                "    opcache.enable: 1\n    opcache.file_cache: {}\n",
                file_cache.display()
            ),
            file_cache: Some(file_cache),
        },
        Variant {
            name: "file_cache_only",
            settings: format!(
                "    opcache.enable: 1\n    opcache.file_cache: {}\n    opcache.file_cache_only: 1\n",
                file_cache_only.display()
            ),
            file_cache: Some(file_cache_only),
        },
    ];
    let write_yaml = |settings: &str| {
        std::fs::write(
            root.join("workers/wordpress/config/worker.yaml"),
            format!(
                "path: /\nphp:\n  settings:\n    memory_limit: 256M\n{settings}  pool:\n    manager: static\n    max_workers: {WORKERS}\n"
            ),
        )
        .expect("write worker.yaml");
    };

    // Install, with a few posts so the front page lists something.
    write_yaml("");
    {
        let _tq = Tq::start(&config, &log, port);
        let front = Front::new(port, "/");
        install(&front, "OPcache bench");
        let mut browser = login(&front);
        let nonce = browser
            .get("/wp-admin/admin-ajax.php?action=rest-nonce")
            .text();
        for i in 1..=5 {
            let body = "<!-- wp:paragraph --><p>Lorem ipsum dolor sit amet, consectetur adipiscing elit. </p><!-- /wp:paragraph -->".repeat(8);
            let json = format!(
                "{{\"title\":\"Benchmark post {i}\",\"content\":{},\"status\":\"publish\"}}",
                json_quote(&body)
            );
            let response = browser.post_json(
                "/wp-json/wp/v2/posts",
                &[("X-WP-Nonce", nonce.trim())],
                &json,
            );
            assert_eq!(
                response.status,
                201,
                "{}",
                crate::html::short(&response.text())
            );
        }
    }

    // The references: workers forked from one master share its OPcache.
    // They stay up, idle, while tqserver is measured; the site's URL moves to
    // their nginx's port while they are.
    let set_url = |port: u16| {
        mariadb::shared().query(&format!(
            "UPDATE `{}`.wp_options SET option_value = 'http://localhost:{port}' WHERE option_name IN ('siteurl', 'home')",
            db.name
        ));
    };
    let mut references = Vec::new();
    for name in [
        "nginx + php-fpm (pm=static)",
        "nginx + php-cgi -b, PHP_FCGI_CHILDREN",
    ] {
        let dir = root.join(name.split_whitespace().nth(2).unwrap_or("ref"));
        std::fs::create_dir_all(&dir).expect("create a reference folder");
        give_to_workers(&dir);
        let server = if name.contains("fpm") {
            ForkingServer::php_fpm(&dir)
        } else {
            ForkingServer::php_cgi_children(&dir)
        };
        let nginx = crate::nginx::php_site(
            &docroot,
            "/",
            &format!("unix:{}", server.socket.display()),
            false,
        );
        references.push((name, server, nginx, Vec::<Sample>::new()));
    }

    // Rounds: every configuration once per round, in turn, so that the
    // machine's other load spreads over all of them.
    let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (index, variant) in variants.iter().enumerate() {
            if round == 0
                && let Some(dir) = &variant.file_cache
            {
                let _ = std::fs::remove_dir_all(dir);
                std::fs::create_dir_all(dir).expect("recreate the file cache");
                give_to_workers(dir);
            }
            write_yaml(&variant.settings);
            let tq = Tq::start(&config, &log, port);
            let mut sample = Sample::default();
            (sample.first_ms, sample.second_ms, sample.warm_ms) = first_requests(port);
            // Every worker compiles WordPress once; not part of the numbers.
            wrk(port, 2);
            (sample.requests_per_second, sample.p50_ms, sample.p99_ms) = wrk(port, seconds);
            (sample.rss_kib, sample.pss_kib) = average_memory(&tq.worker_pids());
            (sample.opcache_used_mib, sample.cached_scripts) = opcache_status(port);
            eprintln!(
                "round {round} {:<38} {:>7.1} req/s p50 {:>6.1} ms p99 {:>6.1} ms | first {:>6.1} ms second {:>6.1} ms warm {:>6.1} ms | RSS {:>6} KiB PSS {:>6} KiB | opcache {:.1} MiB, {} scripts",
                variant.name,
                sample.requests_per_second,
                sample.p50_ms,
                sample.p99_ms,
                sample.first_ms,
                sample.second_ms,
                sample.warm_ms,
                sample.rss_kib,
                sample.pss_kib,
                sample.opcache_used_mib,
                sample.cached_scripts
            );
            samples[index].push(sample);
        }
        for (name, server, nginx, reference) in &mut references {
            set_url(nginx.port);
            let page = Browser::new(nginx.port).get("/");
            assert_eq!(page.status, 200, "{name}: front page");
            assert!(
                page.text().contains("Benchmark post 5"),
                "{name}: front page"
            );
            let mut sample = Sample::default();
            wrk(nginx.port, 2);
            (sample.requests_per_second, sample.p50_ms, sample.p99_ms) = wrk(nginx.port, seconds);
            (sample.rss_kib, sample.pss_kib) = average_memory(&server.worker_pids());
            (sample.opcache_used_mib, sample.cached_scripts) = opcache_status(nginx.port);
            eprintln!(
                "round {round} {name:<38} {:>7.1} req/s p50 {:>6.1} ms p99 {:>6.1} ms | RSS {:>6} KiB PSS {:>6} KiB | opcache {:.1} MiB, {} scripts",
                sample.requests_per_second,
                sample.p50_ms,
                sample.p99_ms,
                sample.rss_kib,
                sample.pss_kib,
                sample.opcache_used_mib,
                sample.cached_scripts
            );
            reference.push(sample);
            set_url(port);
        }
    }

    // The table (medians over the rounds).
    let mut table = String::from(
        "| configuration | req/s | p50 ms | p99 ms | RSS/worker MiB | PSS/worker MiB | OPcache used MiB | 1st request ms (empty cache) | 1st request ms (after restart) | warm request ms |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (variant, samples) in variants.iter().zip(&samples) {
        let pick =
            |f: &dyn Fn(&Sample) -> f64| median(&mut samples.iter().map(f).collect::<Vec<_>>());
        let restarted: Vec<f64> = samples.iter().skip(1).map(|s| s.first_ms).collect();
        table.push_str(&format!(
            "| {} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {:.0} |\n",
            variant.name,
            pick(&|s| s.requests_per_second),
            pick(&|s| s.p50_ms),
            pick(&|s| s.p99_ms),
            pick(&|s| s.rss_kib as f64) / 1024.0,
            pick(&|s| s.pss_kib as f64) / 1024.0,
            pick(&|s| s.opcache_used_mib),
            samples[0].first_ms,
            if restarted.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.0}", median(&mut restarted.clone()))
            },
            pick(&|s| s.warm_ms),
        ));
    }
    for (name, _, _, samples) in &references {
        let pick =
            |f: &dyn Fn(&Sample) -> f64| median(&mut samples.iter().map(f).collect::<Vec<_>>());
        table.push_str(&format!(
            "| {name} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | - | - | - |\n",
            pick(&|s| s.requests_per_second),
            pick(&|s| s.p50_ms),
            pick(&|s| s.p99_ms),
            pick(&|s| s.rss_kib as f64) / 1024.0,
            pick(&|s| s.pss_kib as f64) / 1024.0,
            pick(&|s| s.opcache_used_mib),
        ));
    }
    for variant in &variants {
        if let Some(dir) = &variant.file_cache {
            let du = run(
                Command::new("du").arg("-sk").arg(dir),
                Duration::from_secs(30),
            );
            eprintln!(
                "{}: file cache {} KiB on disk",
                variant.name,
                String::from_utf8_lossy(&du.stdout)
                    .split_whitespace()
                    .next()
                    .unwrap_or("?")
            );
        }
    }
    let php = run(Command::new("php-cgi").arg("-v"), Duration::from_secs(10));
    eprintln!(
        "\n{WORKERS} PHP processes, wrk -t2 -c{CONCURRENCY} -d{seconds}s, {rounds} rounds (medians), {}\n\n{table}",
        String::from_utf8_lossy(&php.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
}
