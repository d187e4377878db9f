//! Worker mode measured against classic mode and nginx + php-fpm (not a
//! test: `bench_worker_mode` is ignored and prints the table for
//! docs/WORKER-MODE.md). It runs the release builds of tqserver and
//! tqserver-php, beside the test's own (debug) tqserver:
//!
//! ```text
//! cargo build --release -p tqserver -p tq-php-runtime
//! cargo nextest run -p tqserver --features app-tests --test apps \
//!     --run-ignored only -E 'test(bench_worker_mode)' --no-capture
//! ```
//!
//! Two apps: the Laravel fixture (its JSON route `/api/users/5` and its
//! Blade page `/posts`) and a plain PHP app with a heavy boot (about 30 ms
//! of computed configuration, services and routes before it can answer).
//! Each under four configurations with 4 PHP processes each, all started
//! before the first measurement:
//!
//! - tqserver worker mode (`php.worker`, the embed runtime): the app boots
//!   once per worker (the Laravel worker script restarts itself after
//!   MAX_REQUESTS = 1000 requests, as Octane's does); for Laravel also the
//!   same script without its gc_collect_cycles() after each request;
//! - tqserver classic on `php.runtime: embed`;
//! - tqserver classic on `php.runtime: cgi`;
//! - nginx + php-fpm (pm = static, Debian's php.ini: OPcache on), nginx
//!   without FastCGI keep-alive as usually configured for php-fpm.
//!
//! wrk -t2 -c20 against each, a 2 s warm-up then `BENCH_SECONDS` (default
//! 5) measured, `BENCH_ROUNDS` (default 3) rounds with the order rotated
//! each round; medians. PSS per PHP process (smaps_rollup) after each run.
//! `BENCH_VERBOSE=1` prints wrk's whole output.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::measure::{CONCURRENCY, cpu_ticks, median, memory_kib, wrk};
use crate::setup::{Runtime, give_to_workers, make_readable, run};
use crate::support::nginx::{Nginx, PhpFpm};
use crate::support::{BIN, Site, children_named, stop_child};

use super::{WORKER_SCRIPT, prepare_copy};

const WORKERS: usize = 4;

/// The heavy boot: what a large application computes before it can answer
/// (configuration merged from many modules, thousands of service
/// definitions, a sorted route table). OPcache keeps literal arrays, not
/// these, so classic mode pays for all of it on every request.
const HEAVY_BOOT: &str = r#"<?php
function heavy_boot(): array
{
    $config = [];
    for ($i = 0; $i < 12000; $i++) {
        $config["module.$i"] = [
            'enabled' => $i % 3 !== 0,
            'name' => ucwords("module number $i"),
            'options' => array_fill_keys(['cache', 'log', 'queue', 'mail', 'db', 'view'], "opt-$i"),
            'checksum' => md5("module.$i"),
        ];
    }
    $services = [];
    for ($i = 0; $i < 12000; $i++) {
        $services["service.$i"] = static fn () => new ArrayObject(['id' => $i]);
    }
    $routes = [];
    for ($i = 0; $i < 12000; $i++) {
        $routes["/items/$i"] = ['GET', sprintf('#^/items/%d/(?P<id>\d+)$#', $i), "handler.$i"];
    }
    ksort($routes, SORT_NATURAL);

    return ['config' => $config, 'services' => $services, 'routes' => $routes];
}

function heavy_respond(array $app): void
{
    $route = $app['routes']['/items/42'] ?? null;
    $service = ($app['services']['service.42'])();
    header('Content-Type: application/json');
    echo json_encode([
        'modules' => count($app['config']),
        'route' => $route[2] ?? null,
        'service' => $service['id'],
        'worker' => $_SERVER['FRANKENPHP_WORKER'] ?? null,
    ]);
}
"#;

const HEAVY_INDEX: &str = "<?php\nrequire __DIR__ . '/boot.php';\nheavy_respond(heavy_boot());\n";

/// No gc_collect_cycles() between requests: these requests leave no
/// cycles, and a collection would walk the booted arrays every time (the
/// closure's use of `$app` makes it a possible root): 3 ms per request on
/// this heap, measured, where the request itself takes 0.01 ms.
const HEAVY_WORKER: &str = "<?php\nrequire __DIR__ . '/boot.php';\n$app = heavy_boot();\n\
     while (frankenphp_handle_request(fn () => heavy_respond($app))) {\n}\n";

/// Whether OPcache serves this request ("1").
const OPCACHE_ON: &str = "<?php echo (int) (opcache_get_status(false)['opcache_enabled'] ?? 0);";

#[derive(Clone, Copy, PartialEq, Eq)]
enum App {
    Laravel,
    HeavyBoot,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    Worker,
    /// Laravel's worker script without its gc_collect_cycles() after each
    /// request, to show what that costs.
    WorkerNoGc,
    Embed,
    Cgi,
    Fpm,
}

const CONFIGS: [Config; 5] = [
    Config::Worker,
    Config::WorkerNoGc,
    Config::Embed,
    Config::Cgi,
    Config::Fpm,
];

impl Config {
    fn label(self) -> &'static str {
        match self {
            Self::Worker => "tqserver worker mode",
            Self::WorkerNoGc => "tqserver worker mode, no gc per request",
            Self::Embed => "tqserver embed (classic)",
            Self::Cgi => "tqserver php-cgi (classic)",
            Self::Fpm => "nginx + php-fpm",
        }
    }
}

/// What is requested: a route of an app, and a piece of its answer.
struct Target {
    label: &'static str,
    app: App,
    path: &'static str,
    expect: &'static str,
}

const TARGETS: [Target; 3] = [
    Target {
        label: "Laravel JSON (/api/users/5)",
        app: App::Laravel,
        path: "/api/users/5",
        expect: r#"{"id":5,"name":"User 5"}"#,
    },
    Target {
        label: "Laravel Blade view (/posts)",
        app: App::Laravel,
        path: "/posts",
        expect: "Post number 20 &amp; &lt;friends&gt;",
    },
    Target {
        label: "heavy boot, ~30 ms (/items/42)",
        app: App::HeavyBoot,
        path: "/items/42",
        expect: r#""service":42"#,
    },
];

/// The release tqserver, beside the test's debug one.
fn release_binary() -> PathBuf {
    let debug = Path::new(BIN);
    let release = debug
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("release/tqserver"))
        .expect("the target folder");
    let runtime = release.with_file_name("tqserver-php");
    assert!(
        release.exists() && runtime.exists(),
        "{} or {} is missing: cargo build --release -p tqserver -p tq-php-runtime",
        release.display(),
        runtime.display()
    );
    release
}

/// A release tqserver on a site of its own, stopped on drop.
struct Tq {
    site: Site,
    child: Child,
}

impl Tq {
    fn start(site: Site) -> Self {
        let log = std::fs::File::create(site.root().join("tqserver.log")).expect("the log file");
        let child = Command::new(release_binary())
            .arg("--config")
            .arg(site.config_path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("start tqserver");
        let mut tq = Self { site, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", tq.site.port)).is_err() {
            if let Ok(Some(status)) = tq.child.try_wait() {
                panic!("tqserver exited ({status}):\n{}", tq.log());
            }
            assert!(
                Instant::now() < deadline,
                "tqserver did not start:\n{}",
                tq.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        tq
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.site.root().join("tqserver.log")).unwrap_or_default()
    }

    /// The PHP processes that serve: php-cgi children of tqserver, or
    /// tqserver-php workers forked by its zygote.
    fn php_pids(&self) -> Vec<u32> {
        let mut pids = children_named(self.child.id(), "php-cgi");
        for zygote in children_named(self.child.id(), "tqserver-php") {
            pids.extend(children_named(zygote, "tqserver-php"));
        }
        pids
    }
}

impl Drop for Tq {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(15));
    }
}

/// One app under one configuration, serving on `port`.
struct Endpoint {
    app: App,
    config: Config,
    port: u16,
    server: Server,
}

enum Server {
    Tq(Tq),
    /// nginx in front of the shared php-fpm (its pid file).
    Fpm(Nginx, PathBuf),
}

impl Endpoint {
    fn php_pids(&self) -> Vec<u32> {
        match &self.server {
            Server::Tq(tq) => tq.php_pids(),
            Server::Fpm(_, pid_file) => std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|pid| pid.trim().parse().ok())
                .map(|master| children_named(master, "php-fpm8.2"))
                .unwrap_or_default(),
        }
    }

    fn log(&self) -> String {
        match &self.server {
            Server::Tq(tq) => tq.log(),
            Server::Fpm(nginx, _) => nginx.error_log(),
        }
    }
}

/// The app's files in `base` (the worker's folder; `public/` is the
/// document root).
fn install(app: App, base: &Path) {
    match app {
        App::Laravel => prepare_copy(base),
        App::HeavyBoot => {
            let public = base.join("public");
            std::fs::create_dir_all(&public).expect("the document root");
            for (name, text) in [
                ("opcache.php", OPCACHE_ON),
                ("boot.php", HEAVY_BOOT),
                ("index.php", HEAVY_INDEX),
                ("worker.php", HEAVY_WORKER),
            ] {
                std::fs::write(public.join(name), text).expect("write the app");
            }
            make_readable(base);
        }
    }
}

fn start_tq(app: App, config: Config) -> Endpoint {
    let php = match (config, app) {
        (Config::Worker | Config::WorkerNoGc, App::Laravel) => {
            format!("  worker: {WORKER_SCRIPT}\n")
        }
        (Config::Worker | Config::WorkerNoGc, App::HeavyBoot) => {
            "  worker: worker.php\n".to_owned()
        }
        (Config::Embed, _) => "  runtime: embed\n".to_owned(),
        _ => "  runtime: cgi\n".to_owned(),
    };
    let yaml =
        format!("path: /\nphp:\n{php}  pool:\n    manager: static\n    max_workers: {WORKERS}\n");
    let site = Site::new().worker("app", &yaml);
    install(app, &site.root().join("workers/app"));
    if config == Config::WorkerNoGc {
        let script = site.root().join("workers/app/public").join(WORKER_SCRIPT);
        let text = std::fs::read_to_string(&script).expect("the worker script");
        let edited = text.replace("    gc_collect_cycles();\n", "");
        assert_ne!(edited, text, "the worker script calls gc_collect_cycles()");
        std::fs::write(&script, edited).expect("write the worker script");
    }
    let tq = Tq::start(site);
    Endpoint {
        app,
        config,
        port: tq.site.port,
        server: Server::Tq(tq),
    }
}

fn start_fpm(app: App, fpm: &PhpFpm, dir: &Path) -> Endpoint {
    let base = dir.join(match app {
        App::Laravel => "laravel",
        App::HeavyBoot => "heavy",
    });
    install(app, &base);
    give_to_workers(&base.join("public"));
    let nginx = fpm.behind_nginx(&base.join("public"));
    Endpoint {
        app,
        config: Config::Fpm,
        port: nginx.port,
        server: Server::Fpm(nginx, fpm.dir.path().join("fpm.pid")),
    }
}

/// One wrk run.
#[derive(Clone, Copy, Default)]
struct Load {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    pss_kib: f64,
}

/// Average PSS (KiB) of `pids`, from smaps_rollup.
fn average_pss_kib(pids: &[u32]) -> f64 {
    assert!(!pids.is_empty(), "no PHP processes to measure");
    pids.iter().map(|pid| memory_kib(*pid).1).sum::<u64>() as f64 / pids.len() as f64
}

/// Waits (up to 30 s) until `pids` use no CPU for 200 ms.
fn wait_idle(pids: &[u32]) {
    let total = || pids.iter().map(|pid| cpu_ticks(*pid)).sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut before = total();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = total();
        if now == before {
            return;
        }
        before = now;
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "benchmark for docs/WORKER-MODE.md: --run-ignored only -E 'test(bench_worker_mode)'"]
fn bench_worker_mode() {
    Runtime::Embed.ensure();
    let seconds = env_number("BENCH_SECONDS", 5);
    let rounds = env_number("BENCH_ROUNDS", 3) as usize;
    let load_before = load_average();

    let fpm = PhpFpm::start(WORKERS);
    let fpm_dir = Site::new();
    let mut endpoints = Vec::new();
    for app in [App::Laravel, App::HeavyBoot] {
        for config in CONFIGS {
            if app == App::HeavyBoot && config == Config::WorkerNoGc {
                continue;
            }
            endpoints.push(match config {
                Config::Fpm => start_fpm(app, &fpm, fpm_dir.root()),
                _ => start_tq(app, config),
            });
        }
    }

    // Every endpoint answers as it should (worker mode in worker mode).
    for endpoint in &endpoints {
        for target in TARGETS.iter().filter(|t| t.app == endpoint.app) {
            let response = crate::browser::Browser::new(endpoint.port).get(target.path);
            assert!(
                response.status == 200 && response.text().contains(target.expect),
                "{} on {}: {} {}\n{}",
                target.path,
                endpoint.config.label(),
                response.status,
                crate::html::short(&response.text()),
                endpoint.log()
            );
        }
        let in_worker_mode = match endpoint.app {
            App::Laravel => crate::browser::Browser::new(endpoint.port)
                .get("/state")
                .text()
                .contains(r#""worker":"1""#),
            App::HeavyBoot => crate::browser::Browser::new(endpoint.port)
                .get("/items/42")
                .text()
                .contains(r#""worker":"1""#),
        };
        assert_eq!(
            in_worker_mode,
            matches!(endpoint.config, Config::Worker | Config::WorkerNoGc),
            "{}",
            endpoint.config.label()
        );
        if endpoint.app == App::HeavyBoot && endpoint.config != Config::Worker {
            let opcache = crate::browser::Browser::new(endpoint.port).get("/opcache.php");
            assert_eq!(
                opcache.text(),
                "1",
                "OPcache on {}",
                endpoint.config.label()
            );
        }
    }

    // (target, endpoint) pairs, measured in turn; the order rotates each
    // round so that the machine's other load spreads over all of them.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (t, target) in TARGETS.iter().enumerate() {
        for (e, endpoint) in endpoints.iter().enumerate() {
            if endpoint.app == target.app {
                runs.push((t, e));
            }
        }
    }
    let mut samples: Vec<Vec<Load>> = runs.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for step in 0..runs.len() {
            let index = (step + round * 3) % runs.len();
            let (t, e) = runs[index];
            let (target, endpoint) = (&TARGETS[t], &endpoints[e]);
            let pids = endpoint.php_pids();
            wrk(endpoint.port, target.path, 2);
            wait_idle(&pids);
            let measured = wrk(endpoint.port, target.path, seconds);
            let load = Load {
                requests_per_second: measured.requests_per_second,
                p50_ms: measured.p50_ms,
                p99_ms: measured.p99_ms,
                pss_kib: average_pss_kib(&pids),
            };
            // php-fpm goes on with the requests nginx left in its socket's
            // backlog when wrk stopped: not on the next one's time.
            wait_idle(&pids);
            eprintln!(
                "round {round} {:<32} {:<28} {:>8.1} req/s p50 {:>7.2} ms p99 {:>7.2} ms PSS {:>6.1} MiB | load {}",
                target.label,
                endpoint.config.label(),
                load.requests_per_second,
                load.p50_ms,
                load.p99_ms,
                load.pss_kib / 1024.0,
                load_average()
            );
            samples[index].push(load);
        }
    }

    let mut table = String::from(
        "| app, route | configuration | req/s | p50 ms | p99 ms | PSS per PHP process MiB | req/s vs nginx + php-fpm |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    for (t, target) in TARGETS.iter().enumerate() {
        let medians: Vec<(Config, Load)> = runs
            .iter()
            .zip(&samples)
            .filter(|((rt, _), _)| *rt == t)
            .map(|((_, e), loads)| {
                let pick =
                    |f: fn(&Load) -> f64| median(&mut loads.iter().map(f).collect::<Vec<_>>());
                (
                    endpoints[*e].config,
                    Load {
                        requests_per_second: pick(|l| l.requests_per_second),
                        p50_ms: pick(|l| l.p50_ms),
                        p99_ms: pick(|l| l.p99_ms),
                        pss_kib: pick(|l| l.pss_kib),
                    },
                )
            })
            .collect();
        let fpm_rps = medians
            .iter()
            .find(|(c, _)| *c == Config::Fpm)
            .map_or(f64::NAN, |(_, l)| l.requests_per_second);
        for (config, load) in &medians {
            table.push_str(&format!(
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.2}× |\n",
                target.label,
                config.label(),
                load.requests_per_second,
                load.p50_ms,
                load.p99_ms,
                load.pss_kib / 1024.0,
                load.requests_per_second / fpm_rps
            ));
        }
    }
    let php = run(
        Command::new("php-fpm8.2").arg("-v"),
        Duration::from_secs(10),
    );
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!(
        "\n{WORKERS} PHP processes per configuration, wrk -t2 -c{CONCURRENCY} -d{seconds}s after a 2 s warm-up, {rounds} rounds (medians), {cpus} CPUs shared by wrk and the servers, load average {load_before} before, {} after; {}\n\n{table}",
        load_average(),
        String::from_utf8_lossy(&php.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
    drop(endpoints);
    drop(fpm);
}
