//! The pool's decisions, deterministically: dispatch, the wait queue,
//! recycling, crashes, timeouts and crash-loop backoff, against
//! `fake-fcgi-worker` (tests/support/fake_worker.rs), a FastCGI worker that
//! does what each request's script name says. No PHP involved.
//!
//! Time: a pool with real processes cannot run on paused tokio time
//! throughout (the clock would jump past `spawn_timeout` while a child
//! starts), so these tests pause it only around a wait that is for a timer
//! alone (queue and request timeouts), and otherwise wait for a condition
//! with a deadline.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use fastcgi::ParamsWriter;
use fastcgi::client::{ClientError, REQUEST_ID, ResponseEvent};
use fastcgi::record::{RecordType, Role, put_begin_request, put_stream, put_stream_end};
use pool::{
    AcquireError, KillReason, Lease, Manager, PoolConfig, RequestInfo, SocketKind, WorkerCommand,
    WorkerPool,
};

const FAKE_WORKER: &str = env!("CARGO_BIN_EXE_fake-fcgi-worker");

/// How far past a deadline paused time may land (timers have millisecond
/// resolution).
const SLACK: Duration = Duration::from_millis(5);

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A static pool of `workers` fake workers on unix sockets.
    fn config(&self, workers: usize) -> PoolConfig {
        let run = self.dir.path().join("run");
        pool::socket::prepare_socket_dir(&run).unwrap();
        self.config_on(workers, SocketKind::Unix { dir: run })
    }

    fn config_on(&self, workers: usize, socket: SocketKind) -> PoolConfig {
        let mut config = PoolConfig::with_command(
            "fake",
            WorkerCommand {
                program: FAKE_WORKER.into(),
                args: vec![],
                env: vec![("FAKE_WORKER_FAIL_FILE".into(), self.fail_file().into())],
                cwd: None,
                credentials: None,
                launch: Default::default(),
                socket,
            },
        );
        config.manager = Manager::Static;
        config.min_workers = workers;
        config.max_workers = workers;
        config.start_workers = workers;
        config
    }

    /// While this file exists, new workers exit at start.
    fn fail_file(&self) -> PathBuf {
        self.dir.path().join("fail-at-start")
    }
}

/// What a worker answered.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    stderr: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The process that answered.
    fn pid(&self) -> u32 {
        self.header("X-Fake-Pid").unwrap().parse().unwrap()
    }

    /// Requests that process has answered, this one included.
    fn served(&self) -> u64 {
        self.header("X-Fake-Requests").unwrap().parse().unwrap()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes a whole request for `script` into the lease's connection.
async fn send(lease: &mut Lease, script: &str, body: &[u8]) {
    lease.begin(RequestInfo::new("POST", script, script, body.len() as u64));
    let conn = lease.connection();
    let buf = conn.write_buf();
    put_begin_request(buf, REQUEST_ID, Role::Responder, true);
    let mut params = ParamsWriter::new(buf, REQUEST_ID);
    params.pair(b"REQUEST_METHOD", b"POST");
    params.pair(b"SCRIPT_NAME", script.as_bytes());
    params.finish();
    if !body.is_empty() {
        put_stream(buf, RecordType::Stdin, REQUEST_ID, body);
    }
    put_stream_end(buf, RecordType::Stdin, REQUEST_ID);
    conn.flush().await.expect("write the request");
    lease.sent();
}

/// Reads a response up to END_REQUEST.
async fn read(lease: &mut Lease) -> Result<Answer, ClientError> {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    loop {
        match lease.connection().next_event().await? {
            ResponseEvent::Stdout(data) => stdout.extend_from_slice(&data),
            ResponseEvent::Stderr(data) => stderr.extend_from_slice(&data),
            ResponseEvent::End(_) => break,
        }
    }
    let split = stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a CGI head");
    let head = String::from_utf8_lossy(&stdout[..split]).into_owned();
    let headers: Vec<(String, String)> = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let status = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("status"))
        .and_then(|(_, v)| v.get(..3)?.parse().ok())
        .unwrap_or(200);
    Ok(Answer {
        status,
        headers,
        body: stdout[split + 4..].to_vec(),
        stderr,
    })
}

/// One request through the pool, as a front end does it.
async fn request(pool: &WorkerPool, script: &str) -> Answer {
    request_with_body(pool, script, b"").await
}

async fn request_with_body(pool: &WorkerPool, script: &str, body: &[u8]) -> Answer {
    let mut lease = pool.acquire().await.expect("a worker");
    send(&mut lease, script, body).await;
    let answer = read(&mut lease).await.expect("a whole response");
    lease.complete();
    answer
}

/// Polls a queued `acquire` once, so it takes its place in the queue.
async fn enqueue<F: Future>(future: &mut Pin<Box<F>>) {
    std::future::poll_fn(|cx| {
        assert!(
            future.as_mut().poll(cx).is_pending(),
            "expected to wait in the queue"
        );
        Poll::Ready(())
    })
    .await;
}

/// Waits (real time) until `check` holds; fails the test after 10 s.
async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X') | None)
    })
}

#[tokio::test]
async fn the_fake_worker_does_what_its_requests_say() {
    let fixture = Fixture::new();
    let pool = WorkerPool::start(fixture.config(1)).await.unwrap();
    let echo = request_with_body(&pool, "/echo", b"body bytes").await;
    assert_eq!((echo.status, echo.text().as_str()), (200, "body bytes"));
    assert_eq!(echo.pid(), pool.pids()[0]);
    assert_eq!(echo.served(), 1, "the probe is not counted");

    let big = request(&pool, "/big/1048576").await;
    assert_eq!(big.body.len(), 1 << 20);
    assert!(big.body.starts_with(b"abcdefghijklmnopqrstuvwxyzabc"));

    let stderr = request(&pool, "/stderr").await;
    assert_eq!(stderr.text(), "ok");
    assert_eq!(stderr.stderr, b"fake worker stderr line\n");

    assert_eq!(request(&pool, "/status/503").await.status, 503);
    assert_eq!(request(&pool, "/sleep/20").await.text(), "slept");
    assert_eq!(request(&pool, "/nothing").await.status, 404);
    let params = request(&pool, "/params").await.text();
    assert!(params.contains("SCRIPT_NAME=/params\n"), "{params}");
    assert_eq!(request(&pool, "/echo").await.served(), 7);
    pool.drain(Duration::from_secs(5)).await;
    assert!(pool.pids().is_empty());
}

#[tokio::test]
async fn tcp_worker_sockets_work_too() {
    let fixture = Fixture::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    drop(taken);
    let socket = SocketKind::Tcp {
        host: "127.0.0.1".parse().unwrap(),
        ports: port..port.saturating_add(200),
    };
    let pool = WorkerPool::start(fixture.config_on(2, socket))
        .await
        .unwrap();
    assert_eq!(
        request_with_body(&pool, "/echo", b"tcp").await.text(),
        "tcp"
    );
    pool.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn requests_take_idle_workers_most_recently_used_first() {
    let fixture = Fixture::new();
    let pool = WorkerPool::start(fixture.config(3)).await.unwrap();
    // Sequential requests stay on one warm worker.
    let first = request(&pool, "/echo").await.pid();
    for _ in 0..5 {
        assert_eq!(request(&pool, "/echo").await.pid(), first);
    }
    // Concurrent ones each get an idle worker at once, without queueing.
    let mut leases = Vec::new();
    for _ in 0..3 {
        leases.push(pool.acquire().await.unwrap());
    }
    let mut pids: Vec<u32> = leases.iter().map(|lease| lease.pid()).collect();
    assert_eq!(pids[0], first, "the most recently used goes first");
    pids.sort();
    let mut all = pool.pids();
    all.sort();
    assert_eq!(pids, all);
    let status = pool.status();
    assert_eq!((status.busy, status.idle, status.queued), (3, 0, 0));
    for mut lease in leases {
        send(&mut lease, "/echo", b"x").await;
        assert_eq!(read(&mut lease).await.unwrap().text(), "x");
        lease.complete();
    }
    assert_eq!(pool.status().completed, 9);
    pool.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn queued_requests_get_freed_workers_in_arrival_order() {
    let fixture = Fixture::new();
    let pool = WorkerPool::start(fixture.config(1)).await.unwrap();
    let busy = pool.acquire().await.unwrap();
    let worker = busy.pid();
    let mut first = Box::pin(pool.acquire());
    let mut second = Box::pin(pool.acquire());
    enqueue(&mut first).await;
    enqueue(&mut second).await;
    assert_eq!(pool.status().queue_len, 2);
    // The freed worker goes straight to the first in line...
    busy.complete();
    let lease = first.await.unwrap();
    assert_eq!(lease.pid(), worker);
    // The second still waits...
    enqueue(&mut second).await;
    // ...until the first is done with it.
    lease.complete();
    let mut lease = second.await.unwrap();
    send(&mut lease, "/echo", b"last").await;
    assert_eq!(read(&mut lease).await.unwrap().text(), "last");
    lease.complete();
    let status = pool.status();
    assert_eq!((status.queued, status.queue_len, status.busy), (2, 0, 0));
    pool.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_full_queue_refuses_at_once() {
    let fixture = Fixture::new();
    let mut config = fixture.config(1);
    config.max_queue = 2;
    let pool = WorkerPool::start(config).await.unwrap();
    let busy = pool.acquire().await.unwrap();
    let mut queued = [Box::pin(pool.acquire()), Box::pin(pool.acquire())];
    for waiting in &mut queued {
        enqueue(waiting).await;
    }
    // The front end answers this one 503 + Retry-After.
    assert_eq!(
        pool.acquire().await.err(),
        Some(AcquireError::QueueFull {
            pool: "fake".into(),
            max_queue: 2
        })
    );
    assert_eq!(pool.status().rejected_queue_full, 1);
    // The queue is unharmed: both waiting requests are served in turn.
    busy.complete();
    for waiting in queued {
        waiting.await.unwrap().complete();
    }
    assert_eq!(request(&pool, "/echo").await.status, 200);
    pool.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_queued_request_gives_up_at_queue_timeout() {
    let fixture = Fixture::new();
    let pool = WorkerPool::start(fixture.config(1)).await.unwrap();
    let busy = pool.acquire().await.unwrap();
    // The default queue_timeout (30 s) passes on paused time: nothing but
    // timers is awaited until the request gives up.
    tokio::time::pause();
    let refused = pool.acquire().await.err();
    tokio::time::resume();
    let Some(AcquireError::QueueTimeout { waited, .. }) = refused else {
        panic!("expected a queue timeout, got {refused:?}");
    };
    let limit = pool.config().queue_timeout;
    assert!(waited >= limit && waited < limit + SLACK, "{waited:?}");
    let status = pool.status();
    assert_eq!((status.rejected_queue_timeout, status.queue_len), (1, 0));
    // The worker it waited for is fine, and free again once released.
    busy.complete();
    assert_eq!(request(&pool, "/echo").await.status, 200);
    pool.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn workers_retire_after_max_requests() {
    let fixture = Fixture::new();
    let mut config = fixture.config(1);
    config.max_requests = 3;
    let pool = WorkerPool::start(config).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..9 {
        let answer = request(&pool, "/echo").await;
        seen.push((answer.pid(), answer.served()));
    }
    // Three processes, three requests each, in order.
    for (index, chunk) in seen.chunks(3).enumerate() {
        let pid = chunk[0].0;
        assert_eq!(
            chunk,
            &[(pid, 1), (pid, 2), (pid, 3)],
            "process {index}: {seen:?}"
        );
    }
    let pids: std::collections::BTreeSet<_> = seen.iter().map(|(pid, _)| pid).collect();
    assert_eq!(pids.len(), 3, "{seen:?}");
    wait_until("the last retired worker to be replaced", || {
        pool.pids().len() == 1 && !pids.contains(&pool.pids()[0])
    })
    .await;
    let status = pool.status();
    assert_eq!(status.recycles, 3);
    assert_eq!((status.crashes, status.spawn_failures), (0, 0));
    assert!(pids.iter().all(|pid| !is_alive(**pid)));
    pool.drain(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_under_concurrent_load_fails_no_request() {
    let fixture = Fixture::new();
    let mut config = fixture.config(2);
    config.max_requests = 5;
    let pool = WorkerPool::start(config).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..4 {
        let pool = pool.clone();
        tasks.spawn(async move {
            for i in 0..25 {
                let body = format!("{task}-{i}");
                let answer = request_with_body(&pool, "/echo", body.as_bytes()).await;
                assert_eq!(answer.text(), body);
                assert!(answer.served() <= 5, "{answer:?}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let status = pool.status();
    assert_eq!(status.completed, 100);
    assert!(status.recycles >= 18, "recycles {}", status.recycles);
    assert_eq!((status.crashes, status.spawn_failures), (0, 0));
    pool.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_crash_mid_request_costs_only_that_request() {
    for crash in ["/crash", "/crash-after-headers"] {
        let fixture = Fixture::new();
        let pool = WorkerPool::start(fixture.config(3)).await.unwrap();
        // Two requests in flight on two workers, and a third that crashes.
        let mut slow = Vec::new();
        for _ in 0..2 {
            let mut lease = pool.acquire().await.unwrap();
            send(&mut lease, "/sleep/300", b"").await;
            slow.push(lease);
        }
        let mut lease = pool.acquire().await.unwrap();
        let victim = lease.pid();
        send(&mut lease, crash, b"").await;
        let error = read(&mut lease).await.expect_err("the worker crashed");
        assert!(
            matches!(error, ClientError::ConnectionClosed | ClientError::Io(_)),
            "{crash}: {error}"
        );
        lease.kill(KillReason::Broken);
        for mut lease in slow {
            assert_eq!(read(&mut lease).await.unwrap().text(), "slept", "{crash}");
            lease.complete();
        }
        wait_until("the crashed worker to be replaced", || {
            let pids = pool.pids();
            pids.len() == 3 && !pids.contains(&victim)
        })
        .await;
        assert_eq!(pool.status().crashes, 1, "{crash}");
        for _ in 0..6 {
            assert_eq!(request(&pool, "/echo").await.status, 200);
        }
        pool.drain(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn a_worker_that_exits_after_answering_is_replaced() {
    let fixture = Fixture::new();
    let pool = WorkerPool::start(fixture.config(1)).await.unwrap();
    let answer = request(&pool, "/exit-after-response").await;
    assert_eq!(answer.text(), "bye", "the answer itself is whole");
    let gone = answer.pid();
    wait_until("a replacement", || {
        let pids = pool.pids();
        pids.len() == 1 && pids[0] != gone
    })
    .await;
    let next = request(&pool, "/echo").await;
    assert_ne!(next.pid(), gone);
    assert_eq!(next.served(), 1);
    pool.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_request_past_its_timeout_kills_and_replaces_its_worker() {
    let fixture = Fixture::new();
    let pool = WorkerPool::start(fixture.config(1)).await.unwrap();
    let mut lease = pool.acquire().await.unwrap();
    let victim = lease.pid();
    send(&mut lease, "/sleep/600000", b"").await;
    // The default request_timeout (60 s) passes on paused time: the worker
    // sends nothing, so only the timer can end the wait.
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let limit = lease.request_timeout();
    let outcome = tokio::time::timeout(limit, read(&mut lease)).await;
    assert!(outcome.is_err(), "the worker answered: {outcome:?}");
    let waited = started.elapsed();
    assert!(waited >= limit && waited < limit + SLACK, "{waited:?}");
    tokio::time::resume();
    lease.kill(KillReason::Timeout);
    assert_eq!(pool.status().timeouts, 1);
    wait_until("the timed-out worker to be replaced", || {
        let pids = pool.pids();
        pids.len() == 1 && pids[0] != victim && !is_alive(victim)
    })
    .await;
    let status = pool.status();
    assert_eq!((status.crashes, status.spawn_failures), (0, 0));
    assert_eq!(request(&pool, "/echo").await.served(), 1);
    pool.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_abandoned_request_returns_its_worker_or_kills_it_at_the_timeout() {
    let fixture = Fixture::new();
    let pool = WorkerPool::start(fixture.config(1)).await.unwrap();
    // The client goes away; PHP finishes in time: the worker comes back.
    let mut lease = pool.acquire().await.unwrap();
    let worker = lease.pid();
    send(&mut lease, "/sleep/100", b"").await;
    drop(lease);
    let answer = request(&pool, "/echo").await;
    assert_eq!(answer.pid(), worker);
    assert_eq!(pool.status().completed, 2);

    // PHP runs past the request timeout: the worker is killed then.
    let mut lease = pool.acquire().await.unwrap();
    send(&mut lease, "/sleep/600000", b"").await;
    tokio::time::pause();
    drop(lease);
    // Auto-advance runs the clock to the drain's deadline and beyond.
    tokio::time::sleep(pool.config().request_timeout + Duration::from_secs(1)).await;
    tokio::time::resume();
    wait_until("the timeout to be counted", || pool.status().timeouts == 1).await;
    wait_until("a replacement", || {
        let pids = pool.pids();
        pids.len() == 1 && pids[0] != worker
    })
    .await;
    assert_eq!(request(&pool, "/echo").await.served(), 1);
    pool.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn workers_that_die_at_start_are_respawned_with_backoff() {
    let fixture = Fixture::new();
    let mut config = fixture.config(1);
    config.crash_threshold = 2;
    config.crash_window = Duration::from_secs(30);
    config.max_backoff = Duration::from_secs(2);
    let pool = WorkerPool::start(config).await.unwrap();
    // A worker that served, then crashed: its replacements die at start.
    assert_eq!(request(&pool, "/echo").await.status, 200);
    std::fs::write(fixture.fail_file(), b"").unwrap();
    let mut lease = pool.acquire().await.unwrap();
    send(&mut lease, "/crash", b"").await;
    assert!(read(&mut lease).await.is_err());
    lease.kill(KillReason::Broken);
    wait_until("crash-loop backoff", || {
        pool.status().backoff_remaining.is_some()
    })
    .await;
    // Held back: 250 ms, then 500 ms, 1 s, 2 s. Without a backoff this would
    // be hundreds of attempts a second.
    let failures = pool.status().spawn_failures;
    assert!(failures >= 2, "{failures}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let more = pool.status().spawn_failures - failures;
    assert!(more <= 3, "{more} spawns within a second of backing off");
    // Fixed: the pool recovers by itself, within the longest backoff.
    std::fs::remove_file(fixture.fail_file()).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), request(&pool, "/echo"))
        .await
        .expect("the pool recovered");
    assert_eq!(answer.served(), 1);
    assert_eq!(pool.status().crashes, 1);
    pool.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn workers_that_served_and_then_died_are_replaced_without_backoff() {
    let fixture = Fixture::new();
    let mut config = fixture.config(1);
    // A single sign of a crash loop would start a backoff...
    config.crash_threshold = 1;
    config.max_backoff = Duration::from_secs(30);
    let pool = WorkerPool::start(config).await.unwrap();
    for round in 1..=5 {
        // ...but these workers served before dying (an OOM kill, say).
        assert_eq!(request(&pool, "/echo").await.served(), 1);
        let mut lease = pool.acquire().await.unwrap();
        send(&mut lease, "/crash", b"").await;
        assert!(read(&mut lease).await.is_err());
        lease.kill(KillReason::Broken);
        wait_until("the crash to be counted", || pool.status().crashes == round).await;
        // A backoff would show now, for 250 ms doubling each round.
        assert_eq!(pool.status().backoff_remaining, None, "round {round}");
    }
    assert_eq!(pool.status().spawn_failures, 0);
    pool.drain(Duration::from_secs(5)).await;
}
