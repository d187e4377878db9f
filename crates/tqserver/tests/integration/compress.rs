//! Response compression (`server.compression`) as curl sees it: brotli, zstd
//! and gzip by Accept-Encoding for PHP output and static files, Vary, never
//! for Range, HEAD or images, precompressed siblings, and streamed PHP
//! output that reaches the client piece by piece.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::Site;

const APP: &str = "path: /\n";

/// A page of about 20 KB that compresses well.
fn page() -> String {
    (0..400)
        .map(|i| format!("<p>line {i} of a page that compresses well</p>\n"))
        .collect()
}

/// curl's response: headers (lower-case names) and the body as curl
/// decoded it.
struct Curl {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Curl {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `curl -s -D - URL ARGS...`, with `--compressed` so curl decodes what it
/// gets (and checks it decodes).
fn curl(port: u16, path: &str, args: &[&str]) -> Curl {
    let headers_file = tempfile::NamedTempFile::new().unwrap();
    let output = Command::new("curl")
        .args(["-s", "--compressed", "-D"])
        .arg(headers_file.path())
        .args(args)
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(headers_file.path()).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers = text
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Curl {
        status,
        headers,
        body: output.stdout,
    }
}

fn site() -> Site {
    Site::new()
        .worker("app", APP)
        .file("app", "page.php", "<?php readfile(__DIR__ . '/page.txt');")
        .file("app", "page.txt", page())
        .file("app", "style.css", "body { color: red; }\n".repeat(300))
        .file("app", "small.css", "a{}")
        .file("app", "image.png", vec![7u8; 8000])
}

#[test]
fn php_output_is_compressed_with_the_coding_the_client_prefers() {
    let server = site().start();
    for (accept, expected) in [
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip", "gzip"),
        ("gzip;q=0.5, br;q=0.8, zstd;q=0.1", "br"),
        ("gzip, deflate, br, zstd", "br"),
        ("br;q=0, *", "zstd"),
    ] {
        let response = curl(
            server.port(),
            "/page.php",
            &["-H", &format!("Accept-Encoding: {accept}")],
        );
        assert_eq!(
            response.header("content-encoding"),
            Some(expected),
            "Accept-Encoding: {accept}"
        );
        assert_eq!(response.header("vary"), Some("Accept-Encoding"));
        assert!(
            response.body == page().as_bytes(),
            "{accept}: the page whole"
        );
    }
    // Nothing accepted: sent as it is, still with Vary.
    for accept in ["identity", "identity;q=0", "br;q=0, gzip;q=0"] {
        let response = curl(
            server.port(),
            "/page.php",
            &["-H", &format!("Accept-Encoding: {accept}")],
        );
        assert_eq!(response.header("content-encoding"), None, "{accept}");
        assert_eq!(response.header("vary"), Some("Accept-Encoding"));
        assert!(
            response.body == page().as_bytes(),
            "{accept}: the page whole"
        );
    }
    // HEAD: no body to compress.
    let response = curl(
        server.port(),
        "/page.php",
        &["-I", "-H", "Accept-Encoding: br"],
    );
    assert_eq!(response.header("content-encoding"), None);
    assert_eq!(response.header("vary"), Some("Accept-Encoding"));
}

#[test]
fn static_files_are_compressed_by_type_and_size_never_for_ranges() {
    let server = site().start();
    let css = "body { color: red; }\n".repeat(300);
    let response = curl(
        server.port(),
        "/style.css",
        &["-H", "Accept-Encoding: gzip"],
    );
    assert_eq!(response.header("content-encoding"), Some("gzip"));
    assert_eq!(response.header("vary"), Some("Accept-Encoding"));
    assert!(response.header("etag").unwrap().starts_with("W/\""));
    assert_eq!(response.header("accept-ranges"), None);
    assert!(response.body == css.as_bytes(), "the file whole");

    // Plain: the strong ETag, the length, ranges.
    let plain = curl(
        server.port(),
        "/style.css",
        &["-H", "Accept-Encoding: identity"],
    );
    assert_eq!(plain.header("content-encoding"), None);
    assert!(plain.header("etag").unwrap().starts_with('"'));
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));

    let ranged = curl(
        server.port(),
        "/style.css",
        &["-H", "Accept-Encoding: br", "-r", "0-9"],
    );
    assert_eq!(ranged.header("content-encoding"), None);
    assert_eq!(ranged.header("content-range"), Some("bytes 0-9/6300"));
    assert_eq!(ranged.body, b"body { col");

    // Revalidating the compressed copy: a 304, with the 200's Vary (a cache
    // keeps the variants apart by it).
    let etag = response.header("etag").unwrap().to_owned();
    let revalidated = curl(
        server.port(),
        "/style.css",
        &[
            "-H",
            "Accept-Encoding: gzip",
            "-H",
            &format!("If-None-Match: {etag}"),
        ],
    );
    assert_eq!(revalidated.status, 304);
    assert_eq!(revalidated.header("vary"), Some("Accept-Encoding"));

    let image = curl(server.port(), "/image.png", &["-H", "Accept-Encoding: br"]);
    assert_eq!(image.header("content-encoding"), None);
    assert_eq!(image.header("vary"), None, "a PNG is never compressed");
    assert_eq!(image.body.len(), 8000);
    let image_etag = image.header("etag").unwrap().to_owned();
    let image_304 = curl(
        server.port(),
        "/image.png",
        &[
            "-H",
            "Accept-Encoding: br",
            "-H",
            &format!("If-None-Match: {image_etag}"),
        ],
    );
    assert_eq!(image_304.status, 304);
    assert_eq!(image_304.header("vary"), None);

    let small = curl(server.port(), "/small.css", &["-H", "Accept-Encoding: br"]);
    assert_eq!(small.header("content-encoding"), None, "under min_size");
    assert_eq!(small.body, b"a{}");
}

#[test]
fn configuration_chooses_algorithms_types_and_an_app_can_turn_it_off() {
    let server = site()
        .server_settings(
            "  compression:\n    algorithms: [gzip]\n    types: [text/*]\n    min_size: 10\n",
        )
        .worker("off", "path: /off\ncompression:\n  enabled: false\n")
        .file("off", "page.php", "<?php echo str_repeat('x', 5000);")
        .start();
    let response = curl(
        server.port(),
        "/page.php",
        &["-H", "Accept-Encoding: br, gzip;q=0.1"],
    );
    assert_eq!(response.header("content-encoding"), Some("gzip"));
    let css = curl(server.port(), "/style.css", &["-H", "Accept-Encoding: br"]);
    assert_eq!(
        css.header("content-encoding"),
        None,
        "br is not in algorithms"
    );
    let off = curl(
        server.port(),
        "/off/page.php",
        &["-H", "Accept-Encoding: gzip"],
    );
    assert_eq!(off.header("content-encoding"), None);
    assert_eq!(off.header("vary"), None);
    assert_eq!(off.body.len(), 5000);

    let bad = Site::new()
        .worker(
            "app",
            "path: /\ncompression:\n  algorithms: [lzma]\n  levels: { br: 12 }\n",
        )
        .check();
    assert!(!bad.0);
    assert!(bad.1.contains("compression.algorithms[0]"), "{}", bad.1);
    assert!(
        bad.1.contains("`lzma` is not one of br, zstd, gzip"),
        "{}",
        bad.1
    );
    assert!(bad.1.contains("compression.levels.br"), "{}", bad.1);
}

#[test]
fn precompressed_siblings_are_served_when_fresh_and_accepted() {
    let css = "body { color: blue; }\n".repeat(100);
    let from_sibling = "/* the .gz sibling */\n".repeat(100);
    let gz = {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(from_sibling.as_bytes()).unwrap();
        encoder.finish().unwrap()
    };
    let br = {
        use std::io::Write;
        let mut encoder = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 20);
        encoder.write_all(b"/* the .br sibling */").unwrap();
        encoder.into_inner()
    };
    let site = site()
        .file("app", "x.css", &css)
        .file("app", "x.css.gz", &gz)
        .file("app", "x.css.br", &br)
        .file("app", "old.css", &css)
        .file("app", "old.css.gz", &gz);
    // old.css.gz is older than old.css: stale, never served.
    let old = site.root().join("workers/app/public/old.css.gz");
    let file = std::fs::File::options().write(true).open(&old).unwrap();
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let server = site.start();

    let response = curl(server.port(), "/x.css", &["-H", "Accept-Encoding: gzip"]);
    assert_eq!(response.header("content-encoding"), Some("gzip"));
    assert_eq!(
        response.header("content-type"),
        Some("text/css; charset=utf-8")
    );
    assert_eq!(response.header("vary"), Some("Accept-Encoding"));
    assert_eq!(
        response.header("content-length"),
        Some(gz.len().to_string().as_str()),
        "the sibling's own length"
    );
    assert!(
        response.body == from_sibling.as_bytes(),
        "the sibling's content"
    );

    let response = curl(
        server.port(),
        "/x.css",
        &["-H", "Accept-Encoding: gzip, br"],
    );
    assert_eq!(response.header("content-encoding"), Some("br"));
    assert_eq!(response.body, b"/* the .br sibling */");

    // A range comes from the file itself.
    let ranged = curl(
        server.port(),
        "/x.css",
        &["-H", "Accept-Encoding: gzip", "-r", "0-3"],
    );
    assert_eq!(ranged.header("content-encoding"), None);
    assert_eq!(ranged.body, b"body");

    let stale = curl(server.port(), "/old.css", &["-H", "Accept-Encoding: gzip"]);
    assert_eq!(stale.header("content-encoding"), Some("gzip"));
    assert!(
        stale.body == css.as_bytes(),
        "compressed on the fly instead"
    );
}

#[test]
fn a_flushed_chunk_reaches_the_client_compressed_before_the_script_ends() {
    let go = tempfile::Builder::new().prefix("tq-go").tempdir().unwrap();
    std::fs::set_permissions(
        go.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let marker = go.path().join("go");
    let script = format!(
        "<?php while (ob_get_level()) ob_end_flush();\n\
         echo \"first chunk\\n\"; flush();\n\
         $until = microtime(true) + 15;\n\
         while (!file_exists('{}') && microtime(true) < $until) usleep(10000);\n\
         echo \"second chunk\\n\";",
        marker.display()
    );
    let server = Site::new()
        .worker("app", "path: /\nphp:\n  response_buffering: false\n")
        .file("app", "stream.php", script)
        .server_settings("  compression:\n    min_size: 0\n")
        .start();
    for coding in ["br", "zstd", "gzip"] {
        let _ = std::fs::remove_file(&marker);
        let mut child = Command::new("curl")
            .args(["-sN", "--compressed", "-D", "/dev/stderr", "-H"])
            .arg(format!("Accept-Encoding: {coding}"))
            .arg(format!("http://127.0.0.1:{}/stream.php", server.port()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (lines, arrived) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines() {
                let _ = lines.send(line.unwrap_or_default());
            }
        });
        // The script waits up to 15 s for the marker; the first chunk must
        // arrive well before that, while it is still waiting.
        let first = arrived
            .recv_timeout(Duration::from_secs(8))
            .unwrap_or_else(|_| panic!("{coding}: the flushed chunk did not arrive"));
        assert_eq!(first, "first chunk", "{coding}");
        assert!(!marker.exists());
        std::fs::write(&marker, "").unwrap();
        let second = arrived.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(second, "second chunk", "{coding}");
        let status = child.wait().unwrap();
        let mut head = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut head).unwrap();
        assert!(status.success());
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-encoding: {coding}")),
            "{head}"
        );
    }
}
