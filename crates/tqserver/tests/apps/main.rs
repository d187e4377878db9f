//! Real applications, unmodified, on tqserver: WordPress (Debian's
//! `wordpress` package on a private MariaDB server) and a Laravel app built
//! on Debian's `php-laravel-framework`, driven end to end over HTTP the way
//! a browser drives them (forms, cookies, nonces, redirects, uploads), and
//! Debian's `dokuwiki` with the example config in `examples/debian`.
//!
//! Heavy, so it is its own target behind the `app-tests` feature:
//!
//! ```text
//! cargo nextest run -p tqserver --features app-tests --test apps
//! ```
//!
//! WordPress and Laravel run on both PHP runtimes (`php.runtime: cgi`, and
//! `embed` in the `_on_embed` tests), which need `tqserver-php` beside the
//! tqserver binary: `cargo build -p tq-php-runtime` (the workspace build in
//! `scripts/test` does it).
//!
//! The tests install what they need (`scripts/deps.sh apps`, as root) and
//! start their own MariaDB; anything missing fails a test, nothing skips.
//! `bench_opcache` (ignored) measures what php-cgi's per-process OPcache
//! costs on WordPress; see docs/OPCACHE.md. `bench_worker_mode` (ignored)
//! measures worker mode on Laravel against classic mode and nginx +
//! php-fpm; see docs/WORKER-MODE.md.

#[path = "../support/mod.rs"]
mod support;

mod browser;
mod dokuwiki;
mod html;
mod laravel;
mod mariadb;
mod measure;
mod nginx;
mod opcache;
mod png;
mod setup;
mod wordpress;
