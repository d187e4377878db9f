//! The fast integration tests, one module per subject, in one test binary:
//! the harness in `tests/support` is compiled once and one binary is linked
//! instead of one per file. Each test starts its own server on free ports
//! against real php-cgi (and nginx, php-fpm, haproxy, redis where a test says
//! so); nextest runs each test in a process of its own. Tests about what PHP
//! sees or runs run on both PHP runtimes, as `MODULE::cgi::NAME` and
//! `MODULE::embed::NAME` (`on_both_runtimes!` in the support kit; the embed
//! runtime's tqserver-php is built by `cargo build -p tq-php-runtime`).
//!
//! ```text
//! cargo nextest run -p tqserver --test integration            # all of them
//! cargo nextest run -p tqserver --test integration hardening:: # one module
//! ```
//!
//! The heavy suites against real applications are a separate binary,
//! `tests/apps` (feature `app-tests`).

#[path = "../support/mod.rs"]
mod support;

mod acme;
mod cli;
mod compare;
mod compress;
mod dev;
mod early_hints;
mod embed;
mod h2;
mod hardening;
mod http;
mod http_apps;
mod listener;
mod live;
mod observe;
mod pool;
mod proxy_headers;
mod rules;
mod scaleout;
mod security;
mod sendfile;
mod tls;
mod worker_mode;
