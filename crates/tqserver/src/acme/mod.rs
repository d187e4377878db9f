//! Automatic certificates (`server.tls.acme`): one certificate for the
//! configured domains from an ACME CA (Let's Encrypt by default), kept on
//! disk and renewed before it expires.
//!
//! # Theory of operation
//! One task per server ([`Acme::run`]) owns the certificate's life:
//! 1. At start it loads the stored certificate ([`storage`]); one that names
//!    every domain and has not expired is served at once, with no network.
//! 2. Otherwise, and when the renewal time comes ([`schedule`]: a third of
//!    the lifetime left, or `renew_before`), it gets a new one ([`issue`]):
//!    the stored account (or a new one), an order, an HTTP-01 challenge per
//!    name, whose answers the HTTP front serves from [`Http01Challenges`]
//!    before routing to any app, then a key and CSR made here, and the chain.
//!    The files are replaced whole, then the new certificate is published
//!    ([`Acme::certificate`]), so new TLS handshakes get it while open
//!    connections keep theirs.
//! 3. A failed attempt is logged with its reason and retried after 5 s,
//!    doubling up to an hour; a certificate still valid is served meanwhile.
//!
//! What it does not own: the TLS listener, which asks [`Acme::certificate`]
//! for the names in [`Acme::domains`].

pub mod challenges;
pub mod issue;
pub mod schedule;
pub mod storage;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use challenges::{ACME_TLS_ALPN, Http01Challenges, TlsAlpn01Challenges};
pub use storage::{Certificate, Storage};

use crate::config::AcmeConfig;

/// The longest single sleep: the renewal time is looked at again at least
/// this often, so a clock that jumped (a suspended VM) is noticed.
const LONGEST_SLEEP: Duration = Duration::from_secs(3600);
/// Longest one attempt may take, all steps together (a CA that accepts a
/// connection and then says nothing must not stop renewals for good).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);

/// What the ACME task shares with the fronts.
#[derive(Debug)]
pub struct Acme {
    config: AcmeConfig,
    /// Answers to HTTP-01 challenges under way (served by the HTTP front).
    pub challenges: Arc<Http01Challenges>,
    /// Certificates for TLS-ALPN-01 challenges under way (the TLS port).
    pub tls_alpn: TlsAlpn01Challenges,
    /// The certificate served for [`Acme::domains`]; None until one is
    /// loaded or issued. Swapped whole.
    current: ArcSwapOption<Certificate>,
}

impl Acme {
    pub fn new(config: AcmeConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            challenges: Arc::default(),
            tls_alpn: TlsAlpn01Challenges::default(),
            current: ArcSwapOption::empty(),
        })
    }

    /// Whether the TLS port must offer ALPN's `acme-tls/1` (TLS-ALPN-01).
    pub fn uses_tls_alpn(&self) -> bool {
        self.config.challenge == crate::config::AcmeChallenge::TlsAlpn01
    }

    /// The names the certificate is for (lower case).
    pub fn domains(&self) -> &[String] {
        &self.config.domains
    }

    /// The certificate to serve, once there is one.
    pub fn certificate(&self) -> Option<Arc<Certificate>> {
        self.current.load_full()
    }

    /// The key and chain for a TLS handshake that asked for `server_name`
    /// (SNI), when it is one of the domains and a certificate is there.
    pub fn resolve(&self, server_name: &str) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let wanted = server_name.trim_end_matches('.');
        if !self
            .config
            .domains
            .iter()
            .any(|domain| domain.eq_ignore_ascii_case(wanted))
        {
            return None;
        }
        self.current
            .load()
            .as_ref()
            .map(|certificate| certificate.certified_key.clone())
    }

    /// Gets and renews the certificate until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        // The process's TLS provider (a no-op when one is installed): the
        // HTTPS client of the ACME crate builds its config from it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let storage = Storage::new(&self.config);
        self.load_stored(&storage);
        let mut account = None;
        let mut failures = 0u32;
        loop {
            let wait = match self.certificate() {
                _ if failures > 0 => schedule::retry_delay(failures),
                Some(current) => {
                    let (at, _) = schedule::renewal_time(
                        current.not_before,
                        current.not_after,
                        self.config.renew_before,
                    );
                    schedule::until(at, SystemTime::now())
                }
                None => Duration::ZERO,
            };
            if !wait.is_zero() {
                let due = failures > 0 || wait <= LONGEST_SLEEP;
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(LONGEST_SLEEP)) => {}
                    _ = shutdown.cancelled() => return,
                }
                if !due {
                    continue;
                }
            }
            let attempt =
                tokio::time::timeout(ATTEMPT_TIMEOUT, self.obtain(&storage, &mut account));
            let result = tokio::select! {
                result = attempt => result.unwrap_or_else(|_| {
                    Err(anyhow::anyhow!("no answer from the CA within {}s", ATTEMPT_TIMEOUT.as_secs()))
                }),
                _ = shutdown.cancelled() => return,
            };
            match result {
                Ok(certificate) => {
                    failures = 0;
                    info!(
                        serial = certificate.serial,
                        not_after = %httpdate::fmt_http_date(certificate.not_after),
                        file = %storage.chain_file().display(),
                        "ACME: certificate issued for {} and stored",
                        self.config.domains.join(", ")
                    );
                    self.publish(certificate);
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let delay = schedule::retry_delay(failures);
                    warn!(
                        directory = self.config.directory,
                        attempt = failures,
                        "ACME: getting a certificate for {} failed: {err:#}; retrying in {}s",
                        self.config.domains.join(", "),
                        delay.as_secs()
                    );
                }
            }
        }
    }

    /// One attempt: the account (kept for later attempts), then the
    /// certificate; an account the CA forgot is made anew once.
    async fn obtain(
        &self,
        storage: &Storage,
        account: &mut Option<instant_acme::Account>,
    ) -> anyhow::Result<Certificate> {
        let current = match account.take() {
            Some(current) => current,
            None => issue::account(&self.config, storage).await?,
        };
        let result = issue::certificate(&self.config, &current, storage, self).await;
        match result {
            Err(err) if issue::account_unknown(&err) => {
                warn!("ACME: the CA does not know the stored account; creating a new one");
                let fresh = issue::create_account(&self.config, storage).await?;
                let result = issue::certificate(&self.config, &fresh, storage, self).await;
                *account = Some(fresh);
                result
            }
            result => {
                *account = Some(current);
                result
            }
        }
    }

    /// Serves the stored certificate if it is still good for the domains.
    fn load_stored(&self, storage: &Storage) {
        let file = storage.chain_file();
        let domains = self.config.domains.join(", ");
        match storage.read_certificate() {
            Ok(Some(stored)) if !stored.covers(&self.config.domains) => info!(
                file = %file.display(),
                "ACME: the stored certificate is for {}, not {domains}; ordering a new one",
                stored.names.join(", ")
            ),
            Ok(Some(stored)) if stored.not_after <= SystemTime::now() => info!(
                file = %file.display(),
                "ACME: the stored certificate expired on {}; ordering a new one",
                httpdate::fmt_http_date(stored.not_after)
            ),
            Ok(Some(stored)) => {
                info!(
                    file = %file.display(),
                    serial = stored.serial,
                    not_after = %httpdate::fmt_http_date(stored.not_after),
                    "ACME: stored certificate for {domains} loaded"
                );
                self.publish(stored);
            }
            Ok(None) => info!(
                storage = %self.config.storage.display(),
                "ACME: no certificate stored for {domains}; ordering one from {}",
                self.config.directory
            ),
            Err(why) => warn!(
                file = %file.display(),
                "ACME: the stored certificate is unusable ({why}); ordering a new one"
            ),
        }
    }

    fn publish(&self, certificate: Certificate) {
        let (at, set_aside) = schedule::renewal_time(
            certificate.not_before,
            certificate.not_after,
            self.config.renew_before,
        );
        if set_aside {
            warn!(
                "ACME: server.tls.acme.renew_before is not shorter than the certificate's lifetime ({}s); renewing when a third of it is left",
                certificate
                    .not_after
                    .duration_since(certificate.not_before)
                    .unwrap_or_default()
                    .as_secs()
            );
        }
        info!(
            serial = certificate.serial,
            "ACME: certificate serves from now on; renewal due {}",
            httpdate::fmt_http_date(at)
        );
        self.current.store(Some(Arc::new(certificate)));
    }
}

/// The TLS listener's certificate choice with ACME: a handshake for one
/// of the ACME domains gets the ACME certificate (the current one, so a
/// renewal is served from the next handshake on); any other goes to the
/// listener's own resolver (`server.tls.cert`/`key`), and without one gets
/// the ACME certificate too.
#[derive(Debug)]
pub struct Resolver {
    acme: Arc<Acme>,
    others: Option<Arc<dyn rustls::server::ResolvesServerCert>>,
}

impl Resolver {
    pub fn new(
        acme: Arc<Acme>,
        others: Option<Arc<dyn rustls::server::ResolvesServerCert>>,
    ) -> Self {
        Self { acme, others }
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        // A TLS-ALPN-01 validation offers `acme-tls/1` and nothing else.
        let mut protocols = hello.alpn().into_iter().flatten();
        if protocols.next() == Some(ACME_TLS_ALPN) && protocols.next().is_none() {
            return hello
                .server_name()
                .and_then(|name| self.acme.tls_alpn.get(name));
        }
        if let Some(key) = hello.server_name().and_then(|name| self.acme.resolve(name)) {
            return Some(key);
        }
        match &self.others {
            Some(others) => others.resolve(hello),
            None => self
                .acme
                .certificate()
                .map(|certificate| certificate.certified_key.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_only_its_domains_once_it_has_a_certificate() {
        let acme = Acme::new(AcmeConfig {
            domains: vec!["shop.test".into(), "www.shop.test".into()],
            contact: vec![],
            directory: "https://ca.test/dir".into(),
            ca_root: None,
            storage: std::env::temp_dir(),
            renew_before: None,
            challenge: Default::default(),
        });
        assert!(acme.resolve("shop.test").is_none());
        let (chain, key) = storage::tests::self_signed(&["shop.test", "www.shop.test"]);
        acme.publish(Certificate::from_pem(chain.as_bytes(), key.as_bytes()).unwrap());
        assert!(acme.resolve("shop.test").is_some());
        assert!(acme.resolve("WWW.Shop.Test.").is_some());
        assert!(acme.resolve("other.test").is_none());
        assert!(acme.resolve("").is_none());
    }
}
