//! Error responses: a short plain-text page with the status line, so a
//! browser, curl and a log all show the same words.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::body::Body;

pub use crate::php::{ERROR_CONTENT_TYPE as CONTENT_TYPE, error_text as text};

pub fn status(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::text(text(status)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// A plain-text body with `status` (an ACME challenge's answer).
pub fn plain(status: StatusCode, text: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut response = Response::new(Body::text(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// 503 with Retry-After: the pool is saturated, try again shortly.
pub fn overloaded(retry_after_secs: u64) -> Response<Body> {
    let mut response = status(StatusCode::SERVICE_UNAVAILABLE);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

pub fn redirect(location: &str) -> Response<Body> {
    let mut response = status(StatusCode::MOVED_PERMANENTLY);
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}
