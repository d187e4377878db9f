//! What both fronts (HTTP and the FastCGI listener) share to talk to PHP,
//! so that neither imports the other: taking a worker and sending it a
//! request under its deadline, one mapping from how that ended to the
//! status a client sees, the CGI response head and the STDERR relay (the
//! document root and its symlink policy are `crate::docroot`). A runtime
//! other than php-cgi plugs in below this module.

pub mod response_head;
pub mod stderr;
pub mod upstream;

use http::StatusCode;

/// The text of an error page of our own: "503 Service Unavailable\n", so
/// a browser, curl and a log all show the same words.
pub fn error_text(status: StatusCode) -> String {
    format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

/// The Content-Type of [`error_text`].
pub const ERROR_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
