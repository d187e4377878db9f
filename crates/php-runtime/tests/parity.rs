//! Parity: the same FastCGI requests through php-cgi and through tqserver-php
//! must produce the same response (head, body and STDERR), apart from lines
//! documented in docs/RUNTIME.md (none in this corpus: the pid and temporary
//! names are not printed by the script).
//!
//! Both processes serve FastCGI on a socket at fd 0, as tqserver's pool runs
//! them, and each runtime's corpus runs on one kept-alive connection, so every
//! request after a fatal error, an `exit()` or an exhausted `memory_limit` is
//! also a check that the worker serves the next request cleanly.

mod common;

use std::path::{Path, PathBuf};

use common::{Response, base, request, start};

struct Case {
    name: &'static str,
    params: Vec<(String, String)>,
    body: Vec<u8>,
}

fn get(root: &Path, name: &'static str, query: &str) -> Case {
    Case {
        name,
        params: base(root, "/dump.php", "/dump.php", query, "GET"),
        body: Vec::new(),
    }
}

fn with(mut case: Case, extra: &[(&str, &str)]) -> Case {
    for (k, v) in extra {
        case.params.retain(|(name, _)| name != k);
        case.params.push((k.to_string(), v.to_string()));
    }
    case
}

fn post(root: &Path, name: &'static str, content_type: &str, body: Vec<u8>) -> Case {
    let mut params = base(root, "/dump.php", "/dump.php", "q=1", "POST");
    params.push(("CONTENT_TYPE".into(), content_type.into()));
    params.push(("CONTENT_LENGTH".into(), body.len().to_string()));
    Case { name, params, body }
}

fn corpus(root: &Path) -> Vec<Case> {
    let multipart = b"--XyZ\r\nContent-Disposition: form-data; name=\"field\"\r\n\r\nvalue\r\n--XyZ\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nfile contents\r\n--XyZ--\r\n".to_vec();
    let mut cases = vec![
        get(root, "simple GET", "a=1&b[]=2&b[]=3&c"),
        get(root, "no query", ""),
        with(get(root, "HEAD", ""), &[("REQUEST_METHOD", "HEAD")]),
        post(
            root,
            "urlencoded POST",
            "application/x-www-form-urlencoded",
            b"x=1&y=%20two".to_vec(),
        ),
        post(
            root,
            "multipart upload",
            "multipart/form-data; boundary=XyZ",
            multipart,
        ),
        post(
            root,
            "raw JSON body",
            "application/json",
            b"{\"k\":[1,2,3]}".to_vec(),
        ),
        with(
            get(root, "cookies", ""),
            &[("HTTP_COOKIE", "a=1; b=two; c[x]=3")],
        ),
        with(
            get(root, "basic auth", ""),
            &[("HTTP_AUTHORIZATION", "Basic dXNlcjpwYXNz")],
        ),
        with(
            get(root, "HTTPS", ""),
            &[("HTTPS", "on"), ("REQUEST_SCHEME", "https")],
        ),
        with(
            get(root, "odd headers", ""),
            &[
                ("HTTP_X_FORWARDED_FOR", "10.0.0.1"),
                ("HTTP_ACCEPT", "*/*"),
                ("CONTENT_TYPE", ""),
            ],
        ),
        get(root, "http_response_code", "do=code404"),
        get(root, "Status header", "do=status"),
        get(root, "HTTP/1.1 status line", "do=statusline"),
        get(root, "redirect", "do=redirect"),
        get(root, "redirect 301", "do=redirect301"),
        get(root, "304 without Content-Type", "do=notmodified"),
        get(root, "several Set-Cookie", "do=cookies"),
        get(root, "output buffering", "do=ob"),
        get(root, "streaming with flush", "do=stream"),
        get(root, "headers_list", "do=headers"),
        get(root, "a large body", "do=big"),
        get(root, "exit()", "do=exit"),
        get(root, "after exit", "a=after-exit"),
        get(root, "fatal error", "do=fatal"),
        get(root, "after a fatal error", "a=after-fatal"),
        get(root, "warnings to STDERR", "do=warning"),
        get(root, "error_log()", "do=errorlog"),
        get(root, "memory_limit exhausted", "do=memory"),
        get(root, "after memory_limit", "a=after-memory"),
        get(root, "ini as set", "do=ini"),
    ];
    // PATH_INFO, the way nginx and tqserver pass it, and the way
    // cgi.fix_pathinfo finds it when only SCRIPT_FILENAME names it.
    let mut path_info = base(root, "/dump.php", "/dump.php/extra/path", "", "GET");
    path_info.push(("PATH_INFO".into(), "/extra/path".into()));
    cases.push(Case {
        name: "PATH_INFO given",
        params: path_info,
        body: Vec::new(),
    });
    let mut fixed = base(
        root,
        "/dump.php/extra/path",
        "/dump.php/extra/path",
        "",
        "GET",
    );
    fixed.push(("PATH_INFO".into(), "/dump.php/extra/path".into()));
    cases.push(Case {
        name: "PATH_INFO found by fix_pathinfo",
        params: fixed,
        body: Vec::new(),
    });
    cases.push(Case {
        name: "odd path",
        params: base(root, "/dump.php", "/dump.php/%2e%2e/a%20b", "x=%00y", "GET"),
        body: Vec::new(),
    });
    cases.push(Case {
        name: "missing script",
        params: base(root, "/missing.php", "/missing.php", "", "GET"),
        body: Vec::new(),
    });
    cases.push(Case {
        name: ".user.ini and auto_prepend_file",
        params: base(root, "/sub/dump.php", "/sub/dump.php", "do=ini", "GET"),
        body: Vec::new(),
    });
    cases.push(get(root, "after a directory with .user.ini", "do=ini"));
    cases
}

/// Session ids differ by design: the cookie value is replaced.
fn normalize(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).into_owned();
    text.lines()
        .map(|line| {
            if let Some(rest) = line.strip_prefix("Set-Cookie: PHPSESSID=") {
                let tail = rest.split_once(';').map(|(_, t)| t).unwrap_or("");
                format!("Set-Cookie: PHPSESSID=ID;{tail}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn fixture_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity");
    copy_dir(&source, dir.path());
    // The same script once more, below a .user.ini.
    std::fs::copy(dir.path().join("dump.php"), dir.path().join("sub/dump.php")).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn php_cgi() -> PathBuf {
    PathBuf::from("/usr/bin/php-cgi")
}

#[test]
fn php_sees_and_sends_the_same_through_both_runtimes() {
    let fixtures = fixture_dir();
    let root = std::fs::canonicalize(fixtures.path()).unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let mut cgi = start(&php_cgi(), sockets.path(), "cgi");
    let mut embed = start(
        Path::new(env!("CARGO_BIN_EXE_tqserver-php")),
        sockets.path(),
        "embed",
    );
    let mut differences = Vec::new();
    let cases = corpus(&root);
    for case in &cases {
        let a = request(&mut cgi, &case.params, &case.body);
        let b = request(&mut embed, &case.params, &case.body);
        let (a_out, b_out) = (normalize(&a.stdout), normalize(&b.stdout));
        let (a_err, b_err) = (normalize(&a.stderr), normalize(&b.stderr));
        assert!(!a_out.is_empty(), "{}: php-cgi sent nothing", case.name);
        if a_out != b_out || a_err != b_err {
            differences.push(format!(
                "== {} ==\n-- php-cgi stdout --\n{a_out}\n-- tqserver-php stdout --\n{b_out}\n-- php-cgi stderr --\n{a_err}\n-- tqserver-php stderr --\n{b_err}",
                case.name
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} requests differ:\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n")
    );
}

#[test]
fn sessions_get_different_ids_in_different_workers() {
    let fixtures = fixture_dir();
    let root = std::fs::canonicalize(fixtures.path()).unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for n in 0..2 {
        let mut worker = start(
            Path::new(env!("CARGO_BIN_EXE_tqserver-php")),
            sockets.path(),
            &format!("w{n}"),
        );
        let response = request(
            &mut worker,
            &base(&root, "/dump.php", "/dump.php", "do=session", "GET"),
            b"",
        );
        let text = String::from_utf8_lossy(&response.stdout).into_owned();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Set-Cookie: PHPSESSID="))
            .map(|v| v.split(';').next().unwrap_or_default().to_owned())
            .expect("a session cookie");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
}

/// php-fpm's PHP_VALUE and PHP_ADMIN_VALUE, which php-cgi ignores: values
/// for one request, restored after it (php-fpm keeps them in the process for
/// every later request, the known leak between sites); an admin value is
/// locked against ini_set() and .user.ini; what cannot be set per request
/// is refused with a log line and the request still runs.
#[test]
fn php_value_and_php_admin_value_apply_to_their_request_only() {
    let fixtures = fixture_dir();
    let root = std::fs::canonicalize(fixtures.path()).unwrap();
    std::fs::write(
        root.join("ini.php"),
        "<?php $set = ini_set('memory_limit', '99M') === false ? 'locked' : 'set';\n\
         echo ini_get('precision'), ' ', ini_get('upload_max_filesize'), ' ',\n\
         ini_get('memory_limit'), ' ', $set, ' ',\n\
         ini_get('html_errors'), ' ', function_exists('phpinfo') ? 'phpinfo' : 'none';",
    )
    .unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let mut worker = start(
        Path::new(env!("CARGO_BIN_EXE_tqserver-php")),
        sockets.path(),
        "ini",
    );
    let params = |extra: &[(&str, &str)]| {
        let mut params = base(&root, "/ini.php", "/ini.php", "", "GET");
        params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        params
    };
    let body = |response: &Response| {
        let text = String::from_utf8_lossy(&response.stdout).into_owned();
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or(text)
    };
    let stderr = |response: &Response| String::from_utf8_lossy(&response.stderr).into_owned();

    let plain = request(&mut worker, &params(&[]), b"");
    assert_eq!(body(&plain), "14 2M 99M set 0 phpinfo");

    // A user value applies; a PERDIR one is refused from PHP_VALUE.
    let user = request(
        &mut worker,
        &params(&[(
            "PHP_VALUE",
            "precision=5\nupload_max_filesize=9M\nno_such.key=1",
        )]),
        b"",
    );
    assert_eq!(body(&user), "5 2M 99M set 0 phpinfo");
    let log = stderr(&user);
    assert!(log.contains("PHP_VALUE: unknown, or not settable by PHP_VALUE (try PHP_ADMIN_VALUE), ignored 'upload_max_filesize'"), "{log}");
    assert!(log.contains("'no_such.key'"), "{log}");

    // An admin value applies and cannot be changed by the script.
    let admin = request(
        &mut worker,
        &params(&[
            (
                "PHP_ADMIN_VALUE",
                "upload_max_filesize=9M\nmemory_limit=77M\ndisable_functions=phpinfo",
            ),
            ("PHP_VALUE", "html_errors=1"),
        ]),
        b"",
    );
    assert_eq!(body(&admin), "14 9M 77M locked 1 phpinfo");
    assert!(
        stderr(&admin).contains("PHP_ADMIN_VALUE: cannot be set per request (use php.settings), ignored 'disable_functions'"),
        "{}",
        stderr(&admin)
    );

    // .user.ini (precision = 7 in sub/) overrides PHP_VALUE, not an admin value.
    std::fs::copy(root.join("ini.php"), root.join("sub/ini.php")).unwrap();
    let in_sub = |extra: &[(&str, &str)]| {
        let mut params = base(&root, "/sub/ini.php", "/sub/ini.php", "", "GET");
        params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        params
    };
    let under_user_ini = request(&mut worker, &in_sub(&[("PHP_VALUE", "precision=5")]), b"");
    assert!(
        body(&under_user_ini).ends_with("7 2M 99M set 0 phpinfo"),
        "{}",
        body(&under_user_ini)
    );
    let admin_under_user_ini = request(
        &mut worker,
        &in_sub(&[("PHP_ADMIN_VALUE", "precision=5")]),
        b"",
    );
    assert!(
        body(&admin_under_user_ini).ends_with("5 2M 99M set 0 phpinfo"),
        "{}",
        body(&admin_under_user_ini)
    );

    // Nothing stays for the next request.
    let after = request(&mut worker, &params(&[]), b"");
    assert_eq!(body(&after), "14 2M 99M set 0 phpinfo");
}
