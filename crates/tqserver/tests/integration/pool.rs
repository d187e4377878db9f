//! The pool manager seen from outside: process counts while scaling,
//! recycling, timeouts, queueing, crashes and crash loops, with real php-cgi.

use crate::support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{Conn, Server, Site, holds_throughout, wait_until};
use nix::sys::signal::Signal;

const PID_PHP: &str = "<?php echo getmypid();";
const SLEEP_PHP: &str =
    "<?php usleep((int)($_GET['ms'] ?? 100) * 1000); echo 'slept ', getmypid();";

fn pool_site(pool_yaml: &str) -> Site {
    Site::new()
        .worker("app", &format!("path: /\nphp:\n  pool:\n{pool_yaml}"))
        .file("app", "pid.php", PID_PHP)
        .file("app", "sleep.php", SLEEP_PHP)
        .file(
            "app",
            "loop.php",
            "<?php set_time_limit(0); while (true) {}",
        )
        .file(
            "app",
            "crash.php",
            "<?php usleep(200000); posix_kill(getmypid(), 9);",
        )
}

/// Runs `count` GETs of `path` concurrently; returns (status, body) of each.
fn concurrent(server: &Server, path: &str, count: usize) -> Vec<(u16, String)> {
    let port = server.port();
    let handles: Vec<_> = (0..count)
        .map(|_| {
            let path = path.to_owned();
            std::thread::spawn(move || {
                let mut conn = Conn::open(port);
                conn.send(
                    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
                let response = conn.read_response(false);
                (response.status, response.text())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Samples the number of workers every 5 ms until stopped; returns the max.
fn sample_max_workers(server: &Server, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    let pid = server.pid();
    std::thread::spawn(move || {
        let mut max = 0;
        while !stop.load(Ordering::Relaxed) {
            max = max.max(support::children_named(pid, "php-cgi").len());
            // The sampling interval, not synchronisation.
            std::thread::sleep(Duration::from_millis(5));
        }
        max
    })
}

#[test]
fn dynamic_pool_grows_under_a_burst_and_shrinks_back() {
    let server = pool_site(
        "    manager: dynamic\n    min_workers: 2\n    max_workers: 10\n    start_workers: 3\n    idle_timeout: 1s\n",
    )
    .start();
    assert_eq!(server.worker_pids().len(), 3);

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_max_workers(&server, stop.clone());
    let started = Instant::now();
    let results = concurrent(&server, "/sleep.php?ms=500", 20);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let max_seen = sampler.join().unwrap();

    assert!(
        results.iter().all(|(status, _)| *status == 200),
        "{results:?}"
    );
    let pids: std::collections::BTreeSet<_> =
        results.iter().map(|(_, body)| body.clone()).collect();
    assert_eq!(pids.len(), 10, "20 requests should have run on 10 workers");
    assert_eq!(max_seen, 10, "never more than max_workers");
    // Two waves of 0.5 s on 10 workers, not four waves on the 3 we had.
    assert!(elapsed < Duration::from_millis(1800), "{elapsed:?}");

    // Idle for 1 s, then one stop per second: back to min_workers.
    let took = wait_until("shrink to min_workers", Duration::from_secs(20), || {
        server.worker_pids().len() == 2
    });
    assert!(
        took > Duration::from_secs(5),
        "scale-down should be gentle, took {took:?}"
    );
    // And stays there: looked at all through 1.5 s, more than idle_timeout.
    assert!(
        holds_throughout(Duration::from_millis(1500), || server.worker_pids().len()
            == 2),
        "never below min_workers: {:?}",
        server.worker_pids()
    );
}

#[test]
fn ondemand_pool_starts_empty_and_empties_when_idle() {
    let server =
        pool_site("    manager: ondemand\n    max_workers: 4\n    idle_timeout: 1s\n").start();
    assert_eq!(server.worker_pids().len(), 0);
    let response = server.get("/pid.php");
    assert_eq!(response.status, 200);
    assert_eq!(server.worker_pids().len(), 1);
    wait_until("idle worker stopped", Duration::from_secs(5), || {
        server.worker_pids().is_empty()
    });
    // And it comes back on the next request.
    assert_eq!(server.get("/pid.php").status, 200);
}

#[test]
fn static_pool_replaces_a_killed_worker_and_only_its_request_fails() {
    let server = pool_site("    manager: static\n    max_workers: 4\n").start();
    let pids = server.worker_pids();
    assert_eq!(pids.len(), 4);

    // A request in flight on a worker that gets killed gets 502.
    let port = server.port();
    let in_flight = std::thread::spawn(move || {
        let mut conn = Conn::open(port);
        conn.send(b"GET /sleep.php?ms=3000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        conn.read_response(false).status
    });
    let busy = wait_for_busy_worker(&server);
    support::kill(busy, Signal::SIGKILL);
    let took = wait_until("replacement", Duration::from_secs(5), || {
        let now = server.worker_pids();
        now.len() == 4 && !now.contains(&busy)
    });
    assert!(
        took < Duration::from_millis(500),
        "replacement took {took:?}"
    );
    assert_eq!(in_flight.join().unwrap(), 502);
    // Everyone else is served.
    for (status, _) in concurrent(&server, "/pid.php", 20) {
        assert_eq!(status, 200);
    }
    assert!(
        server.log().contains("exited unexpectedly"),
        "{}",
        server.log()
    );
}

/// The pid of the one php-cgi worker that is running a (sleeping) request,
/// found by elimination: idle workers answer quick requests at once. Asked
/// again until the sleeping request has reached its worker.
fn wait_for_busy_worker(server: &Server) -> u32 {
    let mut busy = Vec::new();
    wait_until("one busy worker", Duration::from_secs(5), || {
        let all = server.worker_pids();
        let mut idle = std::collections::BTreeSet::new();
        for (_, body) in concurrent(server, "/pid.php", 12) {
            idle.insert(body.parse::<u32>().unwrap());
        }
        busy = all.into_iter().filter(|pid| !idle.contains(pid)).collect();
        busy.len() == 1
    });
    busy[0]
}

#[test]
fn max_requests_recycles_under_load_without_a_failure() {
    let server =
        pool_site("    manager: static\n    max_workers: 4\n    max_requests: 50\n").start();
    let port = server.port();
    let pids = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let pids = pids.clone();
            let failures = failures.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::open(port);
                for _ in 0..200 {
                    conn.send(b"GET /pid.php HTTP/1.1\r\nHost: x\r\n\r\n");
                    let response = conn.read_response(false);
                    if response.status == 200 {
                        pids.lock().unwrap().insert(response.text());
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    // 2000 requests, 50 each: every worker process served at most 50, so at
    // least 40 processes, i.e. 36 or more recycles beyond the first 4.
    let distinct = pids.lock().unwrap().len();
    assert!(
        distinct >= 39,
        "only {distinct} distinct workers served 2000 requests"
    );
    // The last retirees exit within their grace; then exactly 4 again.
    wait_until("4 workers", Duration::from_secs(5), || {
        server.worker_pids().len() == 4
    });
}

#[test]
fn request_timeout_gives_504_and_a_fresh_worker() {
    let server = pool_site(
        "    manager: static\n    max_workers: 3\n    request_timeout: 1s\n    kill_grace: 500ms\n",
    )
    .start();
    let before = server.worker_pids();
    let port = server.port();
    let looping = std::thread::spawn(move || {
        let started = Instant::now();
        let mut conn = Conn::open(port);
        conn.send(b"GET /loop.php HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        (conn.read_response(false).status, started.elapsed())
    });
    // Quick requests meanwhile are unaffected.
    for _ in 0..5 {
        for (status, _) in concurrent(&server, "/sleep.php?ms=50", 2) {
            assert_eq!(status, 200);
        }
    }
    let (status, took) = looping.join().unwrap();
    assert_eq!(status, 504);
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(1800),
        "{took:?}"
    );
    wait_until("worker replaced", Duration::from_secs(5), || {
        let now = server.worker_pids();
        now.len() == 3 && before.iter().filter(|p| now.contains(p)).count() == 2
    });
    assert!(server.log().contains("timed out"), "{}", server.log());
}

#[test]
fn a_full_pool_queues_with_a_bound_and_answers_503_with_retry_after() {
    let server = pool_site("    manager: static\n    max_workers: 2\n    queue_timeout: 1500ms\n")
        .with_admin()
        .start();
    let started = Instant::now();
    let results = concurrent(&server, "/sleep.php?ms=1000", 10);
    let elapsed = started.elapsed();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let rejected = results.iter().filter(|(s, _)| *s == 503).count();
    // Two run at once, two more start after 1 s (within the 1.5 s wait).
    assert_eq!(ok + rejected, 10, "{results:?}");
    assert!((2..=6).contains(&ok), "{results:?}");
    assert!(rejected >= 4, "{results:?}");
    // Nobody waited without a bound.
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    let response = {
        // 503s carry Retry-After.
        let server_port = server.port();
        let blockers: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut conn = Conn::open(server_port);
                    conn.send(
                        b"GET /sleep.php?ms=2500 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    );
                    conn.read_response(false).status
                })
            })
            .collect();
        server.wait_busy("app", 2);
        let response = server.get("/pid.php");
        for blocker in blockers {
            assert_eq!(blocker.join().unwrap(), 200);
        }
        response
    };
    assert_eq!(response.status, 503);
    assert_eq!(response.header("retry-after"), Some("1"));
    // Healthy afterwards.
    for (status, _) in concurrent(&server, "/pid.php", 4) {
        assert_eq!(status, 200);
    }
}

#[test]
fn queue_length_is_bounded_too() {
    let server = pool_site(
        "    manager: static\n    max_workers: 1\n    max_queue: 2\n    queue_timeout: 10s\n",
    )
    .start();
    let results = concurrent(&server, "/sleep.php?ms=600", 6);
    let rejected = results.iter().filter(|(s, _)| *s == 503).count();
    // One runs, two wait, three are refused at once.
    assert_eq!(rejected, 3, "{results:?}");
}

#[test]
fn a_crash_mid_request_is_a_502_for_that_request_only() {
    let server = pool_site("    manager: static\n    max_workers: 2\n").start();
    let port = server.port();
    let crash = std::thread::spawn(move || {
        let mut conn = Conn::open(port);
        conn.send(b"GET /crash.php HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        conn.read_response(false).status
    });
    let others = concurrent(&server, "/sleep.php?ms=300", 4);
    assert_eq!(crash.join().unwrap(), 502);
    assert!(others.iter().all(|(s, _)| *s == 200), "{others:?}");
    wait_until("back to 2 workers", Duration::from_secs(5), || {
        server.worker_pids().len() == 2
    });
}

#[test]
fn a_client_that_goes_away_does_not_hold_its_worker() {
    let server = pool_site("    manager: static\n    max_workers: 1\n")
        .with_admin()
        .start();
    {
        let mut conn = server.connect();
        conn.send(b"GET /sleep.php?ms=700 HTTP/1.1\r\nHost: x\r\n\r\n");
        // The script runs...
        server.wait_busy("app", 1);
        // ...and the connection is dropped: the client is gone.
    }
    let started = Instant::now();
    let response = server.get("/pid.php");
    assert_eq!(response.status, 200);
    // Served as soon as the abandoned script finished, not after a timeout.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let pid = response.text();
    assert_eq!(server.worker_pids().len(), 1);
    assert_eq!(
        server.worker_pids()[0].to_string(),
        pid,
        "the same worker was reused"
    );
}

#[test]
fn an_idle_worker_that_died_costs_no_request() {
    // Kill an idle worker and send a request at once: whether the pool has
    // noticed yet or not, the request is served (retried on another worker
    // if the first write hits the dead connection).
    let server = pool_site("    manager: static\n    max_workers: 2\n").start();
    for _ in 0..5 {
        let pids = server.worker_pids();
        // The most recently used worker takes the next request.
        let last = server.get("/pid.php").text();
        let victim: u32 = last.parse().unwrap();
        assert!(pids.contains(&victim));
        support::kill(victim, Signal::SIGKILL);
        // Dead (a zombie until tqserver reaps it), as after a crash while idle.
        wait_until("victim dead", Duration::from_secs(2), || {
            !support::is_alive(victim)
        });
        let response = server.get("/pid.php");
        assert_eq!(response.status, 200, "{}", server.log());
        wait_until("pool refilled", Duration::from_secs(5), || {
            server.worker_pids().len() == 2
        });
    }
}

#[test]
fn a_crash_loop_backs_off_instead_of_spinning() {
    // A php-cgi wrapper that works until a flag file appears.
    let site = pool_site("    manager: static\n    max_workers: 2\n");
    let flag = site.root().join("broken");
    let starts = site.root().join("starts.log");
    let wrapper = site.root().join("php-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho start >> {starts}\nif [ -e {flag} ]; then echo 'PHP Fatal: broken ini' >&2; exit 1; fi\nexec php-cgi \"$@\"\n",
            starts = starts.display(),
            flag = flag.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(&starts, "").unwrap();
    std::fs::set_permissions(&starts, std::fs::Permissions::from_mode(0o666)).unwrap();
    site.write(
        "workers/app/config/worker.yaml",
        format!(
            "path: /\nphp:\n  binary: {}\n  pool:\n    manager: static\n    max_workers: 2\n",
            wrapper.display()
        ),
    );
    let server = site.start();
    assert_eq!(server.get("/pid.php").status, 200);

    std::fs::write(&flag, "").unwrap();
    let count_starts = || std::fs::read_to_string(&starts).unwrap().lines().count();
    let before = count_starts();
    for pid in server.worker_pids() {
        support::kill(pid, Signal::SIGKILL);
    }
    // A fixed window in which spawn attempts are counted: the time is the
    // measure, not synchronisation.
    std::thread::sleep(Duration::from_secs(3));
    let attempts = count_starts() - before;
    assert!(attempts >= 2, "it must keep retrying: {attempts}");
    assert!(attempts < 25, "{attempts} spawn attempts in 3 s: spinning");
    assert!(server.log().contains("CRASH LOOP"), "{}", server.log());
    // Requests meanwhile fail fast-ish rather than hanging forever.

    // Fixed: the pool recovers by itself.
    std::fs::remove_file(&flag).unwrap();
    wait_until("recovery", Duration::from_secs(40), || {
        server.worker_pids().len() == 2
    });
    assert_eq!(server.get("/pid.php").status, 200);
}

/// One GET on a fresh connection; None when the connection broke.
fn status_of(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    std::str::from_utf8(answer.get(9..12)?).ok()?.parse().ok()
}

/// The pool's JSON from the admin endpoint.
fn pool_json(server: &Server) -> serde_json::Value {
    let response = server.admin("/status/app?json");
    assert_eq!(response.status, 200);
    serde_json::from_slice(&response.body).unwrap()
}

#[test]
fn healthy_workers_killed_from_outside_are_replaced_at_once() {
    // kill -9 of a worker that has served, every 250 ms under load (an
    // OOM-killer storm, an operator's script): each is replaced at once;
    // only the requests on the killed workers fail, and nothing backs off.
    let server = pool_site("    manager: static\n    max_workers: 4\n")
        .with_admin()
        .start();
    let port = server.port();
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed, mut slowest) = (0u32, 0u32, Duration::ZERO);
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let status = status_of(port, "/sleep.php?ms=5");
                    slowest = slowest.max(started.elapsed());
                    if status == Some(200) {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                }
                (ok, failed, slowest)
            })
        })
        .collect();

    let mut slowest_replacement = Duration::ZERO;
    for kill in 0..10 {
        // A worker that just completed a request: it has served.
        let victim: u32 = server.get("/pid.php").text().parse().unwrap();
        support::kill(victim, Signal::SIGKILL);
        let took = wait_until("replacement", Duration::from_secs(20), || {
            let now = server.worker_pids();
            now.len() == 4 && !now.contains(&victim)
        });
        slowest_replacement = slowest_replacement.max(took);
        let backoff = pool_json(&server)["backoff remaining"].as_f64().unwrap();
        assert_eq!(backoff, 0.0, "kill {kill}: the pool backed off");
        // A kill every 250 ms: pacing that is the point of the test.
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed, mut slowest) = (0, 0, Duration::ZERO);
    for thread in load {
        let (o, f, s) = thread.join().unwrap();
        ok += o;
        failed += f;
        slowest = slowest.max(s);
    }
    assert!(
        slowest_replacement < Duration::from_secs(1),
        "a killed worker took {slowest_replacement:?} to be replaced"
    );
    assert!(failed <= 10, "{failed} failed requests for 10 kills");
    assert!(ok > 100, "only {ok} requests served in about 3 s");
    assert!(
        slowest < Duration::from_secs(2),
        "a request waited {slowest:?}"
    );
    assert_eq!(pool_json(&server)["crashes"], 10);
    assert!(!server.log().contains("CRASH LOOP"), "{}", server.log());
}

#[test]
fn a_script_that_kills_every_fresh_worker_is_a_crash_loop() {
    // Workers that die on their first request never served: that is a
    // loop, and spawning backs off.
    let server = pool_site("    manager: static\n    max_workers: 2\n")
        .file("app", "die.php", "<?php posix_kill(getmypid(), 9);")
        .start();
    for _ in 0..6 {
        assert_eq!(server.get("/die.php").status, 502);
    }
    assert!(
        server.wait_for_log("CRASH LOOP", Duration::from_secs(5)),
        "{}",
        server.log()
    );
}

#[test]
fn no_worker_survives_kill_9_of_tqserver_under_load() {
    let mut server =
        pool_site("    manager: dynamic\n    min_workers: 2\n    max_workers: 6\n").start();
    let port = server.port();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                        return;
                    };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut stream = stream;
                    use std::io::{Read, Write};
                    let _ = stream.write_all(
                        b"GET /sleep.php?ms=20 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    );
                    let mut sink = Vec::new();
                    let _ = stream.read_to_end(&mut sink);
                    if sink.starts_with(b"HTTP/1.1 200") {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Under load: requests flowing, the pool grown past min_workers.
    wait_until(
        "the pool to grow under load",
        Duration::from_secs(10),
        || answered.load(Ordering::Relaxed) >= 50 && server.worker_pids().len() > 2,
    );
    let pids = server.kill9();
    assert!(!pids.is_empty());
    assert!(
        support::wait_gone(&pids, Duration::from_secs(1)),
        "php-cgi left behind"
    );
    stop.store(true, Ordering::Relaxed);
    for thread in load {
        let _ = thread.join();
    }
}
