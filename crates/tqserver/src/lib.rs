//! tqserver: runs PHP applications in production.
//!
//! # Theory of operation
//! tqserver reads `config/server.yaml` and one `workers/<name>/config/worker.yaml`
//! per app ([`config`]). Each app gets a pool of php-cgi processes
//! (the `pool` crate) reached over kept-alive FastCGI connections (the
//! `fastcgi` crate), and a route: the HTTP front ([`http`]) sends each
//! request to the app with the longest matching path prefix ([`router`]),
//! which serves a static file or runs a script the way nginx's `try_files`
//! would ([`http::resolve`]). The FastCGI listener ([`listener`]) feeds the same
//! pools from a web server in front. [`server`] ties the lifecycle together
//! (start, reload as a diff, graceful stop); [`observe`], [`metrics`],
//! [`status`] and [`admin`] make it visible, and [`readiness`] decides what
//! `/readyz` tells a balancer.

pub mod admin;
pub mod app;
pub mod config;
pub mod control;
pub mod docroot;
pub mod http;
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
pub mod watch;
