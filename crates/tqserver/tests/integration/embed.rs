//! `php.runtime: embed` through the whole server: a zygote per app under
//! tqserver, workers under the zygote, nothing left after `kill -9`, a new
//! zygote on reload, and configuration errors that say what to do.

use std::time::Duration;

use crate::support::{self, Site, children_named, wait_gone, wait_until};
use nix::sys::signal::Signal;

const APP: &str =
    "path: /\nphp:\n  runtime: embed\n  pool:\n    manager: static\n    max_workers: 2\n";

fn site() -> Site {
    Site::new().worker("app", APP).file(
        "app",
        "sapi.php",
        "<?php echo PHP_SAPI, ' ', getmypid(), ' ', ini_get('precision');",
    )
}

fn zygotes(server: &support::Server) -> Vec<u32> {
    children_named(server.pid(), "tqserver-php")
}

fn workers_of(zygotes: &[u32]) -> Vec<u32> {
    zygotes
        .iter()
        .flat_map(|&z| children_named(z, "tqserver-php"))
        .collect()
}

#[test]
fn an_embed_app_is_served_by_workers_forked_from_its_zygote() {
    let server = site().start();
    let response = server.get("/sapi.php");
    assert_eq!(response.status, 200, "{}", response.text());
    let text = response.text();
    assert!(text.starts_with("cgi-fcgi "), "{text}");
    let zygotes = zygotes(&server);
    assert_eq!(zygotes.len(), 1, "one zygote for the app");
    let workers = workers_of(&zygotes);
    assert_eq!(workers.len(), 2, "two workers under the zygote");
    let pid: u32 = text.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(workers.contains(&pid), "{pid} not in {workers:?}");
}

#[test]
fn kill_9_of_tqserver_takes_the_zygote_and_every_worker() {
    let mut server = site().start();
    assert_eq!(server.get("/sapi.php").status, 200);
    let zygotes = zygotes(&server);
    let mut everything = workers_of(&zygotes);
    everything.extend(&zygotes);
    assert_eq!(everything.len(), 3);
    server.kill9();
    assert!(
        wait_gone(&everything, Duration::from_secs(5)),
        "PHP processes outlived tqserver: {everything:?}"
    );
}

#[test]
fn a_changed_app_gets_a_new_zygote_on_reload() {
    let server = site().start();
    assert!(server.get("/sapi.php").text().ends_with(" 14"));
    let before = zygotes(&server);
    server.site.write(
        "workers/app/config/worker.yaml",
        format!("{APP}  settings:\n    precision: 9\n"),
    );
    server.signal(Signal::SIGHUP);
    wait_until("the new setting", Duration::from_secs(15), || {
        server.get("/sapi.php").text().ends_with(" 9")
    });
    wait_until("the old zygote gone", Duration::from_secs(15), || {
        let now = zygotes(&server);
        now.len() == 1 && !before.contains(&now[0])
    });
}

#[test]
fn runtime_errors_name_the_key_and_what_to_do() {
    for (yaml, expected, line) in [
        (
            "path: /\nphp:\n  runtime: fpm\n",
            "php.runtime: `fpm` is not one of cgi",
            "worker.yaml:3",
        ),
        (
            "path: /\nphp:\n  runtime: embed\n  binary: php-cgi8.2\n",
            "php.binary names a php-cgi, which php.runtime: embed does not run",
            "worker.yaml:4",
        ),
    ] {
        let site = Site::new().worker("app", yaml);
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tqserver"))
            .arg("check")
            .arg("--config")
            .arg(site.config_path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{yaml}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(stderr.contains(line), "names file and line: {stderr}");
    }
}
