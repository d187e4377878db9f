//! The pool against real php-cgi: start-up, requests over kept-alive
//! connections, crash replacement, recycling and spawn failures.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fastcgi::ParamsWriter;
use fastcgi::client::ResponseEvent;
use fastcgi::record::{RecordType, Role, put_begin_request, put_stream_end};
use pool::{Manager, PoolConfig, RequestInfo, SocketKind, WorkerCommand, WorkerPool};

fn php_cgi() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let path = Path::new(dir).join("php-cgi");
        if path.exists() {
            return path;
        }
    }
    panic!("php-cgi not found: install the Debian package php-cgi");
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

    fn config(&self, program: &Path, manager: Manager, min: usize, max: usize) -> PoolConfig {
        let mut config = PoolConfig::with_command(
            "test",
            WorkerCommand {
                program: program.to_owned(),
                args: vec![],
                env: vec![("PHP_FCGI_MAX_REQUESTS".into(), "0".into())],
                cwd: None,
                credentials: None,
                launch: Default::default(),
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

#[tokio::test]
async fn static_pool_serves_over_kept_alive_connections() {
    let fixture = Fixture::new();
    let pool = WorkerPool::start(fixture.config(&php_cgi(), Manager::Static, 0, 2))
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

#[tokio::test]
async fn a_killed_worker_is_replaced_at_once() {
    let fixture = Fixture::new();
    let pool = WorkerPool::start(fixture.config(&php_cgi(), Manager::Static, 0, 3))
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

#[tokio::test]
async fn max_requests_recycles_without_failures() {
    let fixture = Fixture::new();
    let mut config = fixture.config(&php_cgi(), Manager::Static, 0, 2);
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

#[tokio::test]
async fn dynamic_pool_grows_under_a_burst() {
    let fixture = Fixture::new();
    let mut config = fixture.config(&php_cgi(), Manager::Dynamic, 1, 6);
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
    let err = WorkerPool::start(fixture.config(&fake, Manager::Static, 0, 2))
        .await
        .err()
        .expect("start-up must fail");
    let message = err.to_string();
    assert!(message.contains("exit code 3"), "{message}");
    assert!(message.contains("broken build"), "{message}");
}

#[tokio::test]
async fn a_request_that_gives_up_after_its_worker_was_sent_returns_it() {
    let fixture = Fixture::new();
    let pool = WorkerPool::start(fixture.config(&php_cgi(), Manager::Static, 0, 1))
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
