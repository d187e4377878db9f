//! Worker mode (`php.worker`) through the whole server: each worker boots
//! the app once and handles requests in a loop; an uncaught exception, a
//! timeout or `max_requests` gets a freshly booted worker; a reload boots
//! new workers while the old ones finish; a script that cannot boot is an
//! error in the log and the status page, with backoff; nginx reaches it
//! through the FastCGI listener.

use std::time::Duration;

use crate::support::nginx::Nginx;
use crate::support::{Conn, Site, children_named, free_port, wait_until};
use nix::sys::signal::Signal;

/// Says when it boots (in tqserver's log), counts requests in a global.
const WORKER: &str = r#"<?php
error_log('booted ' . getmypid());
$served = 0;
$handler = function () use (&$served) {
    $served++;
    if (isset($_GET['throw'])) {
        throw new LogicException('thrown in a request');
    }
    if (isset($_GET['sleep'])) {
        usleep((int) $_GET['sleep'] * 1000);
    }
    header('Content-Type: text/plain');
    echo getmypid(), ' ', $served, ' ', $_SERVER['FRANKENPHP_WORKER'] ?? '-', ' ',
        $_SERVER['REQUEST_URI'], ' ', json_encode($_GET);
};
while (frankenphp_handle_request($handler)) {
}
"#;

fn app(pool: &str) -> String {
    format!(
        "path: /\nphp:\n  worker: worker.php\n  pool:\n    manager: static\n    max_workers: 1\n{pool}"
    )
}

fn site(pool: &str) -> Site {
    Site::new()
        .worker("app", &app(pool))
        .file("app", "worker.php", WORKER)
        .file(
            "app",
            "index.php",
            "<?php echo 'never runs: the worker answers';",
        )
        .file("app", "style.css", "body {}")
}

/// (pid, requests served by it, FRANKENPHP_WORKER, uri, $_GET as JSON)
fn answer(text: &str) -> (u32, u32, String, String, String) {
    let parts: Vec<&str> = text.splitn(5, ' ').collect();
    assert_eq!(parts.len(), 5, "{text}");
    (
        parts[0].parse().unwrap_or_else(|_| panic!("{text}")),
        parts[1].parse().unwrap(),
        parts[2].to_owned(),
        parts[3].to_owned(),
        parts[4].to_owned(),
    )
}

/// The pids that logged a boot.
fn boots(server: &crate::support::Server) -> Vec<String> {
    server
        .log()
        .lines()
        .filter_map(|line| line.split("booted ").nth(1))
        .map(|pid| pid.split_whitespace().next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_worker_boots_once_and_serves_every_php_request() {
    let server = site("").start();
    let first = server.get("/index.php?a=1");
    assert_eq!(first.status, 200, "{}", first.text());
    let (pid, served, marker, uri, get) = answer(&first.text());
    assert_eq!(
        (served, marker.as_str(), uri.as_str()),
        (1, "1", "/index.php?a=1")
    );
    assert_eq!(get, r#"{"a":"1"}"#);
    // A pretty URL reaches the worker through the front controller.
    let (pid2, served2, _, uri2, get2) = answer(&server.get("/users/7?b=2").text());
    assert_eq!((pid2, served2), (pid, 2));
    assert_eq!(
        (uri2.as_str(), get2.as_str()),
        ("/users/7?b=2", r#"{"b":"2"}"#)
    );
    // Static files are still tqserver's.
    let css = server.get("/style.css");
    assert_eq!((css.status, css.text().as_str()), (200, "body {}"));
    assert!(server.wait_for_log("booted", Duration::from_secs(5)));
    assert_eq!(boots(&server), [pid.to_string()], "booted once");
}

#[test]
fn an_uncaught_exception_fails_its_request_only_and_the_worker_is_replaced() {
    let server = site("").start();
    let (before, ..) = answer(&server.get("/").text());
    let failed = server.get("/?throw=1");
    assert_eq!(failed.status, 500);
    assert!(
        server.wait_for_log("thrown in a request", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let (after, served, ..) = answer(&server.get("/").text());
    assert_ne!(after, before, "a fresh worker");
    assert_eq!(served, 1);
    wait_until("two boots logged", Duration::from_secs(5), || {
        boots(&server).len() == 2
    });
}

#[test]
fn a_request_past_its_timeout_gets_504_and_a_fresh_worker() {
    let server = site("    request_timeout: 1s\n").start();
    let (before, ..) = answer(&server.get("/").text());
    assert_eq!(server.get("/?sleep=5000").status, 504);
    let (after, served, ..) = answer(&server.get("/").text());
    assert_ne!(after, before);
    assert_eq!(served, 1);
}

#[test]
fn max_requests_recycles_the_worker() {
    let server = site("    max_requests: 3\n").start();
    let pids: Vec<u32> = (0..7).map(|_| answer(&server.get("/").text()).0).collect();
    assert_eq!(pids[0], pids[2]);
    assert_ne!(pids[2], pids[3]);
    assert_eq!(pids[3], pids[5]);
    assert_ne!(pids[5], pids[6]);
}

/// A script that stops on its own after a few requests (Octane's
/// MAX_REQUESTS): the pool has already sent the next request down the
/// connection when the script ends, so the worker boots the script again
/// in its process and serves it; under concurrent load no request fails.
#[test]
fn a_script_that_stops_on_its_own_loses_no_request() {
    let script = WORKER.replace(
        "while (frankenphp_handle_request($handler)) {\n}",
        "while (frankenphp_handle_request($handler) && $served < 3) {\n}\nusleep(20000);",
    );
    assert_ne!(script, WORKER);
    let server = Site::new()
        .worker(
            "app",
            "path: /\nphp:\n  worker: worker.php\n  pool:\n    manager: static\n    max_workers: 2\n",
        )
        .file("app", "worker.php", script)
        .start();
    let port = server.port();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut conn = Conn::open(port);
                (0..10)
                    .map(|_| {
                        conn.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
                        let response = conn.read_response(false);
                        (response.status, answer(&response.text()).1)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for client in clients {
        for (status, served) in client.join().unwrap() {
            assert_eq!(status, 200, "{}", server.log());
            assert!((1..=3).contains(&served), "served {served}");
        }
    }
    assert!(
        server.log().contains("booting it again"),
        "{}",
        server.log()
    );
}

#[test]
fn a_reload_boots_new_workers_and_lets_the_old_finish() {
    let server = site("").with_admin().start();
    let (old, ..) = answer(&server.get("/").text());
    let slow = {
        let port = server.port();
        std::thread::spawn(move || {
            let mut conn = Conn::open(port);
            conn.send(b"GET /?sleep=1500 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            conn.read_response(false)
        })
    };
    crate::support::wait_until("the slow request runs", Duration::from_secs(5), || {
        server.busy_workers("app") == 1.0
    });
    server.signal(Signal::SIGHUP);
    wait_until("a new worker", Duration::from_secs(15), || {
        answer(&server.get("/").text()).0 != old
    });
    let slow = slow.join().unwrap();
    assert_eq!(slow.status, 200, "{}", slow.text());
    assert_eq!(
        answer(&slow.text()).0,
        old,
        "the old worker finished its request"
    );
    assert_eq!(boots(&server).len(), 2);
}

#[test]
fn a_worker_script_that_cannot_boot_stops_the_start_with_its_error() {
    let site = Site::new().worker("app", &app("")).file(
        "app",
        "worker.php",
        "<?php throw new RuntimeException('no database');",
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tqserver"))
        .arg("--config")
        .arg(site.config_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("pool app: worker 1 failed to start"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Uncaught RuntimeException: no database"),
        "{stderr}"
    );
    assert!(stderr.contains("failed while booting"), "{stderr}");
}

/// A worker that stops booting while the server runs (its database went
/// away): the pool backs off instead of forking in a loop, the status page
/// says so, and it recovers once the script boots again.
#[test]
fn a_worker_that_stops_booting_backs_off_and_recovers() {
    let script = WORKER.replacen(
        "<?php\n",
        "<?php\nif (is_file(__DIR__ . '/broken')) { throw new RuntimeException('no database'); }\n",
        1,
    );
    let server = Site::new()
        .with_admin()
        .worker("app", &app(""))
        .file("app", "worker.php", script)
        .start();
    assert_eq!(server.get("/x").status, 200);
    server.site.write("workers/app/public/broken", "");
    assert_eq!(server.get("/x?throw=1").status, 500);
    assert!(
        server.wait_for_log("no database", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    let status = || -> serde_json::Value {
        serde_json::from_str(&server.admin("/status/app?json").text()).unwrap()
    };
    wait_until("crash-loop backoff", Duration::from_secs(10), || {
        status()["backoff remaining"].as_f64().unwrap() > 0.0
    });
    assert!(server.log().contains("CRASH LOOP"), "{}", server.log());
    // Backing off: a few more starts at most, not hundreds.
    let before = status()["spawn failures"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let after = status()["spawn failures"].as_u64().unwrap();
    assert!(
        after - before <= 4,
        "{before} then {after} failed starts in 2 s"
    );
    std::fs::remove_file(server.site.root().join("workers/app/public/broken")).unwrap();
    wait_until("a worker boots again", Duration::from_secs(40), || {
        server.get("/x").status == 200
    });
    let page: serde_json::Value =
        serde_json::from_str(&server.admin("/status/app?json&full").text()).unwrap();
    let boot = page["processes"][0]["start duration"].as_u64().unwrap();
    assert!(boot > 0 && boot < 30_000_000, "boot time in µs: {page}");
}

#[test]
fn nginx_reaches_the_worker_through_the_fastcgi_listener() {
    let port = free_port();
    let server = Site::new()
        .worker(
            "app",
            &format!("{}fastcgi:\n  listen: 127.0.0.1:{port}\n", app("")),
        )
        .file("app", "worker.php", WORKER)
        .file("app", "index.php", "<?php echo 'never runs';")
        .start();
    let root = server.docroot("app");
    let nginx = Nginx::start(
        &format!("upstream tq {{ server 127.0.0.1:{port}; keepalive 4; }}"),
        &format!(
            "root {root};\n\
             location / {{ try_files $uri /index.php$is_args$args; }}\n\
             location ~ \\.php$ {{\n\
               include /etc/nginx/fastcgi_params;\n\
               fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;\n\
               fastcgi_pass tq; fastcgi_keep_conn on;\n\
             }}"
        ),
    );
    let (pid, served, marker, uri, get) = answer(&nginx.get("/posts/1?x=y").text());
    assert_eq!((served, marker.as_str()), (1, "1"));
    assert_eq!(
        (uri.as_str(), get.as_str()),
        ("/posts/1?x=y", r#"{"x":"y"}"#)
    );
    let (pid2, served2, ..) = answer(&server.get("/").text());
    assert_eq!((pid2, served2), (pid, 2), "one worker for both fronts");
    assert_eq!(children_named(server.pid(), "tqserver-php").len(), 1);
}

#[test]
fn worker_config_errors_say_what_to_do() {
    for (yaml, expected) in [
        (
            "path: /\nphp:\n  runtime: cgi\n  worker: worker.php\n",
            "worker mode needs php.runtime: embed",
        ),
        (
            "path: /\nphp:\n  worker: missing.php\n",
            "missing.php: No such file or directory",
        ),
        (
            "path: /\nphp:\n  worker: ../outside.php\n",
            "must name a script inside the document root",
        ),
    ] {
        let site = Site::new()
            .worker("app", yaml)
            .file("app", "worker.php", WORKER);
        let (passed, stderr) = site.check();
        assert!(!passed, "{yaml}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(
            stderr.contains("worker.yaml:4") || stderr.contains("worker.yaml:3"),
            "names the line: {stderr}"
        );
        assert!(stderr.contains("php.worker"), "names the key: {stderr}");
    }
}
