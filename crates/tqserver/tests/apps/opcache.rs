//! What php-cgi's per-process OPcache costs on WordPress, and what the
//! embed runtime's forked workers gain, measured (not a test:
//! `bench_opcache` is ignored and prints tables for docs/OPCACHE.md).
//!
//! ```text
//! cargo build --release -p tq-php-runtime
//! cargo nextest run --release -p tqserver --features app-tests --test apps \
//!     --run-ignored only -E 'test(bench_opcache)' --no-capture
//! ```
//!
//! (`--release` measures release builds of tqserver and tqserver-php; without
//! it, the debug builds the tests use.)
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
//! - the same for `php.runtime: embed`, whose workers tqserver-php forks
//!   from a zygote that started PHP once, so they share its OPcache;
//! - for reference, workers that do share one OPcache because they are
//!   forked from one master, behind nginx: php-fpm (pm=static) and php-cgi's
//!   own manager (`php-cgi -b` with PHP_FCGI_CHILDREN).
//!
//! Then, on a generated app of 1,500 small classes (an autoloader loads
//! all of them on every request), the same pool of each kind: throughput,
//! and memory per worker after warm requests.
//!
//! Memory per worker is the average over the workers; "with master" adds
//! the process they were forked from (the zygote, php-fpm's master, the
//! `php-cgi -b` parent) divided among them, since it holds a share of the
//! memory they have in common.
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
use crate::measure::{CONCURRENCY, cpu_ticks, median, memory_kib, wrk};
use crate::setup::{Runtime, give_to_workers, make_readable, run};
use crate::support::nginx::Nginx;
use crate::support::{Site, children_named, spawn_server};
use crate::wordpress::{Front, WordpressSite, install, login};

const WORKERS: usize = 4;

struct Variant {
    name: &'static str,
    runtime: Runtime,
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
    /// PSS of the process the workers were forked from (0 for none).
    master_pss_kib: u64,
    /// CPU time per request of the PHP processes (workers and master).
    php_cpu_ms: f64,
    /// CPU time per request of the web server in front: tqserver, or nginx.
    front_cpu_ms: f64,
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

    /// The PHP processes: tqserver's php-cgi workers, or the workers forked
    /// from its tqserver-php zygote and the zygote.
    fn php_processes(&self) -> (Vec<u32>, Option<u32>) {
        let php_cgi = children_named(self.child.id(), "php-cgi");
        if !php_cgi.is_empty() {
            return (php_cgi, None);
        }
        let zygote = children_named(self.child.id(), "tqserver-php")
            .first()
            .copied();
        let workers = zygote
            .map(|zygote| children_named(zygote, "tqserver-php"))
            .unwrap_or_default();
        (workers, zygote)
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

    /// The workers and their master.
    fn php_processes(&self) -> (Vec<u32>, Option<u32>) {
        (
            children_named(self.child.id(), self.worker_name),
            Some(self.child.id()),
        )
    }
}

impl Drop for ForkingServer {
    fn drop(&mut self) {
        // Both stop their children on SIGTERM.
        crate::support::stop_child(&mut self.child, Duration::from_secs(10));
    }
}

/// Average RSS and PSS of the workers, and the PSS of their master.
fn memory((workers, master): (Vec<u32>, Option<u32>)) -> (u64, u64, u64) {
    assert_eq!(workers.len(), WORKERS, "worker processes: {workers:?}");
    let (rss, pss) = workers
        .iter()
        .map(|pid| memory_kib(*pid))
        .fold((0, 0), |(r, p), (r2, p2)| (r + r2, p + p2));
    let master_pss = master.map_or(0, |pid| memory_kib(pid).1);
    (
        rss / workers.len() as u64,
        pss / workers.len() as u64,
        master_pss,
    )
}

/// CPU time (user + system) the processes have used so far, in ms.
fn cpu_ms(pids: &[u32]) -> f64 {
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let ticks: u64 = pids.iter().map(|pid| cpu_ticks(*pid)).sum();
    ticks as f64 * 1000.0 / ticks_per_second
}

/// Sequential front-page requests on an idle server: under MRU dispatch
/// they all go to the same (fresh) worker. Returns (first, second, median of
/// the rest) in ms.
fn first_requests(port: u16, expected: &str) -> (f64, f64, f64) {
    let mut browser = Browser::new(port);
    let mut times = Vec::new();
    for _ in 0..8 {
        let start = Instant::now();
        let page = browser.get("/");
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(page.status, 200, "front page: {}", page.status);
        assert!(page.text().contains(expected), "front page");
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
    Runtime::Embed.ensure();
    let db = mariadb::shared().create_database("wp_bench");
    let wordpress = WordpressSite::new("/", &db, WORKERS, None, Runtime::Cgi);
    let root = wordpress.site.root().to_path_buf();
    let config = wordpress.site.config_path();
    let port = wordpress.site.port;
    let docroot = wordpress.docroot.clone();
    std::fs::write(docroot.join("tq-opcache.php"), OPCACHE_STATUS_PHP)
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
            runtime: Runtime::Cgi,
            settings: "    opcache.enable: 0\n".into(),
            file_cache: None,
        },
        Variant {
            name: "opcache on + file_cache",
            runtime: Runtime::Cgi,
            settings: format!(
                "    opcache.enable: 1\n    opcache.file_cache: {}\n",
                file_cache.display()
            ),
            file_cache: Some(file_cache),
        },
        Variant {
            name: "file_cache_only",
            runtime: Runtime::Cgi,
            settings: format!(
                "    opcache.enable: 1\n    opcache.file_cache: {}\n    opcache.file_cache_only: 1\n",
                file_cache_only.display()
            ),
            file_cache: Some(file_cache_only),
        },
        // Last, so that tqserver's default php-cgi pool, the embed runtime
        // and php-fpm (the first reference) run back to back in each round.
        Variant {
            name: CGI,
            runtime: Runtime::Cgi,
            settings: "    opcache.enable: 1\n".into(),
            file_cache: None,
        },
        Variant {
            name: EMBED,
            runtime: Runtime::Embed,
            settings: String::new(),
            file_cache: None,
        },
    ];
    let write_yaml = |runtime: Runtime, settings: &str| {
        write_worker_yaml(&root, "wordpress", runtime, settings);
    };

    // Install, with a few posts so the front page lists something.
    write_yaml(Runtime::Cgi, "");
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
    let mut references: Vec<_> = REFERENCES
        .iter()
        .map(|&name| {
            let (server, nginx) = start_reference(name, &root.join("wordpress-refs"), &docroot);
            (name, server, nginx, Vec::<Sample>::new())
        })
        .collect();

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
            write_yaml(variant.runtime, &variant.settings);
            let tq = Tq::start(&config, &log, port);
            let mut sample = Sample::default();
            (sample.first_ms, sample.second_ms, sample.warm_ms) =
                first_requests(port, WORDPRESS_PAGE);
            warm_then_measure(
                &mut sample,
                port,
                seconds,
                &all_pids(&tq.php_processes()),
                &[tq.child.id()],
            );
            (sample.rss_kib, sample.pss_kib, sample.master_pss_kib) = memory(tq.php_processes());
            (sample.opcache_used_mib, sample.cached_scripts) = opcache_status(port);
            eprintln!("round {round} {:<38} {}", variant.name, sample.line());
            samples[index].push(sample);
        }
        for (name, server, nginx, reference) in &mut references {
            set_url(nginx.port);
            check_page(nginx.port, WORDPRESS_PAGE);
            let mut sample = Sample::default();
            warm_then_measure(
                &mut sample,
                nginx.port,
                seconds,
                &all_pids(&server.php_processes()),
                &nginx_pids(nginx),
            );
            (sample.rss_kib, sample.pss_kib, sample.master_pss_kib) =
                memory(server.php_processes());
            (sample.opcache_used_mib, sample.cached_scripts) = opcache_status(nginx.port);
            eprintln!("round {round} {name:<38} {}", sample.line());
            reference.push(sample);
            set_url(port);
        }
    }
    // Stopped before the next part.
    let references: Vec<(&str, Vec<Sample>)> = references
        .into_iter()
        .map(|(name, _, _, samples)| (name, samples))
        .collect();

    // The table (medians over the rounds).
    let mut table = format!(
        "| configuration | {MEASURES} | 1st request ms (empty cache) | 1st request ms (after restart) | warm request ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (variant, samples) in variants.iter().zip(&samples) {
        let mut restarted: Vec<f64> = samples.iter().skip(1).map(|s| s.first_ms).collect();
        table.push_str(&format!(
            "| {} | {} | {:.0} | {} | {:.0} |\n",
            variant.name,
            medians(samples),
            samples[0].first_ms,
            if restarted.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.0}", median(&mut restarted))
            },
            pick(samples, |s| s.warm_ms),
        ));
    }
    for (name, samples) in &references {
        table.push_str(&format!("| {name} | {} | - | - | - |\n", medians(samples)));
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
    let of = |name: &str| -> &[Sample] {
        variants
            .iter()
            .zip(&samples)
            .find(|(variant, _)| variant.name == name)
            .map(|(_, samples)| samples.as_slice())
            .or_else(|| {
                references
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, s)| s.as_slice())
            })
            .unwrap_or_else(|| panic!("no configuration {name}"))
    };
    let embed = of(EMBED);
    let (fpm, cgi) = (of(FPM), of(CGI));
    let wordpress_ratios = format!(
        "WordPress, embed / php-fpm: req/s {}, PHP CPU/req {}, PSS/worker {}, PSS/worker with master {}\n\
         WordPress, embed / cgi (opcache on): req/s {}, PHP CPU/req {}, PSS/worker {}\n",
        ratio(embed, fpm, |s| s.requests_per_second),
        ratio(embed, fpm, |s| s.php_cpu_ms),
        ratio(embed, fpm, |s| s.pss_kib as f64),
        ratio(embed, fpm, Sample::pss_with_master_kib),
        ratio(embed, cgi, |s| s.requests_per_second),
        ratio(embed, cgi, |s| s.php_cpu_ms),
        ratio(embed, cgi, |s| s.pss_kib as f64),
    );

    let (classes_table, classes_ratios) = bench_classes(&root, seconds, rounds);

    let php = run(Command::new("php-cgi").arg("-v"), Duration::from_secs(10));
    eprintln!(
        "\n{WORKERS} PHP processes, wrk -t2 -c{CONCURRENCY} -d{seconds}s, {rounds} rounds (medians), {}, {} build\n\n\
         WordPress front page:\n\n{table}\n\
         {CLASSES} classes (every request autoloads them all):\n\n{classes_table}\n\
         Ratios of the medians (range of the rounds' own ratios):\n{wordpress_ratios}{classes_ratios}",
        String::from_utf8_lossy(&php.stdout)
            .lines()
            .next()
            .unwrap_or(""),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
}

const EMBED: &str = "tqserver, php.runtime: embed";
const CGI: &str = "opcache on (php default)";
const FPM: &str = "nginx + php-fpm (pm=static)";
const REFERENCES: [&str; 2] = [FPM, "nginx + php-cgi -b, PHP_FCGI_CHILDREN"];
/// On the WordPress front page once the benchmark's posts are in.
const WORDPRESS_PAGE: &str = "Benchmark post 5";
const OPCACHE_STATUS_PHP: &str = "<?php $s = opcache_get_status(false); echo json_encode(['used_memory' => $s['memory_usage']['used_memory'] ?? 0, 'num_cached_scripts' => $s['opcache_statistics']['num_cached_scripts'] ?? 0]);";
/// The table's columns that every configuration has.
const MEASURES: &str = "req/s | p50 ms | p99 ms | PHP CPU ms/req | front CPU ms/req | RSS/worker MiB | PSS/worker MiB | PSS/worker with master MiB | OPcache used MiB";

impl Sample {
    /// The worker's PSS plus its share of its master's.
    fn pss_with_master_kib(&self) -> f64 {
        self.pss_kib as f64 + self.master_pss_kib as f64 / WORKERS as f64
    }

    /// One round's figures, for the progress lines.
    fn line(&self) -> String {
        format!(
            "{:>7.1} req/s p50 {:>6.1} ms p99 {:>6.1} ms | CPU/req PHP {:.2} ms front {:.2} ms | first {:>6.1} ms second {:>6.1} ms warm {:>6.1} ms | RSS {:>6} KiB PSS {:>6} KiB master PSS {:>6} KiB | opcache {:.1} MiB, {} scripts",
            self.requests_per_second,
            self.p50_ms,
            self.p99_ms,
            self.php_cpu_ms,
            self.front_cpu_ms,
            self.first_ms,
            self.second_ms,
            self.warm_ms,
            self.rss_kib,
            self.pss_kib,
            self.master_pss_kib,
            self.opcache_used_mib,
            self.cached_scripts
        )
    }
}

fn pick(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    median(&mut samples.iter().map(f).collect::<Vec<_>>())
}

/// The medians of [`MEASURES`], as table cells.
fn medians(samples: &[Sample]) -> String {
    format!(
        "{:.1} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1}",
        pick(samples, |s| s.requests_per_second),
        pick(samples, |s| s.p50_ms),
        pick(samples, |s| s.p99_ms),
        pick(samples, |s| s.php_cpu_ms),
        pick(samples, |s| s.front_cpu_ms),
        pick(samples, |s| s.rss_kib as f64) / 1024.0,
        pick(samples, |s| s.pss_kib as f64) / 1024.0,
        pick(samples, Sample::pss_with_master_kib) / 1024.0,
        pick(samples, |s| s.opcache_used_mib),
    )
}

/// `a / b` of the medians, with the range of each round's own ratio
/// (the rounds of `a` and `b` ran back to back).
fn ratio(a: &[Sample], b: &[Sample], f: impl Fn(&Sample) -> f64) -> String {
    let mut rounds: Vec<f64> = a.iter().zip(b).map(|(a, b)| f(a) / f(b)).collect();
    rounds.sort_by(f64::total_cmp);
    format!(
        "×{:.2} ({:.2}–{:.2})",
        pick(a, &f) / pick(b, &f),
        rounds.first().copied().unwrap_or(f64::NAN),
        rounds.last().copied().unwrap_or(f64::NAN),
    )
}

/// Writes an app's worker.yaml: `runtime`, `settings` (indented lines of
/// `php.settings`), a static pool of [`WORKERS`].
fn write_worker_yaml(root: &Path, app: &str, runtime: Runtime, settings: &str) {
    std::fs::write(
        root.join(format!("workers/{app}/config/worker.yaml")),
        format!(
            "path: /\nphp:\n{}  settings:\n    memory_limit: 256M\n{settings}  pool:\n    manager: static\n    max_workers: {WORKERS}\n",
            runtime.yaml()
        ),
    )
    .expect("write worker.yaml");
}

/// Starts a reference server (one of [`REFERENCES`]) with nginx in front,
/// serving `docroot`, its files in a folder under `dir`.
fn start_reference(name: &str, dir: &Path, docroot: &Path) -> (ForkingServer, Nginx) {
    let dir = dir.join(name.split_whitespace().nth(2).unwrap_or("ref"));
    std::fs::create_dir_all(&dir).expect("create a reference folder");
    give_to_workers(&dir);
    let server = if name == FPM {
        ForkingServer::php_fpm(&dir)
    } else {
        ForkingServer::php_cgi_children(&dir)
    };
    let nginx = crate::nginx::php_site(
        docroot,
        "/",
        &format!("unix:{}", server.socket.display()),
        false,
    );
    (server, nginx)
}

/// The page at `/` answers 200 with `expected` in it.
fn check_page(port: u16, expected: &str) {
    let page = Browser::new(port).get("/");
    assert_eq!(page.status, 200, "front page on port {port}");
    assert!(
        page.text().contains(expected),
        "front page on port {port}: {}",
        crate::html::short(&page.text())
    );
}

/// A short unmeasured load so every worker has compiled the app, then the
/// measured one, with the CPU time per request of the `php` processes and
/// of the `front` ones (the web server).
fn warm_then_measure(sample: &mut Sample, port: u16, seconds: u64, php: &[u32], front: &[u32]) {
    wrk(port, "/", 2);
    let (php_before, front_before) = (cpu_ms(php), cpu_ms(front));
    let load = wrk(port, "/", seconds);
    (sample.requests_per_second, sample.p50_ms, sample.p99_ms) =
        (load.requests_per_second, load.p50_ms, load.p99_ms);
    let requests = load.requests.max(1) as f64;
    sample.php_cpu_ms = (cpu_ms(php) - php_before) / requests;
    sample.front_cpu_ms = (cpu_ms(front) - front_before) / requests;
}

/// The pids of the processes `(workers, master)`.
fn all_pids((workers, master): &(Vec<u32>, Option<u32>)) -> Vec<u32> {
    workers.iter().copied().chain(*master).collect()
}

/// nginx's master and workers.
fn nginx_pids(nginx: &Nginx) -> Vec<u32> {
    let mut pids = children_named(nginx.pid(), "nginx");
    pids.push(nginx.pid());
    pids
}

const CLASSES: usize = 1500;

/// An app of [`CLASSES`] small classes, one file each, that its index.php
/// autoloads and uses on every request.
fn write_classes_app(docroot: &Path) {
    let src = docroot.join("src");
    std::fs::create_dir_all(&src).expect("create src/");
    for i in 1..=CLASSES {
        std::fs::write(
            src.join(format!("C{i:04}.php")),
            format!(
                "<?php\nnamespace Bench;\n\nfinal class C{i:04}\n{{\n    private array $items = [];\n\n    public function __construct(private int $id) {{}}\n\n    public function add(string $item): self\n    {{\n        $this->items[] = $item;\n        return $this;\n    }}\n\n    public function id(): int\n    {{\n        return $this->id + count($this->items) - 1;\n    }}\n}}\n"
            ),
        )
        .expect("write a class");
    }
    std::fs::write(
        docroot.join("index.php"),
        format!(
            "<?php\nspl_autoload_register(function (string $class): void {{\n    require __DIR__ . '/src/' . substr($class, strrpos($class, '\\\\') + 1) . '.php';\n}});\n$sum = 0;\nfor ($i = 1; $i <= {CLASSES}; $i++) {{\n    $class = sprintf('Bench\\\\C%04d', $i);\n    $sum += (new $class($i))->add('x')->id();\n}}\necho \"{CLASSES} classes, sum $sum\\n\";\n"
        ),
    )
    .expect("write index.php");
    std::fs::write(docroot.join("tq-opcache.php"), OPCACHE_STATUS_PHP)
        .expect("write tq-opcache.php");
    make_readable(docroot);
}

/// The 1,500-class app on tqserver (each runtime) and on the references,
/// the same pool size: returns the table and the ratio lines.
fn bench_classes(root: &Path, seconds: u64, rounds: usize) -> (String, String) {
    let site = Site::new().worker("classes", "path: /\n");
    let docroot = site.root().join("workers/classes/public");
    write_classes_app(&docroot);
    let expected = format!("{CLASSES} classes, sum {}", CLASSES * (CLASSES + 1) / 2);
    let log = root.join("classes.log");
    let configs = [
        ("tqserver, php.runtime: cgi", Runtime::Cgi),
        (EMBED, Runtime::Embed),
    ];
    let mut references: Vec<_> = REFERENCES
        .iter()
        .map(|&name| {
            let (server, nginx) = start_reference(name, &root.join("classes-refs"), &docroot);
            (name, server, nginx)
        })
        .collect();
    let mut samples: Vec<Vec<Sample>> = (0..configs.len() + references.len())
        .map(|_| Vec::new())
        .collect();
    for round in 0..rounds {
        for (index, (name, runtime)) in configs.iter().enumerate() {
            write_worker_yaml(site.root(), "classes", *runtime, "");
            let tq = Tq::start(&site.config_path(), &log, site.port);
            check_page(site.port, &expected);
            let mut sample = Sample::default();
            warm_then_measure(
                &mut sample,
                site.port,
                seconds,
                &all_pids(&tq.php_processes()),
                &[tq.child.id()],
            );
            (sample.rss_kib, sample.pss_kib, sample.master_pss_kib) = memory(tq.php_processes());
            (sample.opcache_used_mib, sample.cached_scripts) = opcache_status(site.port);
            eprintln!("round {round} classes {name:<30} {}", sample.line());
            samples[index].push(sample);
        }
        for (index, (name, server, nginx)) in references.iter_mut().enumerate() {
            check_page(nginx.port, &expected);
            let mut sample = Sample::default();
            warm_then_measure(
                &mut sample,
                nginx.port,
                seconds,
                &all_pids(&server.php_processes()),
                &nginx_pids(nginx),
            );
            (sample.rss_kib, sample.pss_kib, sample.master_pss_kib) =
                memory(server.php_processes());
            (sample.opcache_used_mib, sample.cached_scripts) = opcache_status(nginx.port);
            eprintln!("round {round} classes {name:<30} {}", sample.line());
            samples[configs.len() + index].push(sample);
        }
    }
    let names: Vec<&str> = configs
        .iter()
        .map(|(name, _)| *name)
        .chain(references.iter().map(|(name, _, _)| *name))
        .collect();
    let mut table =
        format!("| configuration | {MEASURES} |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for (name, samples) in names.iter().zip(&samples) {
        table.push_str(&format!("| {name} | {} |\n", medians(samples)));
    }
    let (cgi, embed, fpm) = (&samples[0], &samples[1], &samples[2]);
    let ratios = format!(
        "{CLASSES} classes, embed / php-fpm: req/s {}, PHP CPU/req {}, PSS/worker {}, PSS/worker with master {}\n\
         {CLASSES} classes, embed / cgi: req/s {}, PHP CPU/req {}, PSS/worker {}\n",
        ratio(embed, fpm, |s| s.requests_per_second),
        ratio(embed, fpm, |s| s.php_cpu_ms),
        ratio(embed, fpm, |s| s.pss_kib as f64),
        ratio(embed, fpm, Sample::pss_with_master_kib),
        ratio(embed, cgi, |s| s.requests_per_second),
        ratio(embed, cgi, |s| s.php_cpu_ms),
        ratio(embed, cgi, |s| s.pss_kib as f64),
    );
    (table, ratios)
}
