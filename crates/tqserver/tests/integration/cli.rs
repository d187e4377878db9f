//! The command line: `check` on good and bad configs, clear start-up errors,
//! `--help`, and workers that never outlive tqserver.

use crate::support;

use std::process::Command;
use std::time::Duration;

use crate::support::{BIN, Site, Started, wait_gone, worker_yaml};

fn tqserver(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run tqserver")
}

#[test]
fn check_accepts_a_good_config() {
    let site = Site::new().worker("blog", &worker_yaml("/blog", 2)).file(
        "blog",
        "index.php",
        "<?php echo 1;",
    );
    let output = tqserver(&["check", "--config", site.config_path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("configuration is valid"), "{stdout}");
    assert!(stdout.contains("blog"), "{stdout}");
    assert!(stdout.contains("/blog"), "{stdout}");
}

#[test]
fn check_names_file_line_key_and_suggests_for_a_misspelt_key() {
    let site = Site::new().worker(
        "blog",
        "path: /blog\nphp:\n  pool:\n    manager: dynamic\n    max_worker: 3\n",
    );
    let output = tqserver(&["check", "--config", site.config_path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("workers/blog/config/worker.yaml:5: php.pool.max_worker: unknown key; did you mean `max_workers`?"),
        "{stderr}"
    );
}

#[test]
fn check_reports_every_error_across_files() {
    let site = Site::new()
        .worker(
            "a",
            "path: /a\nphp:\n  pool:\n    min_workers: 5\n    max_workers: 2\n",
        )
        .worker(
            "b",
            "path: b\nphp:\n  pool:\n    manager: dinamic\n    request_timeout: soon\n",
        );
    let output = tqserver(&["check", "--config", site.config_path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr.contains(
            "workers/a/config/worker.yaml:4: php.pool.min_workers: 5 is more than max_workers (2)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("php.pool.request_timeout"), "{stderr}");
}

#[test]
fn semantic_errors_point_at_their_line() {
    let site = Site::new().worker("b", "path: b\nphp:\n  pool:\n    manager: dinamic\n");
    let output = tqserver(&["check", "--config", site.config_path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("worker.yaml:1: path: `b` must start with /"),
        "{stderr}"
    );
    assert!(stderr.contains("worker.yaml:4: php.pool.manager: `dinamic` is not one of static, dynamic, ondemand; did you mean `dynamic`?"), "{stderr}");
}

#[test]
fn rules_and_symlink_mode_errors_point_at_their_line() {
    let site = Site::new().worker(
        "b",
        "path: /b\n\
         security:\n  symlinks: owners\n\
         rules:\n\
         \x20 - path: /data/\n\
         \x20   deny: 500\n\
         \x20 - glob: /images/\n\
         \x20   static_only: true\n\
         \x20 - path: /a\n\
         \x20   glob: /b/**\n\
         \x20   deny: 403\n\
         \x20 - path: lib/\n\
         \x20   static_only: false\n",
    );
    let output = tqserver(&["check", "--config", site.config_path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for expected in [
        "worker.yaml:3: security.symlinks: `owners` is not one of owner, beneath, follow; did you mean `owner`?",
        "worker.yaml:6: rules[0].deny: `500` is not 403 or 404",
        "worker.yaml:7: rules[1].glob: `/images/` ends with /; write `/images/**`",
        "worker.yaml:9: rules[2]: give either `path` (a prefix) or `glob`, not both",
        "worker.yaml:12: rules[3].path: `lib/` must start with /",
        "worker.yaml:12: rules[3]: says nothing to do",
    ] {
        assert!(stderr.contains(expected), "{expected}\n{stderr}");
    }
    // Both spellings of the symlink mode at once.
    let site = Site::new().worker(
        "c",
        "path: /c\nsecurity:\n  symlinks: follow\n  allow_symlinks_outside_root: true\n",
    );
    let output = tqserver(&["check", "--config", site.config_path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "worker.yaml:4: security.allow_symlinks_outside_root: set only security.symlinks"
        ),
        "{stderr}"
    );
}

#[test]
fn check_warns_about_symlinks_that_leave_the_document_root() {
    let site = Site::new()
        .worker("wiki", "path: /wiki\nsecurity:\n  symlinks: beneath\n")
        .file("wiki", "index.php", "<?php echo 1;");
    site.write("share/jquery.js", "jQuery");
    let public = site.root().join("workers/wiki/public");
    std::fs::create_dir_all(public.join("js/vendor")).unwrap();
    std::os::unix::fs::symlink(
        site.root().join("share/jquery.js"),
        public.join("js/vendor/jquery.js"),
    )
    .unwrap();
    std::os::unix::fs::symlink("index.php", public.join("start.php")).unwrap();
    let output = tqserver(&["check", "--config", site.config_path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // A warning, not an error.
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: ")
            && stderr
                .contains("workers/wiki/config/worker.yaml: security.symlinks: 1 symlink under"),
        "{stderr}"
    );
    assert!(stderr.contains("not followed under `beneath`"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "js/vendor/jquery.js -> {}",
            site.root().join("share/jquery.js").display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("set security.symlinks: owner"), "{stderr}");
    assert!(!stderr.contains("start.php"), "{stderr}");
    // Under the default (owner) the same link is followed: nothing to say.
    site.write("workers/wiki/config/worker.yaml", "path: /wiki\n");
    let output = tqserver(&["check", "--config", site.config_path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn php_workers_may_not_run_as_root() {
    if !support::is_root() {
        return; // user switching (and this check) only happen as root
    }
    let site = Site::new()
        .worker("a", "path: /a\nphp:\n  user: root\n")
        .worker("b", "path: /b\nphp:\n  user: www-data\n  group: root\n");
    let output = tqserver(&["check", "--config", site.config_path().to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("worker.yaml:3: php.user: `root` is root (uid 0)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("worker.yaml:4: php.group: `root` is gid 0"),
        "{stderr}"
    );
}

#[test]
fn a_missing_php_cgi_stops_start_up_with_the_package_to_install() {
    let site = Site::new().worker(
        "blog",
        "path: /blog\nphp:\n  binary: /nonexistent/php-cgi\n",
    );
    let output = Command::new(BIN)
        .args(["--config", site.config_path().to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("php.binary"), "{stderr}");
    assert!(stderr.contains("apt-get install php-cgi"), "{stderr}");

    // Same on PATH lookup.
    let site = Site::new().worker("blog", "path: /blog\n");
    let output = Command::new(BIN)
        .args(["--config", site.config_path().to_str().unwrap()])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("`php-cgi` not found on PATH"), "{stderr}");
    assert!(stderr.contains("apt-get install php-cgi"), "{stderr}");
}

#[test]
fn the_cli_binary_must_not_pass_for_php_cgi() {
    let cli = ["/usr/bin/php8.2", "/usr/bin/php"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(cli) = cli else { return };
    let site = Site::new().worker("blog", &format!("path: /blog\nphp:\n  binary: {cli}\n"));
    let output = tqserver(&["check", "--config", site.config_path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("php-cgi"), "{stderr}");
}

#[test]
fn help_explains_run_and_check() {
    let output = tqserver(&["--help"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(stdout.contains("run"), "{stdout}");
    assert!(stdout.contains("check"), "{stdout}");
    assert!(stdout.contains("--config"), "{stdout}");
}

#[test]
fn no_worker_survives_sigkill_of_tqserver() {
    let started = Started::new();
    let mut server = Site::new()
        .worker("blog", &worker_yaml("/blog", 3))
        .file(
            "blog",
            "slow.php",
            format!("<?php {} sleep(30);", started.php()),
        )
        .start();
    let pids = server.worker_pids();
    assert_eq!(pids.len(), 3, "{}", server.log());
    // One of them busy in a request.
    let port = server.port();
    std::thread::spawn(move || {
        let mut conn = support::Conn::open(port);
        conn.send(b"GET /blog/slow.php HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = std::panic::catch_unwind(move || conn.read_response(false));
    });
    started.wait(1);
    let killed = server.kill9();
    assert_eq!(killed.len(), 3);
    assert!(
        wait_gone(&killed, Duration::from_secs(1)),
        "php-cgi left after kill -9 of tqserver"
    );
}

#[test]
fn a_site_the_worker_user_cannot_enter_is_refused_naming_user_and_directory() {
    if !support::is_root() {
        eprintln!("skipped: workers change user (and this check runs) only as root");
        return;
    }
    if !matches!(nix::unistd::User::from_name("www-data"), Ok(Some(_))) {
        eprintln!("skipped: no user www-data");
        return;
    }
    let site = Site::new().worker("blog", &worker_yaml("/blog", 2)).file(
        "blog",
        "index.php",
        "<?php echo 1;",
    );
    // A site under a private (0700, root's) directory.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(site.root(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let private = site.root().display().to_string();
    let config = site.config_path();
    let expected = format!("php.user `www-data` cannot enter {private} (drwx------ root:root)");

    let output = tqserver(&["check", "--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(
        stderr.contains("workers/blog/config/worker.yaml"),
        "{stderr}"
    );

    // Starting says the same, once, and does not start.
    let output = Command::new(BIN)
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(2), "{log}");
    assert_eq!(log.matches(&expected).count(), 1, "{log}");
    assert!(!log.contains("os error 13"), "{log}");
}
