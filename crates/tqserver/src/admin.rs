//! The admin endpoint (`admin.listen`, default 127.0.0.1:9180):
//! - `/metrics`: Prometheus text, or OpenMetrics when the scraper asks;
//! - `/status`: JSON for every pool, the server's phase and the last reload;
//! - `/status/<worker>`: php-fpm's status page (`?json`, `?html`, `?xml`,
//!   `?openmetrics`, `&full`);
//! - `/healthz`: the process answers;
//! - `/readyz`: every enabled pool can take work (not while starting,
//!   draining or stopping, nor while a queue is above `ready_max_queue`; see
//!   `readiness`).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::server::{Phase, ServerState};
use crate::status::{self, quote};

pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, request)) }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        warn!("admin connection: {err}");
                    }
                }
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

pub fn handle(state: &ServerState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let query = request.uri().query().unwrap_or("");
    match path {
        "/metrics" => {
            let openmetrics = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            let body = state.telemetry.metrics.encode(openmetrics);
            let content_type = if openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            respond(StatusCode::OK, content_type, body)
        }
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match state.not_ready_reason() {
            None => respond(StatusCode::OK, "text/plain", "ready\n".into()),
            Some(reason) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {reason}\n"),
            ),
        },
        "/status" | "/status/" => respond(
            StatusCode::OK,
            "application/json",
            server_status(state, query.contains("full")),
        ),
        _ => match path.strip_prefix("/status/") {
            Some(worker) => {
                let router = state.router.load();
                match router.app_named(worker) {
                    Some(app) => {
                        let page = status::render_pool(&app.pool.status(), query);
                        respond(StatusCode::OK, page.content_type, page.body)
                    }
                    None => respond(
                        StatusCode::NOT_FOUND,
                        "text/plain",
                        format!("no worker named {worker}\n"),
                    ),
                }
            }
            None => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        },
    }
}

/// Every pool plus the server's own state, as JSON.
pub fn server_status(state: &ServerState, full: bool) -> String {
    let router = state.router.load();
    let pools: Vec<String> = router
        .apps()
        .iter()
        .map(|app| {
            let mut pool = status::json_value(&app.pool.status(), full);
            // Add the route and PHP version to the php-fpm fields.
            pool.pop();
            format!(
                "{pool},\"route\":{},\"php version\":{}}}",
                quote(crate::config::validate::display_route(&app.config.route)),
                quote(&app.config.php.version)
            )
        })
        .collect();
    let reload = state.last_reload();
    let errors: Vec<String> = reload.errors.iter().map(|e| quote(e)).collect();
    format!(
        "{{\"version\":{},\"phase\":{},\"uptime\":{},\"pid\":{},\"config\":{},\"last reload\":{{\"seq\":{},\"ok\":{},\"at\":{},\"errors\":[{}]}},\"pools\":[{}]}}",
        quote(env!("CARGO_PKG_VERSION")),
        quote(match state.phase() {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::Stopping => "stopping",
        }),
        state.uptime().as_secs(),
        std::process::id(),
        quote(&state.config_path().display().to_string()),
        reload.seq,
        reload.ok,
        reload.at_unix,
        errors.join(","),
        pools.join(",")
    )
}
