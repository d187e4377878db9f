//! `type: http` apps: real Node programs (Debian's nodejs, no npm packages)
//! and a real `go build` of workers/go-hello, run, supervised and
//! reverse-proxied by tqserver.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::{Conn, Server, Site, holds_within, is_alive, kill, wait_gone, wait_until};

/// The test app: every path below its route. `VERSION` is rewritten by the
/// swap tests; `HEALTH_DELAY_MS` makes /health fail for that long after
/// the start.
const NODE_APP: &str = r#""use strict";
const http = require("http");
const VERSION = "v1";
const started = Date.now();
const healthDelay = Number(process.env.HEALTH_DELAY_MS || 0);
const prefix = process.env.WORKER_ROUTE === "/" ? "" : process.env.WORKER_ROUTE;
let sick = false;
const healthy = () => !sick && Date.now() - started >= healthDelay;
const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  if (url.pathname === "/health") {
    res.statusCode = healthy() ? 200 : 503;
    res.end(healthy() ? "ok" : "not yet");
    return;
  }
  const path = url.pathname.slice(prefix.length);
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    switch (path) {
      case "/hello":
        res.end(`${VERSION} ${healthy() ? "ready" : "early"} ${process.pid}`);
        return;
      case "/echo":
        res.setHeader("content-type", "application/json");
        res.setHeader("connection", "keep-alive, x-upstream-private");
        res.setHeader("x-upstream-private", "1");
        res.end(JSON.stringify({ url: req.url, method: req.method, headers: req.headers, body: Buffer.concat(chunks).toString() }));
        return;
      case "/env":
        res.end(JSON.stringify(process.env));
        return;
      case "/slow":
        setTimeout(() => res.end("slow done"), Number(url.searchParams.get("ms") || 1000));
        return;
      case "/events":
        // Server-sent events: the head at once, an event later.
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.flushHeaders();
        setTimeout(() => res.end("data: late\n\n"), Number(url.searchParams.get("ms") || 1000));
        return;
      case "/sick":
        sick = true;
        res.end("sick now");
        return;
      case "/crash":
        process.exit(3);
        return;
      default:
        res.statusCode = 404;
        res.end("no such page");
    }
  });
});
server.on("upgrade", (req, socket, head) => {
  // A raw echo protocol, `Upgrade: tqtest`: after the 101, every byte
  // comes back; "bye" closes.
  if ((req.headers.upgrade || "").toLowerCase() !== "tqtest") {
    socket.end("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
    return;
  }
  socket.write("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: tqtest\r\n\r\n");
  if (head.length) socket.write(head);
  socket.on("data", (d) => {
    if (d.toString().includes("bye")) { socket.end("bye\n"); return; }
    socket.write(d);
  });
});
server.keepAliveTimeout = 1000;
server.listen(Number(process.env.WORKER_PORT), "127.0.0.1");
process.on("SIGTERM", () => server.close(() => process.exit(0)));
"#;

/// A site with the Node test app `api` at `/api`; `extra` adds lines to
/// its worker.yaml.
fn node_site(extra: &str) -> Site {
    let site = Site::new().with_admin();
    site.write("workers/api/app.js", NODE_APP);
    site.write(
        "workers/api/config/worker.yaml",
        format!("type: http\npath: /api\ncommand: [node, app.js]\n{extra}"),
    );
    site
}

/// `/status` as JSON.
fn status(server: &Server) -> Value {
    serde_json::from_str(&server.admin("/status").text()).expect("/status is JSON")
}

/// The instances of http app `name` on `/status`.
fn instances(server: &Server, name: &str) -> Vec<Value> {
    let status = status(server);
    status["http apps"]
        .as_array()
        .and_then(|apps| apps.iter().find(|app| app["name"] == name))
        .and_then(|app| app["instances"].as_array().cloned())
        .unwrap_or_default()
}

fn instance_pids(server: &Server, name: &str) -> Vec<u32> {
    instances(server, name)
        .iter()
        .filter_map(|i| i["pid"].as_u64())
        .map(|pid| pid as u32)
        .collect()
}

/// Copies a folder of the repository's workers/ into the site, enabled.
fn example(site: &Site, name: &str) {
    let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../workers")
        .join(name);
    std::fs::create_dir_all(site.root().join("workers")).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(&from)
        .arg(site.root().join("workers"))
        .status()
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(site.root().join(format!("workers/{name}/bin")));
    let yaml = site
        .root()
        .join(format!("workers/{name}/config/worker.yaml"));
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(&yaml, text.replace("enabled: false", "enabled: true")).unwrap();
}

fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn routes_by_prefix_with_the_path_unchanged_beside_a_php_app() {
    let site = node_site("").worker("site", "path: /\n").file(
        "site",
        "index.php",
        "<?php echo 'php here';",
    );
    let server = site.start();

    let response = server.request(
        "POST /api/echo?x=1&y=%2F HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive, x-private\r\nX-Private: secret\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 203.0.113.9\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(response.status, 200, "{}", server.log());
    let echo: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(
        echo["url"], "/api/echo?x=1&y=%2F",
        "the path is passed unchanged"
    );
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], "hello");
    let headers = &echo["headers"];
    assert_eq!(headers["host"], "example.test");
    assert_eq!(headers["x-forwarded-host"], "example.test");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert!(
        headers.get("x-private").is_none(),
        "named in Connection: {headers}"
    );
    assert!(headers.get("keep-alive").is_none(), "hop-by-hop: {headers}");
    // And on the way back.
    assert_eq!(response.header("x-upstream-private"), None);
    assert_eq!(response.header("content-type"), Some("application/json"));

    // Other paths stay with the PHP app at / (its front controller takes
    // every URL); /apix is not under /api.
    assert_eq!(server.get("/index.php").text(), "php here");
    assert_eq!(server.get("/apix").text(), "php here");
    assert_eq!(server.get("/api/nothing").text(), "no such page");

    // Kept alive: several requests on one client connection.
    let mut conn = server.connect();
    for _ in 0..3 {
        conn.send(b"GET /api/hello HTTP/1.1\r\nHost: x\r\n\r\n");
        let response = conn.read_response(false);
        assert_eq!(response.status, 200);
        assert!(response.text().starts_with("v1 ready"));
    }
}

#[test]
fn each_instance_gets_the_env_contract_and_nothing_else() {
    let site = node_site("env:\n  GREETING: hi\n  NUMBER: 7\n");
    let server = site.start_with_env(&[("TQ_TEST_SECRET", "leak")]);
    let env: Value = serde_json::from_slice(&server.get("/api/env").body).unwrap();
    let env = env.as_object().unwrap();
    let port = instances(&server, "api")[0]["port"].as_u64().unwrap();
    assert_eq!(env["WORKER_PORT"], port.to_string());
    assert_eq!(env["WORKER_NAME"], "api");
    assert_eq!(env["WORKER_ROUTE"], "/api");
    assert_eq!(env["WORKER_MODE"], "production");
    assert_eq!(env["GREETING"], "hi");
    assert_eq!(env["NUMBER"], "7");
    assert!(env.contains_key("PATH"));
    let allowed = [
        "WORKER_PORT",
        "WORKER_NAME",
        "WORKER_ROUTE",
        "WORKER_MODE",
        "GREETING",
        "NUMBER",
        "PATH",
        "HOME",
        "LANG",
    ];
    let others: Vec<&String> = env
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    assert!(
        others.is_empty(),
        "tqserver's environment leaked: {others:?}"
    );
}

#[test]
fn an_instance_gets_no_request_before_its_health_path_answers() {
    // /health fails for 1.5 s after each start; /hello says "early" if it
    // is asked before.
    let site = node_site("env:\n  HEALTH_DELAY_MS: 1500\n");
    let started = Instant::now();
    let server = site.start();
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "served before healthy"
    );
    assert!(server.get("/api/hello").text().contains("ready"));

    // After a crash, the new process is gated the same way: meanwhile,
    // requests get 502, never the early process.
    let pid = instance_pids(&server, "api")[0];
    kill(pid, Signal::SIGKILL);
    let mut statuses = Vec::new();
    let recovered = holds_within(Duration::from_secs(10), || {
        let response = server.get("/api/hello");
        assert!(
            !response.text().contains("early"),
            "a request reached an instance before it was healthy"
        );
        statuses.push(response.status);
        response.status == 200 && !response.text().contains(&pid.to_string())
    });
    assert!(recovered, "no new instance:\n{}", server.log());
    assert!(
        statuses.contains(&502),
        "the restart was not awaited: {statuses:?}"
    );
}

#[test]
fn a_killed_instance_is_restarted_and_only_its_in_flight_request_fails() {
    let site = node_site("instances: 1\n");
    let server = site.start();
    let pid = instance_pids(&server, "api")[0];

    // A request in flight on the instance when it is killed.
    let port = server.port();
    let slow = std::thread::spawn(move || {
        let mut conn = Conn::open(port);
        conn.send(b"GET /api/slow?ms=5000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        conn.read_response(false)
    });
    wait_until(
        "the slow request is in flight",
        Duration::from_secs(5),
        || instances(&server, "api")[0]["in flight"] == 1,
    );
    kill(pid, Signal::SIGKILL);
    let failed = slow.join().unwrap();
    assert_eq!(failed.status, 502, "the in-flight request");
    assert!(
        server.wait_for_log("502: instance failed", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("502: instance failed"))
        .unwrap();
    assert!(
        line.contains("worker=api") && line.contains("instance=0"),
        "{line}"
    );

    wait_until("the instance is restarted", Duration::from_secs(10), || {
        server.get("/api/hello").status == 200
    });
    let instance = &instances(&server, "api")[0];
    assert_eq!(instance["restarts"], 1);
    assert_eq!(instance["state"], "healthy");
    assert_ne!(instance["pid"], pid, "a new process");
    assert!(!is_alive(pid));
    for _ in 0..10 {
        assert_eq!(server.get("/api/hello").status, 200);
    }
}

#[test]
fn an_instance_that_is_down_gives_502_and_a_slow_one_504() {
    // /health fails for a second after each start: the instance is down
    // for that long after its crash, whatever the machine's speed.
    let site = node_site("instances: 1\nrequest_timeout: 500ms\nenv:\n  HEALTH_DELAY_MS: 1000\n");
    let server = site.start();
    wait_until("the instance is healthy", Duration::from_secs(10), || {
        server.get("/api/hello").status == 200
    });

    let response = server.get("/api/slow?ms=3000");
    assert_eq!(response.status, 504);
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("504: no response within request_timeout"));
    assert!(
        line.is_some_and(|l| l.contains("worker=api") && l.contains("instance=0")),
        "{log}"
    );

    // The process exits mid-request, then is down until it restarts.
    assert_eq!(server.get("/api/crash").status, 502);
    let response = server.get("/api/hello");
    assert_eq!(
        response.status, 502,
        "no healthy instance right after the crash"
    );
    // Seen as gone, or (when the request raced the process's exit and
    // reached its closing socket) failed.
    let log = server.log();
    assert!(
        log.contains("502: no healthy instance")
            || log.matches("502: instance failed").count() >= 2,
        "{log}"
    );
    wait_until("the instance is back", Duration::from_secs(10), || {
        server.get("/api/hello").status == 200
    });
}

#[test]
fn a_request_body_over_max_body_bytes_is_refused() {
    let site = node_site("").server_settings("  max_body_bytes: 1K\n");
    let server = site.start();
    let big = "x".repeat(2000);
    let response = server.request(format!(
        "POST /api/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{big}",
        big.len()
    ));
    assert_eq!(response.status, 413);
    // Chunked: counted as it streams.
    let response = server.request(format!(
        "POST /api/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    ));
    assert_eq!(response.status, 413);
    let small = server.request(
        "POST /api/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    let echo: Value = serde_json::from_slice(&small.body).unwrap();
    assert_eq!(echo["body"], "abc");
}

#[test]
fn a_change_swaps_to_new_instances_under_load_with_no_failed_request() {
    let site = node_site("instances: 2\nwatch: [\"*.js\"]\n");
    let server = site.start();
    let port = server.port();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    // Clients that have been answered by the last version.
    let on_last = Arc::new(AtomicUsize::new(0));
    // Two keep-alive clients in a loop.
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, failures, done, on_last) = (
                stop.clone(),
                failures.clone(),
                done.clone(),
                on_last.clone(),
            );
            std::thread::spawn(move || {
                let mut conn = Conn::open(port);
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    conn.send(b"GET /api/hello HTTP/1.1\r\nHost: x\r\n\r\n");
                    let response = conn.read_response(false);
                    if response.status != 200 {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed: {} {}", response.status, response.text());
                    }
                    let text = response.text();
                    let version = text.split(' ').next().unwrap_or("").to_owned();
                    if seen.last() != Some(&version) {
                        if version == "v5" {
                            on_last.fetch_add(1, Ordering::Relaxed);
                        }
                        seen.push(version);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                seen
            })
        })
        .collect();
    for version in 2..=5 {
        let text = NODE_APP.replace(
            "const VERSION = \"v1\"",
            &format!("const VERSION = \"v{version}\""),
        );
        server.site.write("workers/api/app.js", text);
        let want = format!("v{version} ");
        wait_until(
            &format!("version {version} serves"),
            Duration::from_secs(10),
            || server.get("/api/hello").text().starts_with(&want),
        );
    }
    // A client's request in flight at the switch is answered by the old
    // version; the next one must reach the new.
    wait_until(
        "both clients reach the last version",
        Duration::from_secs(10),
        || on_last.load(Ordering::Relaxed) == 2,
    );
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let seen = client.join().unwrap();
        assert_eq!(seen.last().map(String::as_str), Some("v5"), "{seen:?}");
    }
    assert!(done.load(Ordering::Relaxed) > 50, "the load ran");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests during swaps:\n{}",
        server.log()
    );
    let status = status(&server);
    let app = &status["http apps"][0];
    assert_eq!(app["generation"], 5, "{app}");
    assert_eq!(app["swaps"], 4);
    // The old generations are gone.
    assert_eq!(app["instances"].as_array().unwrap().len(), 2);
    assert!(
        app["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["generation"] == 5)
    );
}

#[test]
fn stop_lets_in_flight_requests_finish_and_stops_every_instance() {
    let site = node_site("instances: 2\n");
    let mut server = site.start();
    let pids = instance_pids(&server, "api");
    assert_eq!(pids.len(), 2);
    let port = server.port();
    let slow = std::thread::spawn(move || {
        let mut conn = Conn::open(port);
        conn.send(b"GET /api/slow?ms=1500 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        conn.read_response(false)
    });
    wait_until(
        "the slow request is in flight",
        Duration::from_secs(5),
        || {
            instances(&server, "api")
                .iter()
                .any(|i| i["in flight"] == 1)
        },
    );
    server.signal(Signal::SIGTERM);
    let response = slow.join().unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "slow done");
    assert!(
        server
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    assert!(
        wait_gone(&pids, Duration::from_secs(5)),
        "instances outlived tqserver"
    );
}

#[test]
fn instances_die_with_a_killed_tqserver() {
    let site = node_site("instances: 2\n");
    let mut server = site.start();
    let pids = instance_pids(&server, "api");
    server.kill9();
    assert!(
        wait_gone(&pids, Duration::from_secs(5)),
        "instances outlived tqserver"
    );
}

#[test]
fn bad_http_app_config_names_file_line_and_key() {
    let site = Site::new();
    site.write(
        "workers/api/config/worker.yaml",
        "type: http\npath: /api\nphp:\n  binary: php-cgi\ninstances: 0\n",
    );
    let (ok, errors) = site.check();
    assert!(!ok);
    assert!(
        errors.contains("worker.yaml:3") && errors.contains("`php` is a setting of PHP apps"),
        "{errors}"
    );
    assert!(errors.contains("needs `command`"), "{errors}");
    assert!(
        errors.contains("worker.yaml:5") && errors.contains("instances"),
        "{errors}"
    );

    let site = Site::new();
    site.write(
        "workers/app/config/worker.yaml",
        "path: /\ncommand: [node, app.js]\n",
    );
    std::fs::create_dir_all(site.root().join("workers/app/public")).unwrap();
    let (ok, errors) = site.check();
    assert!(!ok);
    assert!(
        errors.contains("worker.yaml:2")
            && errors.contains("`command` is a setting of `type: http` apps"),
        "{errors}"
    );
}

#[test]
fn go_example_builds_serves_and_keeps_the_old_build_when_a_new_one_fails() {
    let site = Site::new().with_admin();
    example(&site, "go-hello");
    let server = site.start();
    let hello = server.get("/go/hello");
    assert_eq!(
        hello.text(),
        "hello from go-hello at /go (production)\n",
        "{}",
        server.log()
    );
    let echo: Value = serde_json::from_slice(&server.get("/go/echo?a=b").body).unwrap();
    assert_eq!(echo["url"], "/go/echo?a=b");

    // A change that does not compile: the old build serves on.
    let main = site_file(&server, "workers/go-hello/main.go");
    server.site.write(
        "workers/go-hello/main.go",
        main.replace("func main() {", "func main() { undefined_thing()"),
    );
    wait_until(
        "the failed build shows on /status",
        Duration::from_secs(20),
        || status(&server)["http apps"][0]["last build"]["ok"] == false,
    );
    let app = status(&server)["http apps"][0].clone();
    let output = app["last build"]["output"].as_str().unwrap();
    assert!(output.contains("undefined: undefined_thing"), "{output}");
    assert!(app["last error"].as_str().unwrap().contains("build failed"));
    assert!(
        server
            .log()
            .contains("build failed; the running instances keep serving")
    );
    assert!(server.log().contains("undefined: undefined_thing"));
    assert_eq!(
        server.get("/go/hello").text(),
        "hello from go-hello at /go (production)\n"
    );

    // Fixed: the new code serves.
    server.site.write(
        "workers/go-hello/main.go",
        main.replace("hello from", "howdy from"),
    );
    wait_until("the fixed build serves", Duration::from_secs(20), || {
        server.get("/go/hello").text().starts_with("howdy from")
    });
    assert_eq!(status(&server)["http apps"][0]["last build"]["ok"], true);
}

fn site_file(server: &Server, relative: &str) -> String {
    std::fs::read_to_string(server.site.root().join(relative)).unwrap()
}

#[test]
fn node_example_serves() {
    let site = Site::new().with_admin();
    example(&site, "node-hello");
    let server = site.start();
    assert_eq!(
        server.get("/node/hello").text(),
        "hello from node-hello at /node (production)\n"
    );
    assert_eq!(instances(&server, "node-hello").len(), 2);
}

#[test]
fn bun_example_serves() {
    if !have("bun") {
        eprintln!("SKIPPED: bun is not installed (npm install -g bun)");
        return;
    }
    let site = Site::new().with_admin();
    example(&site, "bun-hello");
    let server = site.start();
    assert_eq!(
        server.get("/bun/hello").text(),
        "hello from bun-hello at /bun (production)\n"
    );
    // The path arrives unchanged, with the body and tqserver's forwarding
    // headers.
    let echo = server.request(
        "POST /bun/echo?x=1 HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    let echo: serde_json::Value = serde_json::from_slice(&echo.body).unwrap();
    assert_eq!(echo["url"], "/bun/echo?x=1");
    assert_eq!(echo["body"], "hello");
    assert_eq!(echo["headers"]["x-forwarded-host"], "shop.test");
}

/// The test app's `Upgrade: tqtest` protocol (a raw echo; no WebSocket
/// framing, which the proxy does not look at) both ways through tqserver.
#[test]
fn an_upgraded_connection_is_relayed_both_ways_until_a_side_closes() {
    let site = node_site("instances: 1\n");
    let server = site.start();
    let mut conn = server.connect();
    conn.send(b"GET /api/tunnel HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: tqtest\r\n\r\n");
    let response = conn.read_response(false);
    assert_eq!(response.status, 101, "{}", server.log());
    assert_eq!(response.header("upgrade"), Some("tqtest"));
    assert!(
        response
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("upgrade"))
    );
    for message in ["ping 1", "ping 2 a longer one"] {
        conn.send(message.as_bytes());
        let mut echo = vec![0; message.len()];
        conn.stream().read_exact(&mut echo).unwrap();
        assert_eq!(echo, message.as_bytes());
    }
    assert_eq!(
        instances(&server, "api")[0]["in flight"],
        1,
        "the tunnel counts"
    );
    // The instance closes: the client sees its last bytes, then the end.
    conn.send(b"bye");
    assert_eq!(read_all(&mut conn), "bye\n");
    wait_until("the tunnel is gone", Duration::from_secs(5), || {
        instances(&server, "api")[0]["in flight"] == 0
    });

    // The client closes: the instance's side closes too.
    let mut conn = server.connect();
    conn.send(
        b"GET /api/tunnel HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tqtest\r\n\r\n",
    );
    assert_eq!(conn.read_response(false).status, 101);
    conn.send(b"x");
    let mut echo = [0u8; 1];
    conn.stream().read_exact(&mut echo).unwrap();
    drop(conn);
    wait_until("the tunnel is gone", Duration::from_secs(5), || {
        instances(&server, "api")[0]["in flight"] == 0
    });
    // A plain request still works, and an upgrade the app refuses is its
    // answer.
    assert_eq!(server.get("/api/hello").status, 200);
    let refused = server.request(
        "GET /api/tunnel HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: other\r\n\r\n",
    );
    assert_eq!(refused.status, 400);
}

#[test]
fn a_changed_worker_yaml_replaces_the_app_and_a_disabled_one_stops() {
    let yaml = |greeting: &str, enabled: bool| {
        format!(
            "type: http\nenabled: {enabled}\npath: /api\ncommand: [node, app.js]\ninstances: 1\nenv:\n  GREETING: {greeting}\n"
        )
    };
    let site = node_site("");
    site.write("workers/api/config/worker.yaml", yaml("one", true));
    let server = site.start();
    let greeting = |server: &Server| -> String {
        let env: Value = serde_json::from_slice(&server.get("/api/env").body).unwrap_or_default();
        env["GREETING"].as_str().unwrap_or("").to_owned()
    };
    assert_eq!(greeting(&server), "one");
    assert_eq!(
        server.metric("tqserver_http_app_instances{worker=\"api\",state=\"healthy\"}"),
        Some(1.0)
    );
    assert_eq!(
        server.metric("tqserver_http_app_swaps_total{worker=\"api\"}"),
        Some(0.0)
    );
    let old = instance_pids(&server, "api");

    // The config watcher reloads: a new app with the new env takes over.
    server
        .site
        .write("workers/api/config/worker.yaml", yaml("two", true));
    wait_until(
        "the new configuration serves",
        Duration::from_secs(10),
        || greeting(&server) == "two",
    );
    assert!(
        wait_gone(&old, Duration::from_secs(5)),
        "the old instance was not stopped"
    );
    assert!(server.log().contains("changed [api]"), "{}", server.log());

    let new = instance_pids(&server, "api");
    server
        .site
        .write("workers/api/config/worker.yaml", yaml("two", false));
    wait_until("the app is gone", Duration::from_secs(10), || {
        server.get("/api/hello").status == 404
    });
    assert!(
        wait_gone(&new, Duration::from_secs(5)),
        "the removed app's instance was not stopped"
    );
    assert!(instances(&server, "api").is_empty());
}

#[test]
fn an_instance_failing_its_health_checks_leaves_rotation_and_is_restarted() {
    let site = node_site("instances: 2\nhealth_interval: 100ms\n");
    let server = site.start();
    // One instance turns sick: it is taken out at its first failed check
    // and restarted after the third.
    let response = server.get("/api/sick");
    assert_eq!(response.text(), "sick now");
    wait_until(
        "the sick instance is restarted",
        Duration::from_secs(10),
        || {
            instances(&server, "api")
                .iter()
                .any(|i| i["restarts"] == 1 && i["state"] == "healthy")
        },
    );
    assert!(
        server.log().contains("3 health checks failed; restarting"),
        "{}",
        server.log()
    );
    for _ in 0..10 {
        assert_eq!(server.get("/api/hello").status, 200);
    }
}

#[test]
fn instances_are_told_the_development_mode() {
    let site = node_site("").server_settings("  mode: development\n");
    let server = site.start();
    let env: Value = serde_json::from_slice(&server.get("/api/env").body).unwrap();
    assert_eq!(env["WORKER_MODE"], "development");
}

fn read_all(conn: &mut Conn) -> String {
    let mut text = String::new();
    let _ = conn.stream().read_to_string(&mut text);
    text
}

/// A streamed response (server-sent events) gets its head to the client as
/// soon as the instance sends it, and its events as they come.
#[test]
fn a_streamed_head_reaches_the_client_before_the_body() {
    let server = node_site("").start();
    wait_until("the instance is healthy", Duration::from_secs(10), || {
        server.get("/api/hello").status == 200
    });
    let mut conn = Conn::open(server.port());
    let started = Instant::now();
    conn.send(b"GET /api/events?ms=3000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let head = conn.read_response(true);
    let head_after = started.elapsed();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert!(
        head_after < Duration::from_secs(2),
        "the head came after {head_after:?}, with the body"
    );
    let rest = conn.read_to_end();
    assert!(
        String::from_utf8_lossy(&rest).contains("data: late"),
        "{rest:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
}
