//! 103 Early Hints from PHP on HTTP/1.1: with `php.runtime: embed`, a
//! script's `headers_send(103)` (FrankenPHP's function) sends its Link
//! headers to the client at once, while the script goes on; the final
//! response follows on the same connection.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Runtime, Site};

fn site(marker: &std::path::Path) -> Site {
    Site::on(Runtime::Embed).worker("app", "path: /\n").file(
        "app",
        "hints.php",
        format!(
            "<?php header('Link: </style.css>; rel=preload; as=style');\n\
             headers_send(103);\n\
             $until = microtime(true) + 15;\n\
             while (!file_exists('{}') && microtime(true) < $until) usleep(10000);\n\
             header('Content-Type: text/plain');\n\
             echo 'final';",
            marker.display()
        ),
    )
}

fn marker_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("tq-hints")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    dir
}

#[test]
fn early_hints_reach_the_client_before_the_script_ends() {
    let dir = marker_dir();
    let marker = dir.path().join("go");
    let server = site(&marker).start();
    let mut curl = Command::new("curl")
        .args(["-sv", "--no-buffer"])
        .arg(format!("http://127.0.0.1:{}/hints.php", server.port()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(curl.stderr.take().unwrap());
    let (lines, arrived) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines() {
            let _ = lines.send(line.unwrap_or_default());
        }
    });
    // Everything curl saw until the hint's Link header.
    let mut seen = Vec::new();
    loop {
        let line = arrived
            .recv_timeout(Duration::from_secs(8))
            .unwrap_or_else(|_| panic!("no 103 while the script waits; curl said: {seen:#?}"));
        let done = line.to_ascii_lowercase().starts_with("< link:");
        seen.push(line);
        if done {
            break;
        }
    }
    assert!(!marker.exists(), "the script is still running");
    let hints = seen
        .iter()
        .position(|l| l.starts_with("< HTTP/1.1 103 Early Hints"));
    assert!(hints.is_some(), "{seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.eq_ignore_ascii_case("< link: </style.css>; rel=preload; as=style")),
        "{seen:#?}"
    );
    std::fs::write(&marker, "").unwrap();
    let mut rest = Vec::new();
    while let Ok(line) = arrived.recv_timeout(Duration::from_secs(10)) {
        rest.push(line);
    }
    let output = curl.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(output.stdout, b"final");
    assert!(
        rest.iter().any(|l| l.starts_with("< HTTP/1.1 200 OK")),
        "the final response after the hints: {rest:#?}"
    );
}

#[test]
fn http_1_0_gets_no_interim_response() {
    let dir = marker_dir();
    let marker = dir.path().join("go");
    std::fs::write(&marker, "").unwrap();
    let server = site(&marker).start();
    let output = Command::new("curl")
        .args(["-sv", "-0"])
        .arg(format!("http://127.0.0.1:{}/hints.php", server.port()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains(" 103"), "{stderr}");
    assert!(stderr.contains("< HTTP/1.0 200 OK"), "{stderr}");
    assert_eq!(output.stdout, b"final");
}
