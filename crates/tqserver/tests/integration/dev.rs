//! Development mode (`tqserver --dev`, `server.mode: development`): an edit
//! is served at once, with new workers where OPcache or worker mode would
//! keep the old code; HTML pages get a script that reloads them when the app
//! changes; production does none of it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::{Runtime, Server, Site, holds_throughout, on_both_runtimes, wait_until};

/// One worker that caches compiled scripts and never checks their time
/// stamps: the production setting that makes an edit invisible. (OPcache
/// caches no file younger than `file_update_protection`, 2 s by default.)
fn site(runtime: Runtime, mode: &str) -> Site {
    Site::on(runtime)
        .server_settings(mode)
        .worker(
            "app",
            "path: /\nphp:\n  settings:\n    opcache.enable: 1\n    opcache.validate_timestamps: 0\n    opcache.file_update_protection: 0\n  pool:\n    manager: static\n    max_workers: 1\n",
        )
        .file("app", "version.php", "<?php header('Content-Type: text/plain'); echo 'v1 ', getmypid();")
        .file(
            "app",
            "page.php",
            "<?php header('Content-Type: text/html; charset=utf-8'); echo '<html><body>page</body></html>';",
        )
        .file(
            "app",
            "data.php",
            "<?php header('Content-Type: application/json'); echo '{\"a\":1}';",
        )
        .file("app", "static.html", "<html><body>static</body></html>")
        .file("app", "style.css", "body {}")
}

fn version(server: &Server) -> (String, String) {
    let response = server.get("/version.php");
    assert_eq!(response.status, 200, "{}", response.text());
    let text = response.text();
    let (version, pid) = text.split_once(' ').expect("version and pid");
    (version.to_owned(), pid.to_owned())
}

/// Rewrites version.php (a different length, so no time stamp resolution
/// can hide the edit).
fn edit(server: &Server) {
    server.site.write(
        "workers/app/public/version.php",
        "<?php header('Content-Type: text/plain'); echo 'v2-edited ', getmypid();",
    );
}

fn production_keeps_serving_cached_code(runtime: Runtime) {
    let server = site(runtime, "").start();
    let (first, pid) = version(&server);
    assert_eq!(first, "v1");
    edit(&server);
    // The same worker, the old code: what development mode is for.
    assert!(holds_throughout(Duration::from_millis(1500), || version(
        &server
    ) == (
        "v1".to_owned(),
        pid.clone()
    )));
    // No page script, no event stream.
    let page = server.get("/page.php");
    assert!(!page.text().contains("EventSource"), "{}", page.text());
    assert_eq!(server.get("/.tqserver/livereload").status, 404);
}

fn development_serves_an_edit_with_new_workers(runtime: Runtime) {
    let server = site(runtime, "  mode: development\n").start();
    let (first, old_pid) = version(&server);
    assert_eq!(first, "v1");
    edit(&server);
    wait_until("the edit is served", Duration::from_secs(15), || {
        version(&server).0 == "v2-edited"
    });
    let (_, new_pid) = version(&server);
    assert_ne!(new_pid, old_pid, "new workers serve the edit");
    assert!(
        server.wait_for_log("code changed, new workers", Duration::from_secs(5)),
        "{}",
        server.log()
    );
}

on_both_runtimes!(
    production_keeps_serving_cached_code,
    development_serves_an_edit_with_new_workers
);

/// The `since` a page's script asks the event stream with.
fn since(page: &str) -> u64 {
    let at = page.find("livereload?since=").expect("the reload script") + "livereload?since=".len();
    page[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Opens the event stream; returns the connection after its head.
fn open_events(port: u16, since: u64) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(
        stream,
        "GET /.tqserver/livereload?since={since} HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    reader
}

/// Reads the stream until its `data: reload` event, or fails.
fn read_reload(reader: &mut BufReader<TcpStream>) {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => panic!("the stream ended without a reload: {seen:?}"),
            Ok(_) => {}
        }
        seen.push_str(&line);
        if line.starts_with("data: reload") {
            return;
        }
    }
}

#[test]
fn html_pages_reload_when_the_app_changes() {
    let server = site(Runtime::Cgi, "  mode: development\n").start();
    // HTML from PHP and from a file gets the script; the page itself is
    // whole, and its length right (the connection stays usable).
    let mut conn = server.connect();
    for path in ["/page.php", "/static.html"] {
        conn.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes());
        let page = conn.read_response(false);
        assert_eq!(page.status, 200);
        let text = page.text();
        assert!(
            text.contains("page</body>") || text.contains("static</body>"),
            "{text}"
        );
        assert!(
            text.contains("new EventSource(\"/.tqserver/livereload?since="),
            "{text}"
        );
        assert_eq!(page.header("cache-control"), Some("no-store"));
    }
    // Not JSON, not a HEAD.
    let json = server.get("/data.php");
    assert_eq!(json.text(), "{\"a\":1}");
    let head =
        server.request("HEAD /page.php HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert!(head.body.is_empty());

    // A stream opened now waits; a change to a style sheet ends it with a
    // reload.
    let generation = since(&server.get("/page.php").text());
    let mut events = open_events(server.port(), generation);
    server
        .site
        .write("workers/app/public/style.css", "body { color: red }");
    read_reload(&mut events);
    // A page loaded after the change asks from the new count; one still
    // showing the old count is told to reload at once.
    let newer = since(&server.get("/page.php").text());
    assert!(newer > generation, "{newer} > {generation}");
    read_reload(&mut open_events(server.port(), generation));
    // Files apps write themselves change nothing.
    let mut quiet = open_events(server.port(), newer);
    server
        .site
        .write("workers/app/storage/logs/app.log", "written by the app");
    quiet
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(1200)))
        .unwrap();
    let mut seen = String::new();
    loop {
        let mut next = String::new();
        match quiet.read_line(&mut next) {
            Ok(0) | Err(_) => break,
            Ok(_) => seen.push_str(&next),
        }
    }
    // Only the `retry:` every stream starts with.
    assert!(seen.contains("retry: 500"), "{seen:?}");
    assert!(!seen.contains("reload"), "{seen:?}");
}

#[test]
fn dev_flag_turns_development_mode_on() {
    let server = site(Runtime::Cgi, "").start_with_args(&["--dev"]);
    let page = server.get("/page.php");
    assert!(page.text().contains("EventSource"), "{}", page.text());
    // The flag outlives a reload of the production server.yaml.
    server.site.write(
        "config/server.yaml",
        std::fs::read_to_string(server.site.config_path()).unwrap(),
    );
    server.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until("reloaded", Duration::from_secs(10), || {
        server.log().contains("configuration reloaded")
    });
    let page = server.get("/page.php");
    assert!(page.text().contains("EventSource"), "{}", page.text());
}

#[test]
fn a_worker_mode_app_reboots_on_an_edit() {
    let server = Site::on(Runtime::Embed)
        .server_settings("  mode: development\n")
        .worker(
            "app",
            "path: /\nphp:\n  worker: worker.php\n  pool:\n    manager: static\n    max_workers: 1\n",
        )
        .file("app", "lib.php", "<?php return 'boot-1';")
        .file(
            "app",
            "worker.php",
            "<?php $version = require __DIR__ . '/lib.php';\nwhile (frankenphp_handle_request(function () use ($version) { header('Content-Type: text/plain'); echo $version; })) {}\n",
        )
        .start();
    assert_eq!(server.get("/x").text(), "boot-1");
    server.site.write(
        "workers/app/public/lib.php",
        "<?php return 'boot-2, edited';",
    );
    wait_until("the edited app booted", Duration::from_secs(15), || {
        server.get("/x").text() == "boot-2, edited"
    });
}

#[test]
fn a_bad_mode_is_a_config_error() {
    let site = Site::new()
        .server_settings("  mode: staging\n")
        .worker("app", "path: /\n");
    let (ok, errors) = site.check();
    assert!(!ok);
    assert!(errors.contains("server.mode"), "{errors}");
    assert!(errors.contains("production, development"), "{errors}");
    assert!(errors.contains("server.yaml:"), "{errors}");
}
