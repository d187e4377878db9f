//! Per-path rules (`rules:` in worker.yaml) against real php-cgi: a denied
//! prefix answers as configured for files and scripts under every spelling
//! of its path, a static-only directory serves its files but never runs (or
//! shows) a script, and the FastCGI listener applies the same rules.

use crate::support;

use crate::support::fcgi::{FcgiConn, cgi_params};
use crate::support::{Runtime, Site, free_port, on_both_runtimes};

const SECRET_SCRIPT: &str = "<?php echo 'EXECUTED'; // source that must not show";

fn site(runtime: Runtime, fastcgi_port: u16) -> Site {
    Site::on(runtime)
        .worker(
            "wiki",
            &format!(
                "path: /wiki\n\
                 php:\n  pool:\n    manager: static\n    max_workers: 1\n\
                 fastcgi:\n  listen: 127.0.0.1:{fastcgi_port}\n\
                 rules:\n\
                 \x20 - path: /data/\n\
                 \x20   deny: 404\n\
                 \x20 - path: /conf\n\
                 \x20   deny: 403\n\
                 \x20 - glob: /images/**\n\
                 \x20   static_only: true\n\
                 \x20 - glob: /**/*.sql\n\
                 \x20   deny: 403\n"
            ),
        )
        .file(
            "wiki",
            "index.php",
            "<?php echo 'front ', $_SERVER['REQUEST_URI'];",
        )
        .file("wiki", "doku.php", "<?php echo 'doku';")
        .file("wiki", "data/pages/start.txt", "page text")
        .file("wiki", "data/index.php", SECRET_SCRIPT)
        .file("wiki", "data/run.php", SECRET_SCRIPT)
        .file("wiki", "conf/local.php", SECRET_SCRIPT)
        .file("wiki", "conf/acl.txt", "acl")
        .file("wiki", "database.txt", "not under /data")
        .file("wiki", "images/photo.jpg", "JPEG")
        .file("wiki", "images/evil.php", SECRET_SCRIPT)
        .file("wiki", "images/sub/evil.php", SECRET_SCRIPT)
        .file("wiki", "images/sub/index.php", SECRET_SCRIPT)
        .file("wiki", "backup/dump.sql", "DROP TABLE")
}

fn get(server: &support::Server, target: &str) -> support::Response {
    server.request(format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    ))
}

fn assert_hidden(response: &support::Response, target: &str) {
    let text = response.text();
    assert!(!text.contains("EXECUTED"), "{target} ran: {text}");
    assert!(!text.contains("<?php"), "{target} showed source: {text}");
    assert!(!text.contains("page text"), "{target}: {text}");
    assert!(!text.contains("DROP TABLE"), "{target}: {text}");
}

#[test]
fn a_denied_prefix_answers_as_configured_under_every_spelling() {
    let server = site(Runtime::Cgi, free_port()).start();
    for (target, status) in [
        ("/wiki/data/pages/start.txt", 404),
        ("/wiki/data/run.php", 404),
        ("/wiki/data/run.php/extra", 404),
        ("/wiki/data/", 404),
        ("/wiki/data", 404),
        ("/wiki/data/missing", 404),
        ("/wiki/%64ata/pages/start.txt", 404),
        ("/wiki/%64%61%74%61/run.php", 404),
        ("/wiki/./data/pages/start.txt", 404),
        ("/wiki/%2e/data/pages/start.txt", 404),
        ("/wiki//data/pages/start.txt", 404),
        ("/wiki/data//pages/start.txt", 404),
        ("/wiki/images/../data/pages/start.txt", 404),
        ("/wiki/images/%2e%2e/data/run.php", 404),
        ("/wiki/conf/local.php", 403),
        ("/wiki/conf/acl.txt", 403),
        ("/wiki/conf", 403),
        ("/wiki/backup/dump.sql", 403),
    ] {
        let response = get(&server, target);
        assert_eq!(response.status, status, "{target}: {}", response.text());
        assert_hidden(&response, target);
    }
    // Whole segments only: /database.txt is not under /data.
    assert_eq!(get(&server, "/wiki/database.txt").text(), "not under /data");
    assert_eq!(get(&server, "/wiki/doku.php").text(), "doku");
}

#[test]
fn a_static_only_directory_serves_files_and_never_runs_a_script() {
    let server = site(Runtime::Cgi, free_port()).start();
    let photo = get(&server, "/wiki/images/photo.jpg");
    assert_eq!(photo.status, 200);
    assert_eq!(photo.text(), "JPEG");
    assert_eq!(photo.header("content-type"), Some("image/jpeg"));
    for target in [
        "/wiki/images/evil.php",
        "/wiki/images/sub/evil.php",
        "/wiki/images/evil.php/extra",
        "/wiki/images/sub/",
        "/wiki/%69mages/evil.php",
        "/wiki/images//evil.php",
        "/wiki/data/../images/evil.php",
        "/wiki/images/./sub/evil.php",
    ] {
        let response = get(&server, target);
        assert_eq!(response.status, 403, "{target}: {}", response.text());
        assert_hidden(&response, target);
    }
    // A missing file there is the front controller's, whose code is not in
    // the directory.
    assert_eq!(
        get(&server, "/wiki/images/missing.jpg").text(),
        "front /wiki/images/missing.jpg"
    );
}

fn the_listener_applies_the_rules_to_script_filename_and_script_name(runtime: Runtime) {
    let fastcgi_port = free_port();
    let server = site(runtime, fastcgi_port).start();
    let root = server.docroot("wiki");
    let mut conn = FcgiConn::tcp(fastcgi_port);
    for (script_name, status) in [
        ("/data/run.php", 404),
        ("/data/./run.php", 404),
        ("/conf/local.php", 403),
        ("/images/evil.php", 403),
        ("/images/sub/evil.php", 403),
        ("/doku.php", 200),
    ] {
        let filename = format!("{root}{script_name}");
        let params = cgi_params(&root, &filename, script_name, "");
        let response = conn.request(1, &params, b"", true);
        assert_eq!(
            response.status(),
            status,
            "{script_name}: {}",
            response.text()
        );
        if status != 200 {
            assert!(!response.text().contains("EXECUTED"), "{script_name}");
        }
    }
    // Either path is enough. SCRIPT_NAME (below the app's route, or as
    // sent) for a script that is not under the rule's path:
    let filename = format!("{root}/doku.php");
    for script_name in ["/wiki/data/run.php", "/data/run.php"] {
        let params = cgi_params(&root, &filename, script_name, "");
        let response = conn.request(1, &params, b"", true);
        assert_eq!(response.status(), 404, "{script_name}: {}", response.text());
    }
    // SCRIPT_FILENAME under a symlinked spelling of the root, with a
    // SCRIPT_NAME no rule matches:
    let alias = server.site.root().join("alias");
    std::os::unix::fs::symlink(&root, &alias).unwrap();
    let filename = format!("{}/images/evil.php", alias.display());
    let params = cgi_params(&root, &filename, "/other/evil.php", "");
    let response = conn.request(1, &params, b"", true);
    assert_eq!(response.status(), 403, "{}", response.text());
    assert!(!response.text().contains("EXECUTED"));
    let filename = format!("{}/doku.php", alias.display());
    let params = cgi_params(&root, &filename, "/doku.php", "");
    assert_eq!(conn.request(1, &params, b"", true).body(), "doku");
}

// The listener's case runs PHP by a path the HTTP front never sends (a
// symlinked spelling of the root): on both runtimes. (The front's rules are
// decided before any PHP runs: php-cgi only.)
on_both_runtimes!(the_listener_applies_the_rules_to_script_filename_and_script_name);
