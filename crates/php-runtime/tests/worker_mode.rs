//! Worker mode (`tqserver-php --worker SCRIPT`): the script boots once and
//! handles requests in a loop with FrankenPHP's `frankenphp_handle_request()`;
//! every request gets fresh superglobals, body, status, headers, output
//! buffers and session, while the script's own globals persist.

mod common;

use std::path::Path;

use common::{Response, Worker, base, request, start_with};

const WORKER: &str = r#"<?php
$booted = microtime(true);
$served = 0;
$handler = function () use (&$served, $booted) {
    $served++;
    if (isset($_GET['status'])) {
        http_response_code((int) $_GET['status']);
        header('X-Only-Here: 1');
    }
    if (isset($_GET['throw'])) {
        throw new RuntimeException('boom');
    }
    if (isset($_GET['exit'])) {
        echo "before exit\n";
        exit(0);
    }
    if (isset($_GET['login'])) {
        session_start();
        $_SESSION['user'] = $_GET['login'];
    }
    if (isset($_GET['peek'])) {
        echo 'session=', json_encode($_SESSION ?? null), "\n";
    }
    if (isset($_GET['resume'])) {
        session_start();
        echo 'resumed=', json_encode($_SESSION), "\n";
    }
    if (isset($_GET['ob'])) {
        ob_start();
        echo "buffered and never closed\n";
    }
    echo 'served=', $served, "\n";
    echo 'worker=', $_SERVER['FRANKENPHP_WORKER'] ?? '-', "\n";
    echo 'get=', json_encode($_GET), "\n";
    echo 'post=', json_encode($_POST), "\n";
    echo 'request=', json_encode($_REQUEST), "\n";
    echo 'cookie=', json_encode($_COOKIE), "\n";
    echo 'files=', json_encode(array_map(fn ($f) => [$f['name'], $f['size'], is_file($f['tmp_name'])], $_FILES)), "\n";
    echo 'input=', file_get_contents('php://input'), "\n";
    echo 'uri=', $_SERVER['REQUEST_URI'], "\n";
    if (isset($_FILES['upload'])) {
        file_put_contents(getenv('TQ_TMP_RECORD') ?: '/dev/null', $_FILES['upload']['tmp_name']);
    }
};
while (frankenphp_handle_request($handler)) {
    gc_collect_cycles();
}
file_put_contents(__DIR__ . '/stopped', "stopped after $served\n");
"#;

struct Fixture {
    dir: tempfile::TempDir,
    worker: Worker,
}

fn fixture(script: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::write(root.join("worker.php"), script).unwrap();
    let worker_path = root.join("worker.php").display().to_string();
    let worker = start_with(
        Path::new(env!("CARGO_BIN_EXE_tqserver-php")),
        &root,
        "w",
        &[
            "--worker",
            &worker_path,
            "--document-root",
            &root.display().to_string(),
        ],
    );
    Fixture { dir, worker }
}

impl Fixture {
    fn root(&self) -> std::path::PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }

    fn get(&mut self, query: &str, extra: &[(&str, &str)]) -> Response {
        let mut params = base(&self.root(), "/index.php", "/index.php", query, "GET");
        params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        request(&mut self.worker, &params, b"")
    }

    fn post(&mut self, content_type: &str, body: &[u8]) -> Response {
        let mut params = base(&self.root(), "/index.php", "/index.php", "", "POST");
        params.push(("CONTENT_TYPE".into(), content_type.into()));
        params.push(("CONTENT_LENGTH".into(), body.len().to_string()));
        request(&mut self.worker, &params, body)
    }
}

fn text(response: &Response) -> String {
    String::from_utf8_lossy(&response.stdout).into_owned()
}

fn line<'t>(text: &'t str, key: &str) -> &'t str {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {text}"))
}

#[test]
fn the_script_boots_once_and_each_request_gets_its_own_superglobals() {
    let mut f = fixture(WORKER);
    let first = text(&f.get("a=1", &[("HTTP_COOKIE", "c=1")]));
    assert_eq!(line(&first, "served"), "1", "{first}");
    assert_eq!(line(&first, "worker"), "1");
    assert_eq!(line(&first, "get"), r#"{"a":"1"}"#);
    assert_eq!(line(&first, "request"), r#"{"a":"1"}"#);
    assert_eq!(line(&first, "cookie"), r#"{"c":"1"}"#);
    assert!(first.starts_with("X-Powered-By: PHP/"), "{first}");

    let second = text(&f.get("b=2", &[]));
    assert_eq!(line(&second, "served"), "2", "globals persist: {second}");
    assert_eq!(line(&second, "get"), r#"{"b":"2"}"#);
    assert_eq!(line(&second, "request"), r#"{"b":"2"}"#);
    assert_eq!(line(&second, "cookie"), "[]");
    assert_eq!(line(&second, "uri"), "/index.php?b=2");

    let posted = text(&f.post("application/x-www-form-urlencoded", b"p=3"));
    assert_eq!(line(&posted, "post"), r#"{"p":"3"}"#);
    assert_eq!(line(&posted, "input"), "p=3");
    let after = text(&f.get("", &[]));
    assert_eq!(line(&after, "post"), "[]");
    assert_eq!(line(&after, "input"), "");
    assert_eq!(line(&after, "served"), "4");
}

#[test]
fn status_headers_and_output_buffers_do_not_carry_over() {
    let mut f = fixture(WORKER);
    let teapot = text(&f.get("status=418", &[]));
    assert!(teapot.starts_with("Status: 418"), "{teapot}");
    assert!(teapot.contains("X-Only-Here: 1"), "{teapot}");
    let plain = text(&f.get("", &[]));
    assert!(
        !plain.contains("Status:") && !plain.contains("X-Only-Here"),
        "{plain}"
    );
    let buffered = text(&f.get("ob=1", &[]));
    assert!(buffered.contains("buffered and never closed"), "{buffered}");
    let next = text(&f.get("", &[]));
    assert!(!next.contains("buffered"), "{next}");
    assert_eq!(line(&next, "served"), "4");
}

#[test]
fn uploads_are_fresh_and_their_files_removed_after_the_request() {
    let mut f = fixture(WORKER);
    let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nfile contents\r\n--XyZ--\r\n";
    let uploaded = text(&f.post("multipart/form-data; boundary=XyZ", body));
    assert_eq!(line(&uploaded, "files"), r#"{"upload":["a.txt",13,true]}"#);
    let next = text(&f.get("", &[]));
    assert_eq!(line(&next, "files"), "[]", "{next}");
}

/// FrankenPHP's GHSA-r3xh-3r3w-47gp and GHSA-v3ph-cgqh-r8p5: one user's
/// session data must never reach the next request, whether that request
/// reads $_SESSION without starting a session or starts a new one.
#[test]
fn session_data_never_reaches_another_users_request() {
    let mut f = fixture(WORKER);
    let login = f.get("login=alice", &[]);
    let login_text = text(&login);
    let cookie = login_text
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie: {login_text}"))
        .to_owned();
    let peek = text(&f.get("peek=1", &[]));
    assert_eq!(line(&peek, "session"), "null", "{peek}");
    let stranger = text(&f.get("resume=1", &[]));
    assert_eq!(line(&stranger, "resumed"), "[]", "{stranger}");
    let alice = text(&f.get("resume=1", &[("HTTP_COOKIE", &cookie)]));
    assert_eq!(line(&alice, "resumed"), r#"{"user":"alice"}"#, "{alice}");
    let after = text(&f.get("peek=1", &[]));
    assert_eq!(line(&after, "session"), "null", "{after}");
}

#[test]
fn an_uncaught_exception_answers_500_and_ends_the_worker() {
    let mut f = fixture(WORKER);
    assert_eq!(line(&text(&f.get("", &[])), "served"), "1");
    let failed = f.get("throw=1", &[]);
    let out = text(&failed);
    assert!(out.starts_with("Status: 500"), "{out}");
    let log = String::from_utf8_lossy(&failed.stderr);
    assert!(log.contains("Uncaught RuntimeException: boom"), "{log}");
    let status = f.worker.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "the worker script ended");
}

#[test]
fn exit_sends_the_response_and_ends_the_worker() {
    let mut f = fixture(WORKER);
    let out = text(&f.get("exit=1", &[]));
    assert!(out.ends_with("before exit\n"), "{out}");
    assert!(f.worker.child.wait().unwrap().success());
}

#[test]
fn sigterm_between_requests_ends_the_loop_and_the_script_finishes() {
    let mut f = fixture(WORKER);
    assert_eq!(line(&text(&f.get("", &[])), "served"), "1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(f.worker.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(f.worker.child.wait().unwrap().success());
    let stopped = std::fs::read_to_string(f.root().join("stopped")).unwrap();
    assert_eq!(stopped, "stopped after 1\n");
}

#[test]
fn a_script_that_never_asks_for_a_request_is_an_error() {
    let mut f = fixture("<?php echo 'no loop';");
    let status = f.worker.child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
}

#[test]
fn outside_worker_mode_handle_request_throws() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::write(
        root.join("index.php"),
        "<?php try { frankenphp_handle_request(fn () => null); } catch (RuntimeException $e) { echo $e->getMessage(); }",
    )
    .unwrap();
    let mut worker = common::start(
        Path::new(env!("CARGO_BIN_EXE_tqserver-php")),
        &root,
        "plain",
    );
    let out = request(
        &mut worker,
        &base(&root, "/index.php", "/index.php", "", "GET"),
        b"",
    );
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.ends_with("called while not in worker mode (set php.worker)"),
        "{out}"
    );
}

/// Counts its requests and ends after two of them, the way Octane's worker
/// ends after MAX_REQUESTS; it takes a while to end, so the next request is
/// already waiting on its connection when it does. `?fail` throws after the
/// response was finished (fastcgi_finish_request, as Symfony's send()
/// calls it): too late for a 500.
const ENDS_AFTER_TWO: &str = r#"<?php
$boot = bin2hex(random_bytes(4));
$served = 0;
$handler = function () use (&$served, $boot) {
    $served++;
    echo "boot=$boot\nserved=$served\n";
    if (isset($_GET['fail'])) {
        fastcgi_finish_request();
        throw new RuntimeException('after the response');
    }
};
while (frankenphp_handle_request($handler)) {
    if ($served >= 2) {
        break;
    }
}
usleep(300000);
"#;

/// (boot id, requests served by that boot) of each answer.
fn boots_and_counts(f: &mut Fixture, queries: &[&str]) -> Vec<(String, String)> {
    queries
        .iter()
        .map(|query| {
            let out = text(&f.get(query, &[]));
            (
                line(&out, "boot").to_owned(),
                line(&out, "served").to_owned(),
            )
        })
        .collect()
}

/// The pool sends a worker its next request as soon as the last response
/// ended, so a script that ends on its own after a response (Octane's
/// MAX_REQUESTS) may have one waiting: the worker boots the script again
/// in the same process and serves it, as FrankenPHP restarts a worker
/// script that ends. Exiting would reset the connection under a request
/// it never read.
#[test]
fn a_script_that_ends_after_a_response_boots_again_and_serves_what_waits() {
    let mut f = fixture(ENDS_AFTER_TWO);
    let answers = boots_and_counts(&mut f, &["", "", "", "", ""]);
    let counts: Vec<&str> = answers.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(counts, ["1", "2", "1", "2", "1"], "{answers:?}");
    let boots: Vec<&str> = answers.iter().map(|(b, _)| b.as_str()).collect();
    assert!(
        boots[0] == boots[1]
            && boots[1] != boots[2]
            && boots[2] == boots[3]
            && boots[3] != boots[4],
        "a fresh boot after every two: {boots:?}"
    );
    assert!(
        f.worker.child.try_wait().unwrap().is_none(),
        "the same process serves on"
    );
}

/// An exception after the response was finished cannot be a 500: that
/// response told the pool the worker goes on. The script's state is
/// discarded all the same: it boots again for the next request.
#[test]
fn an_exception_after_the_response_was_finished_boots_the_script_again() {
    let mut f = fixture(ENDS_AFTER_TWO);
    let answers = boots_and_counts(&mut f, &["fail=1", "", "", "fail=1", ""]);
    let counts: Vec<&str> = answers.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(counts, ["1", "1", "2", "1", "1"], "{answers:?}");
    let boots: Vec<&str> = answers.iter().map(|(b, _)| b.as_str()).collect();
    assert!(
        boots[0] != boots[1]
            && boots[1] == boots[2]
            && boots[2] != boots[3]
            && boots[3] != boots[4],
        "{boots:?}"
    );
}

/// Booting again is booting: a script that fails to boot the second time
/// ends the worker as a failed start (exit status 1), so the pool backs off
/// as it does for any worker that cannot boot.
#[test]
fn a_script_that_cannot_boot_again_ends_the_worker_as_a_failed_start() {
    let mut f = fixture(
        r#"<?php
if (is_file(__DIR__ . '/booted')) {
    throw new RuntimeException('no database');
}
touch(__DIR__ . '/booted');
frankenphp_handle_request(function () { echo "served=1\n"; });
"#,
    );
    assert_eq!(line(&text(&f.get("", &[])), "served"), "1");
    let status = f.worker.child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
}
