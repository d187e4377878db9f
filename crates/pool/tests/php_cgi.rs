//! The pool against real PHP, on both runtimes (php-cgi exec'd per worker,
//! and tqserver-php workers forked from a zygote): start-up, requests over
//! kept-alive connections, crash replacement, recycling and spawn failures;
//! and what only the zygote has: one parent for all workers, and a new
//! zygote when the old one dies.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fastcgi::ParamsWriter;
use fastcgi::client::ResponseEvent;
use fastcgi::record::{RecordType, Role, put_begin_request, put_stream_end};
use pool::{Launch, Manager, PoolConfig, RequestInfo, SocketKind, WorkerCommand, WorkerPool};

fn php_cgi() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let path = Path::new(dir).join("php-cgi");
        if path.exists() {
            return path;
        }
    }
    panic!("php-cgi not found: install the Debian package php-cgi");
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Runtime {
    Cgi,
    Embed,
}

/// tqserver-php, as `cargo nextest run --workspace` builds it beside the
/// test binaries.
fn tqserver_php() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("tqserver-php"))
        .unwrap();
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p tq-php-runtime`",
        path.display()
    );
    path
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            dir.path().join("hello.php"),
            "<?php echo 'hello from ', getmypid();",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sleep.php"),
            "<?php usleep((int)$_GET['ms'] * 1000); echo 'slept';",
        )
        .unwrap();
        Self { dir }
    }

    fn config(&self, runtime: Runtime, manager: Manager, min: usize, max: usize) -> PoolConfig {
        let (program, launch) = match runtime {
            Runtime::Cgi => (php_cgi(), Launch::Exec),
            Runtime::Embed => (tqserver_php(), Launch::Zygote),
        };
        self.config_for(&program, launch, manager, min, max)
    }

    fn config_for(
        &self,
        program: &Path,
        launch: Launch,
        manager: Manager,
        min: usize,
        max: usize,
    ) -> PoolConfig {
        let mut config = PoolConfig::with_command(
            "test",
            WorkerCommand {
                program: program.to_owned(),
                args: vec![],
                env: vec![("PHP_FCGI_MAX_REQUESTS".into(), "0".into())],
                cwd: None,
                credentials: None,
                launch,
                socket: SocketKind::Unix {
                    dir: self.dir.path().join("run"),
                },
            },
        );
        pool::socket::prepare_socket_dir(&self.dir.path().join("run")).unwrap();
        config.manager = manager;
        config.min_workers = min;
        config.max_workers = max;
        config.start_workers = min;
        config
    }

    fn script(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// Runs one GET through the pool and returns the body after the CGI headers.
async fn get(pool: &WorkerPool, script: &str, query: &str) -> String {
    let mut lease = pool.acquire().await.expect("a worker");
    lease.begin(RequestInfo::new("GET", script, script, 0));
    let conn = lease.connection();
    let buf = conn.write_buf();
    put_begin_request(buf, 1, Role::Responder, true);
    let mut params = ParamsWriter::new(buf, 1);
    params.pair(b"REQUEST_METHOD", b"GET");
    params.pair(b"SCRIPT_FILENAME", script.as_bytes());
    params.pair(b"QUERY_STRING", query.as_bytes());
    params.finish();
    put_stream_end(buf, RecordType::Stdin, 1);
    conn.flush().await.expect("write request");
    lease.sent();
    let mut out = Vec::new();
    loop {
        match lease.connection().next_event().await.expect("response") {
            ResponseEvent::Stdout(data) => out.extend_from_slice(&data),
            ResponseEvent::Stderr(_) => {}
            ResponseEvent::End(_) => break,
        }
    }
    lease.complete();
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or(text)
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn static_pool_serves_over_kept_alive_connections(runtime: Runtime) {
    let fixture = Fixture::new();
    let pool = WorkerPool::start(fixture.config(runtime, Manager::Static, 0, 2))
        .await
        .unwrap();
    assert_eq!(pool.pids().len(), 2);
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let body = get(&pool, &fixture.script("hello.php"), "").await;
        let pid: u32 = body.strip_prefix("hello from ").unwrap().parse().unwrap();
        pids.insert(pid);
    }
    // Most recently used first: sequential requests stay on one warm worker.
    assert_eq!(pids.len(), 1, "{pids:?}");
    let status = pool.status();
    assert_eq!(status.completed, 20);
    assert_eq!(status.idle, 2);
    pool.drain(Duration::from_secs(5)).await;
    assert!(pool.pids().is_empty());
}

async fn a_killed_worker_is_replaced_at_once(runtime: Runtime) {
    let fixture = Fixture::new();
    let pool = WorkerPool::start(fixture.config(runtime, Manager::Static, 0, 3))
        .await
        .unwrap();
    let victim = pool.pids()[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("replacement", || {
        let pids = pool.pids();
        pids.len() == 3 && !pids.contains(&victim)
    })
    .await;
    assert_eq!(pool.status().crashes, 1);
    for _ in 0..10 {
        assert!(
            get(&pool, &fixture.script("hello.php"), "")
                .await
                .starts_with("hello")
        );
    }
    pool.drain(Duration::from_secs(5)).await;
}

async fn max_requests_recycles_without_failures(runtime: Runtime) {
    let fixture = Fixture::new();
    let mut config = fixture.config(runtime, Manager::Static, 0, 2);
    config.max_requests = 5;
    let pool = WorkerPool::start(config).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let pool = pool.clone();
        let script = fixture.script("hello.php");
        tasks.spawn(async move {
            for _ in 0..25 {
                assert!(get(&pool, &script, "").await.starts_with("hello"));
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let status = pool.status();
    assert_eq!(status.completed, 100);
    assert!(status.recycles >= 18, "recycles {}", status.recycles);
    pool.drain(Duration::from_secs(5)).await;
}

async fn dynamic_pool_grows_under_a_burst(runtime: Runtime) {
    let fixture = Fixture::new();
    let mut config = fixture.config(runtime, Manager::Dynamic, 1, 6);
    config.start_workers = 1;
    let pool = WorkerPool::start(config).await.unwrap();
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let pool = pool.clone();
        let script = fixture.script("sleep.php");
        tasks.spawn(async move { get(&pool, &script, "ms=300").await });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap(), "slept");
    }
    // Six 300 ms requests on up to six workers: far less than 6 x 300 ms.
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(pool.status().total, 6);
    pool.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_binary_that_exits_at_once_fails_start_up_clearly() {
    let fixture = Fixture::new();
    let fake = fixture.dir.path().join("fake-php");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'PHP Fatal: broken build' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = WorkerPool::start(fixture.config_for(&fake, Launch::Exec, Manager::Static, 0, 2))
        .await
        .err()
        .expect("start-up must fail");
    let message = err.to_string();
    assert!(message.contains("exit code 3"), "{message}");
    assert!(message.contains("broken build"), "{message}");
}

async fn a_request_that_gives_up_after_its_worker_was_sent_returns_it(runtime: Runtime) {
    let fixture = Fixture::new();
    let pool = WorkerPool::start(fixture.config(runtime, Manager::Static, 0, 1))
        .await
        .unwrap();
    for _ in 0..5 {
        let busy = pool.acquire().await.unwrap();
        // A second request queues behind it...
        let mut queued = Box::pin(pool.acquire());
        std::future::poll_fn(|cx| {
            assert!(queued.as_mut().poll(cx).is_pending());
            std::task::Poll::Ready(())
        })
        .await;
        // ...the worker is sent to it, and it gives up before reading it
        // (its client disconnected).
        busy.complete();
        drop(queued);
        // The worker is back: not lost, not counted busy.
        let lease = tokio::time::timeout(Duration::from_secs(2), pool.acquire())
            .await
            .expect("the worker came back")
            .unwrap();
        drop(lease);
        assert_eq!(pool.status().busy, 0);
    }
    assert!(
        get(&pool, &fixture.script("hello.php"), "")
            .await
            .starts_with("hello")
    );
    pool.drain(Duration::from_secs(5)).await;
}

macro_rules! on_both_runtimes {
    ($($name:ident),* $(,)?) => {
        mod cgi {
            $(#[tokio::test] async fn $name() { super::$name(super::Runtime::Cgi).await })*
        }
        mod embed {
            $(#[tokio::test] async fn $name() { super::$name(super::Runtime::Embed).await })*
        }
    };
}

on_both_runtimes!(
    static_pool_serves_over_kept_alive_connections,
    a_killed_worker_is_replaced_at_once,
    max_requests_recycles_without_failures,
    dynamic_pool_grows_under_a_burst,
    a_request_that_gives_up_after_its_worker_was_sent_returns_it
);

/// Running (not gone, not a zombie left to init).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn embed_workers_are_forked_from_one_zygote_and_share_its_opcache() {
    let fixture = Fixture::new();
    std::fs::write(
        fixture.dir.path().join("opcache.php"),
        "<?php $s = opcache_get_status(false)['opcache_statistics'] ?? null; echo $s ? $s['misses'] . ' ' . $s['hits'] : 'off';",
    )
    .unwrap();
    let mut config = fixture.config(Runtime::Embed, Manager::Static, 0, 3);
    // OPcache skips files younger than this (2 s by default).
    config.command.args = vec!["-d".into(), "opcache.file_update_protection=0".into()];
    let pool = WorkerPool::start(config).await.unwrap();
    let pids = pool.pids();
    assert_eq!(pids.len(), 3);
    let parents: std::collections::BTreeSet<_> = pids.iter().map(|&pid| parent_of(pid)).collect();
    assert_eq!(parents.len(), 1, "one parent for all workers: {parents:?}");
    let zygote = parents.into_iter().next().flatten().expect("a parent");
    assert_ne!(
        zygote,
        std::process::id(),
        "the workers' parent is the zygote"
    );
    // Three requests on three workers: the script compiled by the first is
    // cached for the others (one shared OPcache): one miss in all, and the
    // third worker sees the second's hit.
    let mut leases = Vec::new();
    let mut counts = Vec::new();
    for _ in 0..3 {
        counts.push(get(&pool, &fixture.script("opcache.php"), "").await);
        leases.push(pool.acquire().await.unwrap());
    }
    drop(leases);
    assert_eq!(
        counts,
        ["1 0", "1 1", "1 2"],
        "OPcache misses and hits per request"
    );
    pool.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_dead_zygote_takes_its_workers_and_the_pool_starts_a_new_one() {
    let fixture = Fixture::new();
    let pool = WorkerPool::start(fixture.config(Runtime::Embed, Manager::Static, 0, 2))
        .await
        .unwrap();
    let before = pool.pids();
    let zygote = parent_of(before[0]).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(zygote as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("replacement workers from a new zygote", || {
        let now = pool.pids();
        now.len() == 2
            && now.iter().all(|pid| !before.contains(pid))
            && now
                .iter()
                .all(|&pid| parent_of(pid).is_some_and(|p| p != zygote))
    })
    .await;
    let body = get(&pool, &fixture.script("hello.php"), "").await;
    assert!(body.starts_with("hello from "), "{body}");
    for pid in before {
        assert!(!alive(pid), "worker {pid} outlived its zygote");
    }
    pool.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_zygote_that_cannot_start_fails_start_up_clearly() {
    let fixture = Fixture::new();
    let mut config = fixture.config(Runtime::Embed, Manager::Static, 0, 1);
    config.command.args = vec!["--no-such-flag".into()];
    let err = match WorkerPool::start(config).await {
        Ok(_) => panic!("a zygote that exits must fail start-up"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("zygote: exit code 64"), "{err}");
    assert!(err.contains("unknown argument `--no-such-flag`"), "{err}");
}
