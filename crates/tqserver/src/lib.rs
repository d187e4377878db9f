//! tqserver: runs PHP applications in production.
//!
//! # Theory of operation
//! tqserver reads `config/server.yaml` and one `workers/<name>/config/worker.yaml`
//! per app ([`config`]: raw YAML structs, then a validated, typed config).
//! Each app ([`app`]) gets a pool of php-cgi processes (the `pool` crate),
//! reached over kept-alive FastCGI connections (the `fastcgi` crate), its
//! opened document root ([`docroot`]) and its telemetry handles.
//!
//! One request, from socket to PHP and back:
//! 1. [`http::h1`] reads a request head from the connection and checks it with
//!    the sans-io `h1` crate (limits, Host, body framing); the body, if any,
//!    stays on the socket for now.
//! 2. [`http::service`] puts the path in its one normal form
//!    ([`http::normalize`]), picks the app by longest prefix ([`router`]) and
//!    resolves the rest the way nginx's `try_files` would ([`http::resolve`],
//!    under the app's [`rules`] and symlink policy): a static file is sent
//!    from here ([`http::static_files`]); a script goes on.
//! 3. The whole request body is read (memory, then a temporary file) before
//!    any worker is involved, so no client can hold one ([`http::php`]).
//! 4. [`php::upstream`] takes a worker from the pool (queueing under its
//!    bound and timeout) and writes BEGIN_REQUEST, the CGI params
//!    ([`http::cgi_params`]) and the body into its connection under the
//!    request's deadline.
//! 5. The CGI response head is parsed ([`php::response_head`]); STDERR goes to
//!    the log ([`php::stderr`]). A response complete at once returns the
//!    worker at once; a longer one is buffered for the client
//!    ([`http::response_buffer`]) so the worker returns when PHP is done.
//! 6. [`http::h1`] writes the response and keeps the connection for the next
//!    request, or closes it lingering; [`observe`] counts and logs it.
//!
//! Over TLS ([`tls`]: certificates by SNI, the handshake, ALPN), steps 1-6
//! are the same, on a TLS stream.
//!
//! The FastCGI listener ([`listener`]) is the same path from step 4 on, fed by
//! a web server in front instead of steps 1-3. [`server`] ties the lifecycle
//! together (start, signals, graceful stop with a drain), [`reload`] computes
//! a reload as a plan that the server carries out; [`metrics`], [`status`] and
//! [`admin`] make it visible, and [`readiness`] decides what `/readyz` tells
//! a balancer. [`acme`] gets and renews certificates from an ACME CA.

#![forbid(unsafe_code)]

pub mod accept;
pub mod acme;
pub mod admin;
pub mod app;
pub mod config;
pub mod control;
pub mod dev;
pub mod docroot;
pub mod http;
pub mod httpapp;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod observe;
pub mod php;
pub mod readiness;
pub mod reload;
pub mod router;
pub mod rules;
pub mod server;
mod server_view;
pub mod status;
pub mod systemd;
pub mod tls;
pub mod watch;
