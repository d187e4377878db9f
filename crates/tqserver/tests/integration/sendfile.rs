//! X-Accel-Redirect and X-Sendfile from PHP: tqserver serves the named file
//! (Range, conditional requests, PHP's Content-Disposition kept), the header
//! never reaches the client, a target outside the app's `internal` /
//! `x_sendfile` places is a 500 and a log line, and the private files are
//! never reachable by their own URL.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Conn, Site};

const APP: &str = "path: /\n\
front_controller: false\n\
internal:\n  - location: /protected/\n    root: private\n\
x_sendfile: [files]\n\
php:\n  pool:\n    manager: static\n    max_workers: 1\n";

fn site() -> Site {
    let site = Site::new()
        .worker("app", APP)
        .file(
            "app",
            "accel.php",
            "<?php header('X-Accel-Redirect: /protected/report.txt');\n\
             header('Content-Disposition: attachment; filename=\"r.txt\"');\n\
             echo 'the body PHP sent';",
        )
        .file(
            "app",
            "typed.php",
            "<?php header('Content-Type: application/x-report');\n\
             header('X-Accel-Redirect: /protected/sub/deep%20name.txt?x=1');",
        )
        .file(
            "app",
            "sendfile.php",
            "<?php header('X-Sendfile: ' . dirname(__DIR__) . '/files/data.csv');",
        )
        .file(
            "app",
            "big.php",
            "<?php header('X-Accel-Redirect: /protected/big.bin');",
        )
        .file("app", "hello.php", "<?php echo 'hello';")
        .file(
            "app",
            "escape.php",
            "<?php header('X-Accel-Redirect: ' . $_GET['to']);",
        )
        .file(
            "app",
            "escape2.php",
            "<?php header('X-Sendfile: ' . $_GET['to']);",
        );
    site.write("workers/app/private/report.txt", "the private report\n");
    site.write("workers/app/private/sub/deep name.txt", "deep\n");
    site.write("workers/app/private/big.bin", vec![b'x'; 16 << 20]);
    site.write("workers/app/files/data.csv", "a,b\n1,2\n");
    site.write("workers/app/secret.txt", "never served\n");
    site
}

fn curl(port: u16, path: &str, args: &[&str]) -> (String, Vec<u8>) {
    let output = Command::new("curl")
        .args(["-s", "-D", "/dev/stderr"])
        .args(args)
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("run curl");
    (
        String::from_utf8_lossy(&output.stderr).to_ascii_lowercase(),
        output.stdout,
    )
}

#[test]
fn x_accel_redirect_serves_the_internal_file_with_phps_headers() {
    let server = site().start();
    let port = server.port();
    let (head, body) = curl(port, "/accel.php", &[]);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"the private report\n");
    assert!(
        head.contains("content-disposition: attachment; filename=\"r.txt\""),
        "{head}"
    );
    assert!(head.contains("content-type: text/plain"), "{head}");
    assert!(!head.contains("x-accel-redirect"), "{head}");
    assert!(head.contains("content-length: 19"), "{head}");

    // Range and conditional requests, as for any static file.
    let (head, body) = curl(port, "/accel.php", &["-r", "4-10"]);
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert_eq!(body, b"private");
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap()
        .trim()
        .to_owned();
    let (head, _) = curl(
        port,
        "/accel.php",
        &["-H", &format!("If-None-Match: {etag}")],
    );
    assert!(head.starts_with("http/1.1 304"), "{head}");

    // PHP's Content-Type wins; the URL is decoded, its query dropped.
    let (head, body) = curl(port, "/typed.php", &[]);
    assert!(
        head.contains("content-type: application/x-report"),
        "{head}"
    );
    assert_eq!(body, b"deep\n");

    // X-Sendfile inside an x_sendfile directory.
    let (head, body) = curl(port, "/sendfile.php", &[]);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("x-sendfile"), "{head}");
    assert_eq!(body, b"a,b\n1,2\n");

    // The private folder has no URL of its own.
    let (head, body) = curl(port, "/protected/report.txt", &[]);
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert!(!String::from_utf8_lossy(&body).contains("private report"));
}

#[test]
fn a_target_outside_the_allowed_places_is_a_500_and_a_log_line() {
    let server = site().start();
    let port = server.port();
    let secret = server.site.root().join("workers/app/secret.txt");
    for (script, target) in [
        ("escape.php", "/protected/../secret.txt".to_owned()),
        ("escape.php", "/protected/%2e%2e/secret.txt".to_owned()),
        ("escape.php", "/elsewhere/secret.txt".to_owned()),
        ("escape2.php", secret.display().to_string()),
        (
            "escape2.php",
            format!(
                "{}/files/../secret.txt",
                server.site.root().join("workers/app").display()
            ),
        ),
    ] {
        let (head, body) = curl(
            port,
            &format!("/{script}"),
            &["-G", "--data-urlencode", &format!("to={target}")],
        );
        assert!(head.starts_with("http/1.1 500"), "{target}: {head}");
        assert!(!String::from_utf8_lossy(&body).contains("never served"));
    }
    assert!(server.wait_for_log(
        "outside every place this app allows",
        Duration::from_secs(5)
    ));
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("/elsewhere/secret.txt"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("X-Accel-Redirect") && line.contains("app"),
        "{line}"
    );
}

#[test]
fn the_worker_is_free_while_the_file_goes_out_to_a_slow_client() {
    let server = site().start();
    let port = server.port();
    // A client that takes the head of the 16 MB file and then reads nothing
    // (more than the kernel's buffers take): the file is still going out.
    let mut slow = Conn::open(port);
    slow.send(b"GET /big.php HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let head = slow.read_response(true);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("16777216"));
    // The app's one worker answers at once meanwhile.
    let started = Instant::now();
    let (head, body) = curl(port, "/hello.php", &["--max-time", "5"]);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"hello");
    assert!(started.elapsed() < Duration::from_secs(4));
    // And the slow client still gets every byte.
    let rest = slow.read_to_end();
    assert_eq!(rest.len(), 16 << 20);
    assert!(rest.iter().all(|&b| b == b'x'));
}

#[test]
fn without_configuration_the_header_is_dropped_and_logged() {
    let server = Site::new()
        .worker("app", "path: /\n")
        .file(
            "app",
            "s.php",
            "<?php header('X-Sendfile: /etc/passwd'); header('X-Accel-Redirect: /x/y'); echo 'php said';",
        )
        .start();
    let (head, body) = curl(server.port(), "/s.php", &[]);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        !head.contains("x-sendfile") && !head.contains("x-accel-redirect"),
        "{head}"
    );
    assert_eq!(body, b"php said");
    assert!(server.wait_for_log("does not allow", Duration::from_secs(5)));

    let (ok, errors) = Site::new()
        .worker(
            "app",
            "path: /\ninternal:\n  - location: /p/\n    root: public/inside\n  - location: nope\n    root: missing\n",
        )
        .file("app", "inside/x", "x")
        .check();
    assert!(!ok);
    assert!(errors.contains("internal[0].root"), "{errors}");
    assert!(errors.contains("inside the document root"), "{errors}");
    assert!(errors.contains("internal[1].location"), "{errors}");
}
