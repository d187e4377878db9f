//! tqserver: runs PHP applications in production.
//!
//! # Theory of operation
//! tqserver reads `config/server.yaml` and one `workers/<name>/config/worker.yaml`
//! per app ([`config`]). Each app gets a pool of php-cgi processes
//! (the `pool` crate) reached over kept-alive FastCGI connections (the
//! `fastcgi` crate), and a route: the HTTP front ([`http`]) sends each
//! request to the app with the longest matching path prefix ([`router`]),
//! which serves a static file or runs a script the way nginx's `try_files`
//! would ([`http::resolve`]). [`server`] ties the lifecycle together.

pub mod app;
pub mod config;
pub mod http;
pub mod listener;
pub mod logging;
pub mod router;
pub mod server;
pub mod status;
