//! TLS on the HTTP front (rustls with the ring provider; no OpenSSL).
//!
//! - **What is offered**: TLS 1.2 and 1.3 only, with rustls' default cipher
//!   suites (all AEAD with forward secrecy; nothing weak to turn off).
//! - **Which certificate**: chosen per handshake by the name the client sent
//!   (SNI), from the names in each certificate; the first certificate is
//!   the default ([`certs`]).
//! - **Reloads**: a reload (SIGHUP, `tqserver reload`, a change of a
//!   certificate or key file) loads the certificates again and swaps them in
//!   ([`certs::CertResolver::replace`]): connections already up keep going;
//!   a certificate that does not load refuses the reload and the old ones
//!   stay.
//! - **A handshake** runs on the connection's own task, bounded by
//!   `server.read_timeout`, so a client that never completes one costs a
//!   slot for that long and blocks nobody else.
//! - **ALPN** says what runs on top ([`serve_connection`], the one place
//!   that decides it): HTTP/2 (`h2`, unless `server.http2.enabled: false`)
//!   or HTTP/1.1.
//!
//! Not here: the HTTP/1.1 connection itself ([`crate::http::h1`], over
//! [`crate::http::stream`]), redirects and HSTS (the service).

pub mod certs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::http::stream::Stream;
use crate::http::{Frontend, Tls, h1, h2};
pub use certs::{CertError, CertResolver, Certificate, CertificateFiles, Certificates};

/// Protocols offered by ALPN, most preferred first (without `h2` when
/// `server.http2.enabled` is false).
pub const ALPN_PROTOCOLS: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The rustls configuration of the TLS port, with certificates from
/// `resolver` (which a reload updates in place, and ACME renewals too).
/// `http2` offers ALPN `h2`; `acme_tls_alpn` also offers `acme-tls/1`, for
/// TLS-ALPN-01 validation handshakes ([`crate::acme::Resolver`] answers
/// those).
pub fn server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    http2: bool,
    acme_tls_alpn: bool,
) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN_PROTOCOLS
        .iter()
        .filter(|p| http2 || **p != b"h2")
        .map(|p| p.to_vec())
        .collect();
    if acme_tls_alpn {
        config
            .alpn_protocols
            .push(crate::acme::ACME_TLS_ALPN.to_vec());
    }
    Arc::new(config)
}

/// Handshakes on a newly accepted connection (within `read_timeout`), then
/// serves it with the protocol ALPN chose.
pub async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    front: Arc<Frontend>,
    shutdown: CancellationToken,
) {
    // Boxed, and only a pointer comes out: a handshake's state and a TLS
    // stream hold a whole rustls session inline, which would otherwise sit
    // in every connection's future (of plain HTTP ones too) for its whole
    // life: 12.5 KB instead of about 2 KB per idle connection.
    let timeout = front.settings.read_timeout;
    let Some(stream) = Box::pin(handshake(acceptor, tcp, peer, timeout, &shutdown)).await else {
        return;
    };
    // The one place that decides what runs over TLS (with
    // [`ALPN_PROTOCOLS`], what is offered).
    match stream.get_ref().1.alpn_protocol() {
        Some(b"http/1.1") | None => {
            h1::serve_connection(Stream::Tls(stream), peer, local, front, shutdown).await
        }
        Some(b"h2") => {
            let tls = Tls {
                server_name: stream.get_ref().1.server_name().map(Arc::from),
            };
            h2::serve_connection(stream, peer, local, Some(tls), front, shutdown).await
        }
        // A TLS-ALPN-01 validation: the handshake was all it needed.
        Some(crate::acme::ACME_TLS_ALPN) => {
            debug!(%peer, "ACME: TLS-ALPN-01 validation handshake done")
        }
        // rustls agrees only on a protocol that was offered.
        Some(other) => debug!(%peer, alpn = ?other, "ALPN protocol not served"),
    }
}

/// The server side of a handshake, within `timeout`; `None` if it failed,
/// took too long, or the server is stopping.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Option<Box<TlsStream<TcpStream>>> {
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return None,
        handshake = tokio::time::timeout(timeout, acceptor.accept(tcp)) => handshake,
    };
    match handshake {
        Ok(Ok(stream)) => Some(Box::new(stream)),
        Ok(Err(err)) => {
            debug!(%peer, "TLS handshake failed: {err}");
            None
        }
        Err(_) => {
            debug!(%peer, "TLS handshake not done within server.read_timeout");
            None
        }
    }
}
