//! DokuWiki from Debian's `dokuwiki` package, unmodified, with the worker.yaml
//! shipped in `examples/debian/workers/dokuwiki`: its templates and plugins
//! are root-owned symlinks from /usr/share/dokuwiki/lib into
//! /var/lib/dokuwiki/lib, so its pages only look right when those are
//! followed (`security.symlinks: owner`), and its `rules:` close the folders
//! Debian's web server configs deny.

use std::path::Path;

use crate::html::{links, short};
use crate::setup::{LogOnPanic, ensure_packages};
use crate::support::{BIN, Server, Site};

fn example_yaml() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/debian/workers/dokuwiki/config/worker.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn start(yaml: &str) -> Server {
    ensure_packages();
    Site::new().worker("dokuwiki", yaml).start()
}

fn get(server: &Server, path: &str) -> crate::support::Response {
    server.request(format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    ))
}

#[test]
fn dokuwiki_pages_and_assets_answer_and_its_private_folders_are_denied() {
    let yaml = example_yaml();
    let server = start(&yaml);
    let _log = LogOnPanic {
        name: "tqserver",
        log: &|| server.log(),
    };

    let page = get(&server, "/dokuwiki/doku.php?id=start");
    assert_eq!(page.status, 200, "{}", short(&page.text()));
    let html = page.text();
    assert!(html.contains("DokuWiki"), "{}", short(&html));
    // Every same-site link and asset of the page: the stylesheet and script
    // bundles, and the template's images behind the lib/tpl symlink.
    let mut checked = 0;
    for link in links(&html) {
        let Some(path) = link.strip_prefix("/dokuwiki/") else {
            continue;
        };
        if path.is_empty() || path.contains("do=") {
            continue;
        }
        let response = get(&server, &link);
        assert_eq!(response.status, 200, "{link}: {}", short(&response.text()));
        checked += 1;
    }
    assert!(
        checked >= 5,
        "only {checked} links checked:\n{}",
        short(&html)
    );
    let logo = get(&server, "/dokuwiki/lib/tpl/dokuwiki/images/logo.png");
    assert_eq!(logo.status, 200);
    assert_eq!(logo.header("content-type"), Some("image/png"));

    // Denied as Debian's configs deny them, under any spelling; a script
    // there never runs.
    for path in [
        "/dokuwiki/bin/indexer.php",
        "/dokuwiki/inc/init.php",
        "/dokuwiki/vendor/autoload.php",
        "/dokuwiki/conf/dokuwiki.php",
        "/dokuwiki/data/pages/start.txt",
        "/dokuwiki/%64ata/pages/start.txt",
        "/dokuwiki/lib/../bin/indexer.php",
        "/dokuwiki//inc/init.php",
    ] {
        let response = get(&server, path);
        assert_eq!(response.status, 403, "{path}: {}", short(&response.text()));
    }

    // `tqserver check` has nothing to warn about with the example.
    let output = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(server.site.config_path())
        .output()
        .expect("run tqserver check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn dokuwiki_templates_are_404_when_symlinks_must_stay_beneath_the_root() {
    let yaml = example_yaml().replace("symlinks: owner", "symlinks: beneath");
    let server = start(&yaml);
    let logo = get(&server, "/dokuwiki/lib/tpl/dokuwiki/images/logo.png");
    assert_eq!(logo.status, 404);
    assert!(
        server.wait_for_log(
            "symlink /usr/share/dokuwiki/lib/tpl -> /var/lib/dokuwiki/lib/tpl leads out of the document root",
            std::time::Duration::from_secs(5)
        ),
        "{}",
        server.log()
    );
}
