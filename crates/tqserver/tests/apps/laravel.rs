//! A Laravel app on Debian's `php-laravel-framework` (Laravel 8, files in
//! /usr/share/php/Illuminate, loaded by Debian's autoloader instead of
//! Composer's). The app is in `fixtures/laravel`: the worker's folder is the
//! Laravel base path (`config/worker.yaml` for tqserver sits beside
//! Laravel's `config/*.php`), `public/` is the document root, and every
//! pretty URL reaches `public/index.php` through tqserver's front controller.
//! Sessions are files in the copy's `storage/`, which belongs to the user the
//! workers run as.

use std::path::{Path, PathBuf};

use crate::browser::{Browser, Part};
use crate::html::{input_value, json_scalar, json_string, links, short};
use crate::setup::{LogOnPanic, Runtime, copy_tree, give_to_workers, make_readable};
use crate::support::nginx::Nginx;
use crate::support::{Server, Site, free_port};

mod worker_mode;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/fixtures/laravel")
}

/// The app on a running tqserver, reached over its HTTP front or through
/// nginx → its FastCGI listener.
struct App {
    server: Server,
    nginx: Option<Nginx>,
}

impl App {
    /// Starts tqserver with the Laravel app at `prefix` on `runtime`, and
    /// nginx in front when `through_nginx`.
    fn start(prefix: &str, through_nginx: bool, runtime: Runtime) -> Self {
        runtime.ensure();
        let fastcgi_port = free_port();
        let listen = if through_nginx {
            format!("fastcgi:\n  listen: 127.0.0.1:{fastcgi_port}\n")
        } else {
            String::new()
        };
        let yaml = format!(
            "path: {prefix}\nphp:\n{runtime}  settings:\n    upload_max_filesize: 16M\n    post_max_size: 16M\n  pool:\n    manager: static\n    max_workers: 2\n{listen}",
            runtime = runtime.yaml(),
        );
        let site = Site::new().worker("laravel", &yaml);
        let base = site.root().join("workers/laravel");
        copy_tree(&fixture(), &base);
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
        make_readable(&base);
        give_to_workers(&base.join("storage"));
        give_to_workers(&base.join("bootstrap/cache"));
        let server = site.start();
        let nginx = through_nginx.then(|| {
            crate::nginx::php_site(
                &base.join("public"),
                prefix,
                &format!("127.0.0.1:{fastcgi_port}"),
                true,
            )
        });
        Self { server, nginx }
    }

    /// The port a browser uses.
    fn port(&self) -> u16 {
        self.nginx.as_ref().map_or(self.server.port(), |n| n.port)
    }

    /// Laravel's base path (the worker's folder).
    fn base_path(&self) -> PathBuf {
        self.server.site.root().join("workers/laravel")
    }

    fn log(&self) -> String {
        match &self.nginx {
            Some(nginx) => format!(
                "{}\n---- nginx error log ----\n{}",
                self.server.log(),
                nginx.error_log()
            ),
            None => self.server.log(),
        }
    }
}

/// Runs `test` against a fresh app; prints the logs if it fails and checks
/// tqserver's log for errors Laravel reported (its log goes to stderr).
fn with_app(
    prefix: &str,
    through_nginx: bool,
    runtime: Runtime,
    test: impl FnOnce(&App, &mut Browser),
) {
    let app = App::start(prefix, through_nginx, runtime);
    let log = || app.log();
    let _log = LogOnPanic {
        name: "tqserver",
        log: &log,
    };
    let mut browser = Browser::new(app.port());
    test(&app, &mut browser);
    runtime.assert_serves(&app.server);
    assert_no_app_errors(&app.server.log());
}

/// Laravel logs nothing at ERROR or CRITICAL, and PHP no fatal error.
pub(super) fn assert_no_app_errors(log: &str) {
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(".ERROR") || l.contains(".CRITICAL") || l.contains("PHP Fatal"))
        .collect();
    assert!(
        errors.is_empty(),
        "errors in the log:\n{}",
        errors.join("\n")
    );
}

/// GETs the form; returns its CSRF token.
fn form_token(browser: &mut Browser, path: &str) -> String {
    let form = browser.get(path);
    assert_eq!(form.status, 200, "{}", short(&form.text()));
    input_value(&form.text(), "_token").expect("the form's CSRF token")
}

fn check_route_parameters(_app: &App, browser: &mut Browser) {
    let page = browser.get("/users/42/posts/hello-world?ref=home");
    assert_eq!(page.status, 200, "{}", short(&page.text()));
    assert_eq!(page.text(), "user 42, post hello-world");
    assert_eq!(
        page.header("content-type"),
        Some("text/plain; charset=UTF-8")
    );
    // The optional parameter.
    assert_eq!(
        browser.get("/users/42/posts").text(),
        "user 42, post latest"
    );
    // A percent-encoded parameter arrives decoded.
    assert_eq!(
        browser.get("/users/42/posts/caf%C3%A9").text(),
        "user 42, post café"
    );
    // The `where` constraint: not a number, no route.
    assert_eq!(browser.get("/users/abc/posts/x").status, 404);
    // The path-info form of the same URL reaches the same route.
    assert_eq!(
        browser.get("/index.php/users/3/posts/x").text(),
        "user 3, post x"
    );
}

fn check_form_with_csrf_token_and_session(app: &App, browser: &mut Browser) {
    let token = form_token(browser, "/form");
    let session = browser
        .cookie("tqserver_session")
        .expect("a session cookie")
        .clone();
    assert!(
        browser.cookie("XSRF-TOKEN").is_some(),
        "{:?}",
        browser.cookies()
    );

    // Without the token: 419, Laravel's "Page Expired".
    let mut stranger = Browser::new(app.port());
    let forged = stranger.post_form("/form", &[("name", "Mallory")]);
    assert_eq!(forged.status, 419, "{}", short(&forged.text()));
    assert!(
        forged.text().contains("Page Expired"),
        "{}",
        short(&forged.text())
    );

    // A validation error goes back to the form, through the session.
    let invalid = browser.post_form("/form", &[("_token", &token), ("name", "  ")]);
    assert_eq!(invalid.status, 302, "{}", short(&invalid.text()));
    let (page, at) = browser.follow(invalid, 3);
    assert_eq!(at, "/form");
    assert!(
        page.text().contains("The name field is required."),
        "{}",
        short(&page.text())
    );

    // Saved: a redirect (POST/redirect/GET) and a flash message.
    for (round, name) in [(1, "Ada"), (2, "Grace")] {
        let saved = browser.post_form("/form", &[("_token", &token), ("name", name)]);
        assert_eq!(saved.status, 302, "{}", short(&saved.text()));
        assert_eq!(
            saved.header("location"),
            Some(format!("{}/form", browser.origin()).as_str())
        );
        let (page, _) = browser.follow(saved, 3);
        let text = page.text();
        assert!(text.contains(&format!("Saved {name}")), "{}", short(&text));
        assert!(
            text.contains(&format!("Saved this session: {round}")),
            "{}",
            short(&text)
        );
    }
    // The flash message is gone on the next visit; the session stays.
    let again = browser.get("/form");
    assert!(
        !again.text().contains("Saved Grace"),
        "{}",
        short(&again.text())
    );
    assert!(again.text().contains("Saved this session: 2"));

    // The token also works as the X-XSRF-TOKEN header JavaScript sends
    // (the XSRF-TOKEN cookie's value, URL-decoded).
    let xsrf = browser
        .cookie("XSRF-TOKEN")
        .expect("an XSRF-TOKEN cookie")
        .value
        .clone();
    let xsrf = xsrf
        .replace("%3D", "=")
        .replace("%2F", "/")
        .replace("%2B", "+");
    let mut ajax = browser.post_form("/form", &[("name", "Linus")]);
    assert_eq!(ajax.status, 419, "a POST without any token must fail");
    browser.headers.push(("X-XSRF-TOKEN".into(), xsrf));
    ajax = browser.post_form("/form", &[("name", "Linus")]);
    assert_eq!(ajax.status, 302, "{}", short(&ajax.text()));

    // File sessions: one file per session in storage/.
    let sessions = app.base_path().join("storage/framework/sessions");
    let files = std::fs::read_dir(&sessions)
        .expect("the sessions folder")
        .count();
    assert!(files >= 1, "no session files in {}", sessions.display());
    assert!(!session.value.is_empty());
}

fn check_json_api(_app: &App, browser: &mut Browser) {
    let user = browser.get("/api/users/5");
    assert_eq!(user.status, 200);
    assert_eq!(user.header("content-type"), Some("application/json"));
    assert_eq!(user.text(), r#"{"id":5,"name":"User 5"}"#);
    // No session or CSRF on the API.
    assert!(user.header("set-cookie").is_none(), "{:?}", user.headers);

    let echo = browser.post_json(
        "/api/echo?verbose=1",
        &[],
        r#"{"title":"tqserver","tags":["php","rust"],"n":3}"#,
    );
    assert_eq!(echo.status, 201, "{}", short(&echo.text()));
    assert_eq!(
        echo.text(),
        r#"{"received":{"title":"tqserver","tags":["php","rust"],"n":3},"query":{"verbose":"1"},"method":"POST"}"#
    );

    let missing = browser.get("/api/nothing/here");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.text(), r#"{"message":"Not Found."}"#);
}

fn check_redirects(_app: &App, browser: &mut Browser) {
    // Route::redirect answers with a relative Location.
    let moved = browser.get("/old-form");
    assert_eq!(moved.status, 301);
    assert_eq!(moved.header("location"), Some("/form"));
    let named = browser.get("/latest");
    assert_eq!(named.status, 302);
    assert_eq!(
        named.header("location"),
        Some(format!("{}/users/7/posts/moved", browser.origin()).as_str())
    );
    let (page, _) = browser.follow(named, 3);
    assert_eq!(page.text(), "user 7, post moved");
}

fn check_file_upload(app: &App, browser: &mut Browser) {
    let token = form_token(browser, "/form");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 253) as u8).collect();
    let response = browser.post_multipart(
        "/upload",
        &[
            Part::Field("_token", &token),
            Part::File {
                name: "document",
                filename: "report.bin",
                content_type: "application/octet-stream",
                data: &data,
            },
        ],
    );
    assert_eq!(response.status, 200, "{}", short(&response.text()));
    let json = response.text();
    assert_eq!(json_string(&json, "name").as_deref(), Some("report.bin"));
    assert_eq!(json_scalar(&json, "size"), Some(data.len().to_string()));
    let stored = app
        .base_path()
        .join("storage/app/uploads/stored-report.bin");
    let on_disk = std::fs::read(&stored).expect("the stored upload");
    assert_eq!(on_disk, data, "the upload changed on its way");
    assert_eq!(json_string(&json, "sha1").map(|s| s.len()), Some(40));

    // Without a file, validation answers (as JSON when asked for JSON).
    browser
        .headers
        .push(("Accept".into(), "application/json".into()));
    let empty = browser.post_multipart("/upload", &[Part::Field("_token", &token)]);
    assert_eq!(empty.status, 422, "{}", short(&empty.text()));
    assert!(empty.text().contains("document"), "{}", empty.text());
}

fn check_not_found_and_static_files(_app: &App, browser: &mut Browser) {
    let missing = browser.get("/no/such/page");
    assert_eq!(missing.status, 404);
    assert!(
        missing.text().contains("Not Found"),
        "{}",
        short(&missing.text())
    );
    // Files in public/ are served by the web server, never by Laravel.
    let robots = browser.get("/robots.txt");
    assert_eq!(robots.status, 200);
    assert_eq!(robots.text(), "User-agent: *\nDisallow:\n");
    assert!(robots.header("set-cookie").is_none());
    let css = browser.get("/css/app.css");
    assert_eq!(css.status, 200);
    assert!(
        css.header("content-type")
            .is_some_and(|t| t.starts_with("text/css"))
    );
    // Nothing outside public/ is reachable.
    assert_eq!(browser.get("/../config/app.php").status, 400);
    assert_eq!(browser.get("/config/app.php").status, 404);
    assert_eq!(browser.get("/.env").status, 404);
}

#[test]
fn laravel_route_parameters() {
    with_app("/", false, Runtime::Cgi, check_route_parameters);
}

#[test]
fn laravel_form_with_csrf_token_and_session() {
    with_app(
        "/",
        false,
        Runtime::Cgi,
        check_form_with_csrf_token_and_session,
    );
}

#[test]
fn laravel_json_api() {
    with_app("/", false, Runtime::Cgi, check_json_api);
}

#[test]
fn laravel_redirects() {
    with_app("/", false, Runtime::Cgi, check_redirects);
}

#[test]
fn laravel_file_upload() {
    with_app("/", false, Runtime::Cgi, check_file_upload);
}

#[test]
fn laravel_not_found_and_static_files() {
    with_app("/", false, Runtime::Cgi, check_not_found_and_static_files);
}

/// Every check above on one app, each with a fresh browser.
fn check_all(app: &App, _: &mut Browser) {
    check_route_parameters(app, &mut Browser::new(app.port()));
    check_form_with_csrf_token_and_session(app, &mut Browser::new(app.port()));
    check_json_api(app, &mut Browser::new(app.port()));
    check_redirects(app, &mut Browser::new(app.port()));
    check_file_upload(app, &mut Browser::new(app.port()));
    check_not_found_and_static_files(app, &mut Browser::new(app.port()));
}

/// The same app with nginx in front, tqserver as its php-fpm.
#[test]
fn laravel_through_nginx() {
    with_app("/", true, Runtime::Cgi, check_all);
}

#[test]
fn laravel_under_a_sub_path_builds_its_urls_there() {
    with_app("/shop", false, Runtime::Cgi, check_sub_path);
}

/// On the embed runtime, every check in one app per front (one start each
/// keeps the suite's time down).
#[test]
fn laravel_over_http_on_embed() {
    with_app("/", false, Runtime::Embed, check_all);
}

#[test]
fn laravel_through_nginx_on_embed() {
    with_app("/", true, Runtime::Embed, check_all);
}

#[test]
fn laravel_under_a_sub_path_on_embed() {
    with_app("/shop", false, Runtime::Embed, check_sub_path);
}

/// The app mounted at /shop builds its URLs there.
fn check_sub_path(app: &App, browser: &mut Browser) {
    let origin = browser.origin();
    let here = browser.get("/shop/whereami?x=1");
    assert_eq!(here.status, 200, "{}", short(&here.text()));
    let json = here.text();
    assert_eq!(json_string(&json, "home"), Some(format!("{origin}/shop")));
    assert_eq!(
        json_string(&json, "route"),
        Some(format!("{origin}/shop/users/1/posts"))
    );
    assert_eq!(json_string(&json, "path").as_deref(), Some("whereami"));
    assert_eq!(json_string(&json, "base").as_deref(), Some("/shop"));
    assert_eq!(
        json_string(&json, "full"),
        Some(format!("{origin}/shop/whereami?x=1"))
    );

    // Named routes redirect under the mount point. (Route::redirect is
    // not checked here: Laravel 8 strips its base path from that
    // relative Location, behind any server.)
    let moved = browser.get("/shop/latest");
    assert_eq!(
        moved.header("location"),
        Some(format!("{origin}/shop/users/7/posts/moved").as_str())
    );

    let form = browser.get("/shop/form");
    for link in links(&form.text()) {
        assert!(link.starts_with(&format!("{origin}/shop/")), "{link}");
    }
    let token = input_value(&form.text(), "_token").expect("a CSRF token");
    let saved = browser.post_form("/shop/form", &[("_token", &token), ("name", "Ada")]);
    assert_eq!(
        saved.header("location"),
        Some(format!("{origin}/shop/form").as_str())
    );
    let (page, _) = browser.follow(saved, 3);
    assert!(page.text().contains("Saved Ada"), "{}", short(&page.text()));
    assert_eq!(browser.get("/shop/css/app.css").status, 200);
    assert_eq!(app.server.get("/users/1/posts").status, 404);
}
