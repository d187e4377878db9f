//! The Laravel fixture in worker mode (`php.worker`): each worker runs
//! `public/frankenphp-worker.php`, written the way Laravel Octane's
//! FrankenPHP worker is (the application boots once; per request, an
//! Illuminate Request from the superglobals goes through the HTTP kernel and
//! the state it leaves is reset). The browse-like-a-user checks of the
//! classic tests run against it over the HTTP front and through nginx →
//! the FastCGI listener; the tests here add what only worker mode can get
//! wrong: one user's login, session or container state reaching the next
//! request, and `MAX_REQUESTS`. `bench` measures it (ignored).

mod bench;

use std::time::Duration;

use serde_json::Value;

use super::*;

/// The worker script, relative to the document root.
const WORKER_SCRIPT: &str = "frankenphp-worker.php";

/// Starts tqserver with the app in worker mode at `prefix` (`workers`
/// static workers, `env` for them), nginx in front when `through_nginx`.
fn start(prefix: &str, through_nginx: bool, workers: usize, env: &[(&str, &str)]) -> App {
    Runtime::Embed.ensure();
    let fastcgi_port = free_port();
    let listen = if through_nginx {
        format!("fastcgi:\n  listen: 127.0.0.1:{fastcgi_port}\n")
    } else {
        String::new()
    };
    let env: String = env
        .iter()
        .map(|(name, value)| format!("    {name}: \"{value}\"\n"))
        .collect();
    let env = if env.is_empty() {
        env
    } else {
        format!("  env:\n{env}")
    };
    let yaml = format!(
        "path: {prefix}\nphp:\n  worker: {WORKER_SCRIPT}\n{env}  settings:\n    upload_max_filesize: 16M\n    post_max_size: 16M\n  pool:\n    manager: static\n    max_workers: {workers}\n{listen}"
    );
    let site = Site::new().worker("laravel", &yaml);
    let base = site.root().join("workers/laravel");
    prepare_copy(&base);
    let server = site.start();
    let nginx = through_nginx.then(|| {
        crate::nginx::php_site(
            &base.join("public"),
            prefix,
            &format!("127.0.0.1:{fastcgi_port}"),
            true,
        )
    });
    App { server, nginx }
}

/// Copies the fixture to `base` with Laravel's writable folders, owned by
/// the user the workers run as.
pub fn prepare_copy(base: &Path) {
    copy_tree(&fixture(), base);
    for dir in [
        "storage/app",
        "storage/framework/sessions",
        "storage/framework/views",
        "storage/framework/cache",
        "storage/logs",
        "bootstrap/cache",
    ] {
        std::fs::create_dir_all(base.join(dir)).expect("create Laravel's writable folders");
    }
    make_readable(base);
    give_to_workers(&base.join("storage"));
    give_to_workers(&base.join("bootstrap/cache"));
}

/// Runs `test` against a fresh app in worker mode; prints the logs if it
/// fails, and checks that the log has no error Laravel reported and that
/// the requests were served by workers that had served others before.
fn with_worker_app(
    prefix: &str,
    through_nginx: bool,
    workers: usize,
    env: &[(&str, &str)],
    test: impl FnOnce(&App),
) {
    let app = start(prefix, through_nginx, workers, env);
    let log = || app.log();
    let _log = LogOnPanic {
        name: "tqserver",
        log: &log,
    };
    test(&app);
    super::assert_no_app_errors(&app.server.log());
}

/// GETs a JSON route.
fn json(browser: &mut Browser, path: &str) -> Value {
    let response = browser.get(path);
    assert_eq!(response.status, 200, "{path}: {}", short(&response.text()));
    serde_json::from_str(&response.text())
        .unwrap_or_else(|e| panic!("{path}: {e}: {}", short(&response.text())))
}

/// Asserts that the app runs in worker mode: `$_SERVER['FRANKENPHP_WORKER']`
/// is set, and the worker that answers has served requests before (a global
/// counts them).
fn assert_worker_mode(app: &App) {
    assert_worker_mode_at(app, "");
}

/// [`assert_worker_mode`] for the app at `prefix`.
fn assert_worker_mode_at(app: &App, prefix: &str) {
    let mut browser = Browser::new(app.port());
    let first = json(&mut browser, &format!("{prefix}/state"));
    let second = json(&mut browser, &format!("{prefix}/state"));
    assert_eq!(first["worker"], "1", "{first}");
    let served = |state: &Value| state["served"].as_u64().unwrap_or(0);
    assert!(
        served(&first).max(served(&second)) >= 2,
        "a worker serves many requests: {first} then {second}"
    );
}

/// Every browse-like-a-user check of the classic tests, the Blade page, and
/// proof that worker mode served them.
fn check_all_in_worker_mode(app: &App) {
    check_all(app, &mut Browser::new(app.port()));
    let posts = Browser::new(app.port()).get("/posts");
    assert_eq!(posts.status, 200, "{}", short(&posts.text()));
    assert!(
        posts
            .text()
            .contains("Post number 20 &amp; &lt;friends&gt;"),
        "{}",
        short(&posts.text())
    );
    assert_worker_mode(app);
}

#[test]
fn laravel_worker_mode_over_http() {
    with_worker_app("/", false, 2, &[], check_all_in_worker_mode);
}

#[test]
fn laravel_worker_mode_through_nginx() {
    with_worker_app("/", true, 2, &[], check_all_in_worker_mode);
}

/// Under a sub-path, the URLs Laravel builds are there on every request,
/// not those of the stand-in request the worker booted with, nor those of
/// the request before.
#[test]
fn laravel_worker_mode_under_a_sub_path_builds_its_urls_there() {
    with_worker_app("/shop", false, 1, &[], |app| {
        check_sub_path(app, &mut Browser::new(app.port()));
        // Another host name on the same worker: its own URLs, and then
        // the first one's again.
        let other = app.server.request(
            "GET /shop/whereami HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
        );
        let here: Value = serde_json::from_str(&other.text()).expect("JSON");
        assert_eq!(here["home"], "http://example.test/shop", "{here}");
        let mut browser = Browser::new(app.port());
        let here = json(&mut browser, "/shop/whereami");
        assert_eq!(here["home"], format!("{}/shop", browser.origin()), "{here}");
        assert_worker_mode_at(app, "/shop");
    });
}

/// Logs `browser` in as `name`; returns what /me says then.
fn log_in(browser: &mut Browser, name: &str, password: &str) -> Value {
    let token = form_token(browser, "/form");
    let response = browser.post_form(
        "/login",
        &[("_token", &token), ("name", name), ("password", password)],
    );
    assert_eq!(response.status, 302, "{}", short(&response.text()));
    let (page, at) = browser.follow(response, 3);
    assert_eq!(at, "/me");
    serde_json::from_str(&page.text()).expect("/me answers JSON")
}

/// An anonymous visitor: no user, nothing in the session but what Laravel
/// puts in every one.
fn assert_anonymous(me: &Value) {
    assert_eq!(me["user"], Value::Null, "{me}");
    assert_eq!(me["secret"], Value::Null, "{me}");
    for key in me["session_keys"].as_array().expect("session keys") {
        assert!(
            ["_token", "_previous", "_flash"].contains(&key.as_str().unwrap_or_default()),
            "another visitor's session data: {me}"
        );
    }
}

/// One worker serves everyone in turn, so whatever one request leaves in
/// the booted application, the next one finds: the logged-in user (the
/// session guard keeps it), the session's data (the session store keeps
/// it, and merges the next visitor's into it), what a request bound into
/// the container. Each visitor must see only their own.
#[test]
fn laravel_worker_mode_keeps_users_apart() {
    with_worker_app("/", false, 1, &[], |app| {
        let mut ada = Browser::new(app.port());
        let me = log_in(&mut ada, "ada", "lovelace");
        assert_eq!(me["user"], "ada", "{me}");
        assert_eq!(me["secret"], "only for ada", "{me}");
        let pid = me["pid"].clone();

        // The next request on the same worker, from someone else.
        let mut stranger = Browser::new(app.port());
        let seen = json(&mut stranger, "/me");
        assert_eq!(seen["pid"], pid, "one worker serves both");
        assert_anonymous(&seen);

        // Ada is still logged in; Grace logs in between her requests.
        assert_eq!(json(&mut ada, "/me")["user"], "ada");
        let mut grace = Browser::new(app.port());
        let me = log_in(&mut grace, "grace", "hopper");
        assert_eq!(
            (&me["user"], &me["secret"]),
            (&"grace".into(), &"only for grace".into())
        );
        let me = json(&mut ada, "/me");
        assert_eq!(
            (&me["user"], &me["secret"]),
            (&"ada".into(), &"only for ada".into())
        );
        assert_anonymous(&json(&mut stranger, "/me"));
        // A wrong password logs nobody in, even right after Ada's request.
        json(&mut ada, "/me");
        let token = form_token(&mut stranger, "/form");
        let refused = stranger.post_form(
            "/login",
            &[("_token", &token), ("name", "ada"), ("password", "x")],
        );
        assert_eq!(refused.status, 403, "{}", short(&refused.text()));
        assert_anonymous(&json(&mut stranger, "/me"));

        // Ada logs out: she is anonymous too, Grace is not.
        let token = form_token(&mut ada, "/form");
        let out = ada.post_form("/logout", &[("_token", &token)]);
        assert_eq!(out.status, 302, "{}", short(&out.text()));
        assert_anonymous(&json(&mut ada, "/me"));
        assert_eq!(json(&mut grace, "/me")["user"], "grace");

        // The container: an instance one request binds is gone for the
        // next, a scoped one is new each time; globals persist (by design).
        let first = json(&mut stranger, "/state?note=secret");
        assert_eq!(first["pid"], pid);
        assert_eq!(first["note_before"], Value::Null, "{first}");
        let second = json(&mut stranger, "/state");
        assert_eq!(second["note_before"], Value::Null, "{second}");
        assert_eq!(second["has_note_attribute"], false, "{second}");
        assert_eq!(second["scoped_hits"], 1, "{second}");
        assert_eq!(
            second["served"].as_u64(),
            first["served"].as_u64().map(|n| n + 1),
            "globals persist: {first} then {second}"
        );
    });
}

/// `MAX_REQUESTS` in the environment, read as Octane's worker reads it: the
/// worker script ends after that many requests and boots again (its
/// globals start over), with no request lost on the way.
#[test]
fn laravel_worker_mode_stops_after_max_requests() {
    with_worker_app("/", false, 1, &[("MAX_REQUESTS", "3")], |app| {
        let mut browser = Browser::new(app.port());
        let served: Vec<u64> = (0..7)
            .map(|_| json(&mut browser, "/state")["served"].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(served, [1, 2, 3, 1, 2, 3, 1]);
        crate::support::wait_until("two boots logged", Duration::from_secs(5), || {
            app.server
                .log()
                .matches("the worker script ended after 3 requests; booting it again")
                .count()
                == 2
        });
    });
}
