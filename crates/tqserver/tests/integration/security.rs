//! Security defaults: only configured extensions execute, PHP source is never
//! served, nothing outside the document root is reachable, dotfiles are
//! hidden, path-info tricks never run the wrong file, and hostile requests get
//! a 4xx while the server keeps serving everyone else.

use crate::support;

use crate::support::{Runtime, Site, on_both_runtimes, worker_yaml};

fn site() -> Site {
    site_on(Runtime::Cgi)
}

fn site_on(runtime: Runtime) -> Site {
    let site = Site::on(runtime)
        .worker("blog", &worker_yaml("/blog", 1))
        .file(
            "blog",
            "index.php",
            "<?php echo 'front:', $_SERVER['REQUEST_URI'];",
        )
        .file(
            "blog",
            "ok.php",
            "<?php echo 'ok:', $_SERVER['PATH_INFO'] ?? '-';",
        )
        .file(
            "blog",
            "legacy.phtml",
            "<?php echo 'EXECUTED'; // secret phtml source",
        )
        .file("blog", "config.inc", "<?php $password = 'hunter2';")
        .file(
            "blog",
            "uploads/image.jpg",
            "<?php echo 'EXECUTED image'; ?>GIF89a",
        )
        .file("blog", ".env", "DB_PASSWORD=hunter2")
        .file("blog", ".git/config", "[core]\nsecret")
        .file(
            "blog",
            ".well-known/security.txt",
            "Contact: mailto:security@example.org",
        )
        .file("blog", "inside.txt", "inside");
    site.write("workers/blog/secret.txt", "outside the document root");
    let public = site.root().join("workers/blog/public");
    std::os::unix::fs::symlink("/etc", public.join("etc-link")).unwrap();
    std::os::unix::fs::symlink(
        site.root().join("workers/blog/secret.txt"),
        public.join("secret-link.txt"),
    )
    .unwrap();
    std::os::unix::fs::symlink(public.join("inside.txt"), public.join("inside-link.txt")).unwrap();
    site
}

fn get_raw(server: &support::Server, target: &str) -> support::Response {
    server.request(format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    ))
}

fn only_configured_extensions_execute_and_source_is_never_served(runtime: Runtime) {
    let server = site_on(runtime).start();
    assert_eq!(get_raw(&server, "/blog/ok.php").text(), "ok:-");
    // Upper case still runs as PHP, never shows source.
    assert_eq!(
        get_raw(&server, "/blog/OK.PHP").status,
        404,
        "case-distinct file does not exist"
    );
    for path in ["/blog/legacy.phtml", "/blog/config.inc"] {
        let response = get_raw(&server, path);
        assert_eq!(response.status, 404, "{path}");
        assert!(!response.text().contains("EXECUTED"), "{path}");
        assert!(!response.text().contains("<?php"), "{path}");
    }
}

#[test]
fn traversal_is_refused() {
    let server = site().start();
    for target in [
        "/blog/../secret.txt",
        "/blog/%2e%2e/secret.txt",
        "/blog/%2E%2E%2Fsecret.txt",
        "/blog/assets/..%2f..%2f..%2fsecret.txt",
        "/blog/..%2f..%2f..%2f..%2f..%2f..%2fetc/passwd",
        "/blog/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    ] {
        let response = get_raw(&server, target);
        // Dot segments are applied before routing: what stays below `/`
        // names another (missing) app's path, 404; what climbs above it, 400.
        assert!(
            matches!(response.status, 400 | 404),
            "{target}: {} {}",
            response.status,
            response.text()
        );
        assert!(!response.text().contains("outside the document root"));
        assert!(!response.text().contains("root:"));
    }
    // ".." that stays inside the root is just a path.
    assert_eq!(
        get_raw(&server, "/blog/uploads/../inside.txt").text(),
        "inside"
    );
}

#[test]
fn nul_bytes_backslashes_and_newlines_are_refused() {
    let server = site().start();
    for target in [
        "/blog/ok.php%00.jpg",
        "/blog/inside.txt%00",
        "/blog/..%5c..%5csecret.txt",
        "/blog/ok.php%0a",
        "/blog/ok.php/%0afoo",
        "/blog/ok.php%0d%0aX-Injected:%201",
    ] {
        let response = get_raw(&server, target);
        assert_eq!(response.status, 400, "{target}");
        assert!(response.header("x-injected").is_none());
    }
    // The server keeps serving.
    assert_eq!(get_raw(&server, "/blog/ok.php").status, 200);
}

fn with_security(site: &Site, security: &str) {
    site.write_worker_yaml(
        "blog",
        &format!("{}security:\n{security}", worker_yaml("/blog", 1)),
    );
}

/// A link from the document root to a file owned by someone else than the
/// link: as root, the link is given to nobody; otherwise it points at a
/// root-owned file.
fn plant_foreign_link(site: &Site, name: &str) {
    let public = site.root().join("workers/blog/public");
    let link = public.join(name);
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::symlink(site.root().join("workers/blog/secret.txt"), &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    } else {
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    }
}

#[test]
fn symlinks_out_of_the_root_are_not_followed_under_beneath() {
    let site = site();
    with_security(&site, "  symlinks: beneath\n");
    let server = site.start();
    assert_eq!(get_raw(&server, "/blog/etc-link/passwd").status, 404);
    assert_eq!(get_raw(&server, "/blog/etc-link/group").status, 404);
    assert_eq!(get_raw(&server, "/blog/secret-link.txt").status, 404);
    assert_eq!(get_raw(&server, "/blog/inside-link.txt").text(), "inside");
    // Each refusal is logged with the link, where it leads and the key that
    // would allow it: in full once per link, however often it is hit.
    let public = server.docroot("blog");
    let line = format!("symlink {public}/etc-link -> /etc leads out of the document root");
    assert!(
        server.wait_for_log(&line, std::time::Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let log = server.log();
    assert_eq!(log.matches(&line).count(), 1, "{log}");
    assert!(log.contains("security.symlinks is `beneath`"), "{log}");
    assert!(log.contains("secret-link.txt -> "), "{log}");
    assert!(log.contains("WARN"), "{log}");
}

#[test]
fn symlinks_out_of_the_root_are_followed_when_owners_match_by_default() {
    let site = site();
    plant_foreign_link(&site, "planted.txt");
    let server = site.start();
    // Made by the site's owner, leading to the site owner's file: followed,
    // as Debian's packaged apps need (nginx's disable_symlinks if_not_owner).
    assert_eq!(
        get_raw(&server, "/blog/secret-link.txt").text(),
        "outside the document root"
    );
    assert_eq!(get_raw(&server, "/blog/inside-link.txt").text(), "inside");
    // A link whose owner is not its target's is refused, and logged.
    let response = get_raw(&server, "/blog/planted.txt");
    assert_eq!(response.status, 404);
    assert!(!response.text().contains("outside the document root"));
    assert!(!response.text().contains("root:"));
    assert!(
        server.wait_for_log("planted.txt -> ", std::time::Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let log = server.log();
    assert!(log.contains("security.symlinks is `owner`"), "{log}");
    assert!(log.contains("chown -h"), "{log}");
}

#[test]
fn symlinks_out_of_the_root_can_be_allowed() {
    for security in [
        "  allow_symlinks_outside_root: true\n",
        "  symlinks: follow\n",
    ] {
        let site = site();
        plant_foreign_link(&site, "planted.txt");
        with_security(&site, security);
        let server = site.start();
        assert_eq!(
            get_raw(&server, "/blog/secret-link.txt").text(),
            "outside the document root"
        );
        assert_eq!(
            get_raw(&server, "/blog/planted.txt").status,
            200,
            "{security}"
        );
    }
    // The older key's `false` is `beneath`.
    let site = site();
    with_security(&site, "  allow_symlinks_outside_root: false\n");
    let server = site.start();
    assert_eq!(get_raw(&server, "/blog/secret-link.txt").status, 404);
}

#[test]
fn dotfiles_are_hidden_except_well_known() {
    let server = site().start();
    for target in [
        "/blog/.env",
        "/blog/.git/config",
        "/blog/.git/",
        "/blog/%2eenv",
    ] {
        let response = get_raw(&server, target);
        assert_eq!(response.status, 404, "{target}");
        assert!(!response.text().contains("hunter2"));
        assert!(!response.text().contains("secret"));
    }
    assert!(
        get_raw(&server, "/blog/.well-known/security.txt")
            .text()
            .contains("Contact:")
    );
}

fn path_info_never_runs_an_upload(runtime: Runtime) {
    let server = site_on(runtime).start();
    for target in [
        "/blog/uploads/image.jpg/x.php",
        "/blog/uploads/image.jpg/.php",
        "/blog/uploads/image.jpg%2fx.php",
        "/blog/uploads/image.jpg/index.php/foo",
    ] {
        let response = get_raw(&server, target);
        assert_eq!(response.status, 404, "{target}");
        assert!(!response.text().contains("EXECUTED"), "{target}");
    }
    // The image itself is served as a file, never run.
    let image = get_raw(&server, "/blog/uploads/image.jpg");
    assert_eq!(image.status, 200);
    assert_eq!(image.header("content-type"), Some("image/jpeg"));
    assert!(image.text().starts_with("<?php"));
}

fn newline_never_shifts_path_info(runtime: Runtime) {
    // CVE-2019-11043: a %0a in the path made php-fpm compute PATH_INFO from
    // the wrong offset.
    let server = site_on(runtime).start();
    let response = get_raw(&server, "/blog/ok.php/PHP%0Ais_the_best.php");
    assert_eq!(response.status, 400);
    let response = get_raw(&server, "/blog/ok.php/normal/info");
    assert_eq!(response.text(), "ok:/normal/info");
}

#[test]
fn malformed_requests_get_400_and_the_server_keeps_serving() {
    let server = site().start();
    for (raw, expected) in [
        ("GARBAGE\r\n\r\n", "HTTP/1.1 400"),
        ("GET /blog/ok.php HTTP/9.9\r\n\r\n", "HTTP/1.1 505"),
        (
            "GET /blog/ok.php HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "GET /blog/ok.php HTTP/1.1\r\nBad Header\r\n\r\n",
            "HTTP/1.1 400",
        ),
        // Ambiguous framing (request smuggling) is refused.
        (
            "POST /blog/ok.php HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "POST /blog/ok.php HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "HTTP/1.1 400",
        ),
        (
            "POST /blog/ok.php HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 501",
        ),
        ("GET /blog/ok.php HTTP/1.1\r\n\r\n", "HTTP/1.1 400"),
        (
            "GET /blog/ok.php HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "HTTP/1.1 400",
        ),
    ] {
        let mut conn = server.connect();
        conn.send(raw.as_bytes());
        let mut buf = Vec::new();
        use std::io::Read;
        let _ = conn.stream().read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with(expected), "{raw:?} → {text}");
        assert!(text.contains("connection: close"), "{raw:?} → {text}");
    }
    let huge = format!(
        "GET /blog/ok.php HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let mut conn = server.connect();
    conn.send(huge.as_bytes());
    let response = conn.read_response(false);
    assert_eq!(response.status, 431);
    assert_eq!(get_raw(&server, "/blog/ok.php").status, 200);
}

fn header_count_limit_is_enforced_and_can_be_raised(runtime: Runtime) {
    let with_headers = |count: usize| {
        let mut raw = String::from("GET /blog/ok.php HTTP/1.1\r\nHost: x\r\n");
        for i in 1..count {
            raw.push_str(&format!("X-H{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        raw
    };
    let server = Site::on(runtime)
        .server_settings("  max_headers: 300\n")
        .worker("blog", &worker_yaml("/blog", 1))
        .file("blog", "ok.php", "<?php echo 'ok';")
        .start();
    let mut conn = server.connect();
    conn.send(with_headers(300).as_bytes());
    assert_eq!(conn.read_response(false).status, 200);
    let mut conn = server.connect();
    conn.send(with_headers(301).as_bytes());
    assert_eq!(conn.read_response(false).status, 431);
}

/// What a PHP process is: the pool's user and group (when tqserver runs as
/// root) with no supplementary group of root's, and an environment of
/// `php.env` and `PATH` only, whatever tqserver's own holds.
fn php_runs_as_the_pool_user_with_only_its_environment(runtime: Runtime) {
    let server = Site::on(runtime)
        .worker(
            "blog",
            &format!("{}  env:\n    GIVEN: to-php\n", worker_yaml("/blog", 1)),
        )
        .file(
            "blog",
            "who.php",
            r#"<?php
$name = fn ($uid) => posix_getpwuid($uid)['name'];
$group = fn ($gid) => posix_getgrgid($gid)['name'];
echo 'uid=', $name(posix_getuid()), ' ', $name(posix_geteuid()), "\n";
echo 'gid=', $group(posix_getgid()), ' ', $group(posix_getegid()), "\n";
echo 'groups=', implode(',', array_map($group, posix_getgroups())), "\n";
echo 'secret=', getenv('TQ_TEST_SECRET') === false ? '(unset)' : 'LEAKED', "\n";
echo 'given=', getenv('GIVEN'), "\n";
echo 'environ=', implode(',', array_keys(getenv())), "\n";
"#,
        )
        .start_with_env(&[("TQ_TEST_SECRET", "hunter2")]);
    let response = get_raw(&server, "/blog/who.php");
    assert_eq!(response.status, 200, "{}", response.text());
    let vars = response.vars();
    if support::is_root() {
        assert_eq!(vars["uid"], "www-data www-data");
        assert_eq!(vars["gid"], "www-data www-data");
        assert!(
            vars["groups"]
                .split(',')
                .all(|g| g.is_empty() || g == "www-data"),
            "{}",
            vars["groups"]
        );
    }
    assert_eq!(vars["secret"], "(unset)");
    assert_eq!(vars["given"], "to-php");
    // php-cgi also has the pool's PHP_FCGI_* settings.
    for name in vars["environ"].split(',') {
        assert!(
            ["GIVEN", "PATH"].contains(&name) || name.starts_with("PHP_FCGI_"),
            "PHP's environment has {name}: {}",
            vars["environ"]
        );
    }
}

// What PHP runs and sees, the same on both runtimes. (The tests above that
// tqserver answers alone, static files, dotfiles, symlinks and malformed
// requests, run on php-cgi only.)
on_both_runtimes!(
    only_configured_extensions_execute_and_source_is_never_served,
    path_info_never_runs_an_upload,
    newline_never_shifts_path_info,
    header_count_limit_is_enforced_and_can_be_raised,
    php_runs_as_the_pool_user_with_only_its_environment,
);
