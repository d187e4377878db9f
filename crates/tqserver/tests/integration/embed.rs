//! `php.runtime: embed` through the whole server: a zygote per app under
//! tqserver, workers under the zygote, nothing left after `kill -9`, a new
//! zygote on reload, and configuration errors that say what to do.

use std::time::Duration;

use crate::support::nginx::Nginx;
use crate::support::{self, Site, children_named, free_port, wait_gone, wait_until};
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
        let (passed, stderr) = site.check();
        assert!(!passed, "{yaml}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(stderr.contains(line), "names file and line: {stderr}");
    }
}

/// nginx's `fastcgi_param PHP_VALUE` / `PHP_ADMIN_VALUE` reach an embed
/// worker through the FastCGI listener as they reach a php-fpm child, for
/// the request that sends them only; the HTTP front never sends them.
#[test]
fn php_value_from_nginx_applies_to_that_request_only() {
    let port = free_port();
    let server = Site::new()
        .worker(
            "app",
            &format!("{APP}fastcgi:\n  listen: 127.0.0.1:{port}\n"),
        )
        .file(
            "app",
            "ini.php",
            "<?php echo ini_get('precision'), ' ', ini_get('upload_max_filesize');",
        )
        .start();
    let root = server.docroot("app");
    let nginx = Nginx::start(
        &format!("upstream tq {{ server 127.0.0.1:{port}; keepalive 4; }}"),
        &format!(
            "root {root};\n\
             location = /tuned.php {{\n\
               include /etc/nginx/fastcgi_params;\n\
               fastcgi_param SCRIPT_FILENAME $document_root/ini.php;\n\
               fastcgi_param PHP_VALUE \"precision=5\";\n\
               fastcgi_param PHP_ADMIN_VALUE \"upload_max_filesize=9M\";\n\
               fastcgi_pass tq; fastcgi_keep_conn on;\n\
             }}\n\
             location ~ \\.php$ {{\n\
               include /etc/nginx/fastcgi_params;\n\
               fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;\n\
               fastcgi_pass tq; fastcgi_keep_conn on;\n\
             }}"
        ),
    );
    // Both workers serve both kinds of request, in turns.
    for _ in 0..4 {
        assert_eq!(nginx.get("/tuned.php").text(), "5 9M");
        assert_eq!(nginx.get("/ini.php").text(), "14 2M");
        assert_eq!(server.get("/ini.php").text(), "14 2M");
    }
}

/// The status page shows the zygote (pid, memory, starts) and each worker's
/// PSS; a zygote killed from outside is replaced and counted.
#[test]
fn status_shows_the_zygote_and_counts_its_replacements() {
    let server = site().with_admin().start();
    assert_eq!(server.get("/sapi.php").status, 200);
    let status = |server: &support::Server| -> serde_json::Value {
        serde_json::from_str(&server.admin("/status/app?json&full").text()).unwrap()
    };
    let page = status(&server);
    let zygote = zygotes(&server)[0];
    assert_eq!(page["zygote pid"], zygote, "{page}");
    assert_eq!(page["zygote starts"], 1, "{page}");
    assert!(page["zygote pss"].as_u64().unwrap() > 1 << 20, "{page}");
    for process in page["processes"].as_array().unwrap() {
        let (rss, pss) = (
            process["rss"].as_u64().unwrap(),
            process["pss"].as_u64().unwrap(),
        );
        assert!(
            pss > 0 && pss < rss,
            "a forked worker shares pages: {process}"
        );
    }

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(zygote as i32), Signal::SIGKILL).unwrap();
    wait_until("a new zygote", Duration::from_secs(15), || {
        let page = status(&server);
        page["zygote starts"] == 2 && page["zygote pid"] != zygote && page["zygote pid"] != 0
    });
    assert_eq!(server.get("/sapi.php").status, 200);
}
