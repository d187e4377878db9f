//! Micro-benchmark of building the CGI params of one request, straight into
//! a worker connection's write buffer: the per-request work of the HTTP front
//! before a single byte goes to PHP.
//!
//! Run with `cargo bench -p tqserver --bench cgi_params`.

use std::hint::black_box;
use std::path::PathBuf;

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use pool::{PoolConfig, SocketKind, WorkerCommand};
use tqserver::config::{AppConfig, PhpConfig, ResponseBuffer, SecurityConfig, SymlinkPolicy};
use tqserver::http::cgi_params::{CgiRequest, write};
use tqserver::http::resolve::Script;

fn worker() -> AppConfig {
    AppConfig {
        name: "blog".into(),
        file: "workers/blog/config/worker.yaml".into(),
        route: "/blog".into(),
        folder: "/srv/site/workers/blog".into(),
        document_root: "/srv/site/workers/blog/public".into(),
        front_controller: Some("index.php".into()),
        index: vec!["index.php".into()],
        limit_extensions: vec![".php".into()],
        static_files: true,
        cache_control: None,
        security: SecurityConfig {
            allow_dotfiles: false,
            allowed_dot_paths: vec![".well-known".into()],
            symlinks: SymlinkPolicy::Owner,
        },
        php: PhpConfig {
            runtime: tqserver::config::PhpRuntime::Cgi,
            worker: None,
            binary: "/usr/bin/php-cgi".into(),
            version: "8.2".into(),
            user: None,
            opcache_file_cache: false,
            cache_dir: None,
            request_buffering: true,
            response_buffer: ResponseBuffer {
                enabled: true,
                memory_bytes: 1 << 20,
                max_bytes: 1 << 30,
            },
        },
        pool: PoolConfig::with_command(
            "blog",
            WorkerCommand {
                program: "/usr/bin/php-cgi".into(),
                args: vec![],
                env: vec![],
                cwd: None,
                credentials: None,
                launch: Default::default(),
                socket: SocketKind::Unix { dir: "/run".into() },
            },
        ),
        fastcgi: None,
        access_log: None,
        rules: Default::default(),
        ready_max_queue: None,
        slow_log: None,
    }
}

fn browser_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "example.org"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        (
            "cookie",
            "wordpress_logged_in=abc123; wp-settings-1=editor%3Dhtml",
        ),
        ("cookie", "theme=dark"),
        ("referer", "https://example.org/blog/"),
        ("connection", "keep-alive"),
    ] {
        headers.append(name, HeaderValue::from_static(value));
    }
    headers
}

fn bench(c: &mut Criterion) {
    let worker = worker();
    let script = Script {
        name: "/index.php".into(),
        filename: PathBuf::from("/srv/site/workers/blog/public/index.php"),
        path_info: String::new(),
    };
    let uri: Uri = "/blog/2024/05/hello-world?page=2&sort=date"
        .parse()
        .unwrap();
    let headers = browser_headers();
    let request = CgiRequest {
        config: &worker,
        script: &script,
        method: &Method::GET,
        uri: &uri,
        version: Version::HTTP_11,
        headers: &headers,
        peer: "203.0.113.42:53124".parse().unwrap(),
        local: "192.0.2.10:8080".parse().unwrap(),
        content_length: None,
        https: false,
    };
    let mut buf = BytesMut::with_capacity(4096);
    c.bench_function("cgi_params/browser_get", |b| {
        b.iter(|| {
            buf.clear();
            write(&mut buf, black_box(&request));
            black_box(buf.len())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
