//! One HTTP request: route to an app, resolve the path, then serve a static
//! file, run a script, redirect, or refuse.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use tracing::{info, warn};

use super::body::Body;
use super::body_reader::RequestBody;
use super::compress::{self, Accepted};
use super::php::{self, PhpBody};
use super::resolve::{self, Target};
use super::{errors, normalize, proxy, sendfile, static_files};
use crate::config::ServerSettings;
use crate::observe::{Observation, RequestLine, Telemetry};
use crate::router::{Routed, Router};

/// What every request handler shares.
pub struct Frontend {
    /// Swapped whole on reload; a request keeps the router it started with.
    pub router: Arc<ArcSwap<Router>>,
    pub settings: ServerSettings,
    pub telemetry: Arc<Telemetry>,
    /// Cancelled when a stop begins its `drain_delay`: responses then say
    /// `Connection: close`, so kept-alive clients (and balancers' pooled
    /// connections) move to another node before the listeners close.
    pub draining: tokio_util::sync::CancellationToken,
    /// Development mode's page reloads (None in production).
    pub live_reload: Option<Arc<crate::dev::LiveReload>>,
    /// HTTP-01 challenge answers (`server.tls.acme`), served before routing.
    pub acme_challenges: Option<Arc<crate::acme::Http01Challenges>>,
}

pub async fn handle(
    front: Arc<Frontend>,
    mut request: Request<RequestBody>,
    peer: SocketAddr,
    local: SocketAddr,
) -> Response<Body> {
    if let Some(challenges) = &front.acme_challenges
        && let Some(answer) = challenges.answer(request.uri().path())
    {
        info!(%peer, path = request.uri().path(), "ACME: HTTP-01 challenge answered");
        return errors::plain(StatusCode::OK, answer);
    }
    if let Some(live) = &front.live_reload
        && request.uri().path() == crate::dev::LIVE_RELOAD_PATH
    {
        return live.events(request.uri().query());
    }
    let is_head = request.method() == http::Method::HEAD;
    // Behind a trusted proxy, the client it names is the client: for PHP,
    // the logs and every check by address from here on.
    let client = proxy::client(&front.settings.trusted_proxies, peer, request.headers());
    let peer = client.addr;
    if client.https {
        request.extensions_mut().insert(proxy::ForwardedHttps);
    }
    // The app is chosen, and the file resolved, on one normal form of the
    // path (see normalize.rs).
    let normal = normalize::normalize(request.uri().path());
    let router = front.router.load();
    let app = match &normal {
        Ok(path) => match router.route(path) {
            Some(Routed::Php(app, rest)) => Some((app.clone(), rest.len())),
            Some(Routed::Http(app)) => {
                let app = app.clone();
                drop(router);
                let mut response = crate::httpapp::proxy::handle(&front, app, request, peer).await;
                if let Some(live) = &front.live_reload {
                    live.inject(&mut response, is_head);
                }
                return response;
            }
            None => None,
        },
        Err(_) => None,
    };
    drop(router);
    let accepted = Accepted::of(request.method(), request.headers());
    let line = RequestLine::Http {
        method: request.method().clone(),
        uri: request.uri().clone(),
        version: request.version(),
        referer: request.headers().get(http::header::REFERER).cloned(),
        user_agent: request.headers().get(http::header::USER_AGENT).cloned(),
    };
    let mut observation = Observation::new(
        front.telemetry.clone(),
        app.as_ref().map(|(app, _)| app.telemetry.clone()),
        Some(peer),
        line,
    );
    // Over TLS to tqserver, or to a trusted proxy that says so.
    let over_tls = request.extensions().get::<super::Tls>().is_some() || client.https;
    let tls = front.settings.tls.as_ref();
    if let Some(tls) = tls
        && tls.redirect_http
        && !over_tls
        && !request.uri().path().starts_with(ACME_CHALLENGE)
    {
        let location = https_location(&request, local, tls.listen.port());
        let mut response = errors::status(StatusCode::PERMANENT_REDIRECT);
        if let Ok(value) = http::HeaderValue::from_str(&location) {
            response.headers_mut().insert(http::header::LOCATION, value);
        }
        return finish(response, observation);
    }
    let (mut response, compression) = match (app, normal) {
        (Some((app, rest_len)), Ok(path)) => {
            let rest = &path[path.len() - rest_len..];
            let compression = app
                .config
                .compression
                .clone()
                .unwrap_or_else(|| front.settings.compression.clone());
            let response = route(
                &front,
                app,
                request,
                rest,
                (peer, local),
                &accepted,
                &mut observation,
            )
            .await;
            (response, Some(compression))
        }
        (_, Err(error)) => {
            warn!(%peer, uri = %request.uri(), "bad request: {}", error.reason());
            (errors::status(StatusCode::BAD_REQUEST), None)
        }
        (None, Ok(_)) => (errors::status(StatusCode::NOT_FOUND), None),
    };
    if over_tls
        && let Some(hsts) = tls.and_then(|tls| tls.hsts.as_ref())
        && !response
            .headers()
            .contains_key(http::header::STRICT_TRANSPORT_SECURITY)
    {
        response
            .headers_mut()
            .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    let mut response = finish(response, observation);
    // After `finish`: a PHP stream keeps its observation while the script
    // is added behind it.
    if let Some(live) = &front.live_reload {
        live.inject(&mut response, is_head);
    }
    // Last: the page as it will be sent is what is compressed.
    if let Some(compression) = compression {
        response = compress::apply(response, &accepted, &compression);
    }
    response
}

/// Where ACME's HTTP-01 challenges are answered: over plain HTTP even with
/// `server.tls.redirect_http`.
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// The `https://` URL of a plain HTTP request: its host (without the port)
/// on the TLS port.
fn https_location<B>(request: &Request<B>, local: SocketAddr, tls_port: u16) -> String {
    let host = request
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            let host = request.headers().get(http::header::HOST)?.to_str().ok()?;
            let authority: http::uri::Authority = host.parse().ok()?;
            Some(authority.host().to_owned())
        })
        .unwrap_or_else(|| match local.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
    let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    if tls_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{tls_port}{path}")
    }
}

/// Finishes the observation now, or hands it to a streaming body.
fn finish(mut response: Response<Body>, observation: Observation) -> Response<Body> {
    let status = response.status().as_u16();
    let body = response.body_mut();
    let bytes = body.size_hint().exact().unwrap_or(0);
    match body.php_stream() {
        Some(stream) => stream.observe(observation, status),
        None => observation.finish(status, bytes),
    }
    response
}

async fn route(
    front: &Frontend,
    app: Arc<crate::app::App>,
    request: Request<RequestBody>,
    rest: &str,
    (peer, local): (SocketAddr, SocketAddr),
    accepted: &Accepted,
    observation: &mut Observation,
) -> Response<Body> {
    match resolve::resolve(&app.config, &app.root, rest) {
        Target::Script(script) => {
            let (parts, mut incoming) = request.into_parts();
            let limit = front.settings.max_body_bytes;
            let streamed = !app.config.php.request_buffering;
            let body = if incoming.is_end_stream() {
                PhpBody::Empty
            } else if let Some(bytes) = incoming.take_buffered() {
                PhpBody::Buffered(bytes)
            } else if let Some(length) = incoming.size_hint().exact()
                && streamed
            {
                if length > limit {
                    info!(worker = %app.config.name, length, limit, "request body too large");
                    return errors::status(StatusCode::PAYLOAD_TOO_LARGE);
                }
                PhpBody::Sized(incoming, length)
            } else {
                // The whole body first: no worker waits for a client.
                match Box::pin(php::collect(incoming, limit)).await {
                    Ok(body) => body,
                    Err((status, why)) => {
                        info!(
                            worker = %app.config.name,
                            %peer,
                            status = status.as_u16(),
                            "request body not received: {why}"
                        );
                        return errors::status(status);
                    }
                }
            };
            // Boxed: the PHP exchange is a large future, and keeping it out
            // of this one keeps every request's future small to create and move.
            let mut response = Box::pin(php::serve(
                &app,
                &front.router,
                &parts,
                body,
                script,
                (peer, local),
                observation,
            ))
            .await;
            match response.extensions_mut().remove::<sendfile::Redirect>() {
                Some(redirect) => sendfile::serve(
                    &app.config,
                    &parts.method,
                    &parts.headers,
                    std::mem::take(response.headers_mut()),
                    redirect,
                ),
                None => response,
            }
        }
        Target::Static { file, meta, path } if app.config.static_files => {
            let cache_control = app.config.cache_control.as_deref();
            let compression = app
                .config
                .compression
                .as_deref()
                .unwrap_or(&front.settings.compression);
            let sibling = (compression.enabled && compression.precompressed)
                .then(|| {
                    compress::sibling(accepted, &meta, |suffix| open_sibling(&app, &path, suffix))
                })
                .flatten();
            let (file, meta, coding) = match sibling {
                Some((file, meta, coding)) => (file, meta, Some(coding)),
                None => (file, meta, None),
            };
            let mut response = static_files::serve(
                request.method(),
                request.headers(),
                file,
                &meta,
                &path,
                cache_control,
            );
            if let Some(coding) = coding {
                let headers = response.headers_mut();
                headers.insert(
                    http::header::CONTENT_ENCODING,
                    http::HeaderValue::from_static(coding.token()),
                );
                compress::add_vary(headers);
            }
            response
        }
        Target::Static { .. } | Target::NotFound => errors::status(StatusCode::NOT_FOUND),
        Target::AddSlash => {
            // From the normal form, which starts with exactly one '/': a
            // raw `//host/dir` would make `Location: //host/dir/`, a link to
            // another site.
            let path = format!("{}{rest}/", app.config.route);
            let location = match request.uri().query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            errors::redirect(&location)
        }
        Target::Forbidden => errors::status(StatusCode::FORBIDDEN),
        Target::BadRequest(reason) => {
            warn!(
                worker = %app.config.name,
                %peer,
                uri = %request.uri(),
                "bad request: {reason}"
            );
            errors::status(StatusCode::BAD_REQUEST)
        }
    }
}

/// `path` (a static file under the app's document root) with `suffix`
/// added, opened by the rules the file itself was: beneath the root, with
/// the app's symlink policy and `rules:` (a denied sibling is as missing).
fn open_sibling(
    app: &crate::app::App,
    path: &std::path::Path,
    suffix: &str,
) -> Option<(std::fs::File, std::fs::Metadata)> {
    use std::os::unix::ffi::OsStrExt;
    let relative = path.strip_prefix(app.root.path()).ok()?;
    let mut name = relative.as_os_str().as_bytes().to_vec();
    name.extend_from_slice(suffix.as_bytes());
    let segments: Vec<&[u8]> = name.split(|&b| b == b'/').collect();
    if matches!(
        app.config.rules.verdict(&segments),
        crate::rules::Verdict::Deny { .. }
    ) {
        return None;
    }
    let file = app
        .root
        .open_beneath(&name, app.config.security.symlinks)
        .ok()?;
    let meta = file.metadata().ok()?;
    meta.is_file().then_some((file, meta))
}
