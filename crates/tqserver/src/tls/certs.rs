//! Certificates: loading a PEM chain and key (with the reasons a pair is
//! refused), and choosing one per handshake by the name the client asked
//! for (SNI). The set in use is swapped whole on a reload; handshakes in
//! progress keep the one they started with.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

/// A certificate chain and its key, as named in server.yaml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where server.yaml names them, for errors: `server.tls` or
    /// `server.tls.certificates[1]`.
    pub key_path: String,
}

/// Why a certificate or key cannot be used: which file, and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError {
    pub file: PathBuf,
    /// `cert` or `key`: which of the pair's settings names the file.
    pub setting: &'static str,
    pub reason: String,
}

/// One loaded certificate.
pub struct Certificate {
    pub files: CertificateFiles,
    /// DNS names from its subjectAltName, lower case (`*.example.com` for
    /// a wildcard).
    pub names: Vec<String>,
    pub not_after_unix: i64,
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("cert", &self.files.cert)
            .field("names", &self.names)
            .field("not_after_unix", &self.not_after_unix)
            .finish()
    }
}

/// Loads a PEM certificate chain and its PEM private key.
pub fn load(files: &CertificateFiles) -> Result<Certificate, CertError> {
    let cert_error = |reason: String| CertError {
        file: files.cert.clone(),
        setting: "cert",
        reason,
    };
    let key_error = |reason: String| CertError {
        file: files.key.clone(),
        setting: "key",
        reason,
    };
    let cert_pem =
        std::fs::read(&files.cert).map_err(|err| cert_error(format!("cannot read it: {err}")))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|err| cert_error(format!("not a PEM certificate chain: {}", pem_reason(err))))?;
    if chain.is_empty() {
        return Err(cert_error(
            "holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----` blocks)".to_owned(),
        ));
    }
    let key_pem =
        std::fs::read(&files.key).map_err(|err| key_error(format!("cannot read it: {err}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| match err {
        pem::Error::NoItemsFound => key_error(
            "holds no private key (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)"
                .to_owned(),
        ),
        err => key_error(format!("not a PEM private key: {}", pem_reason(err))),
    })?;

    let (names, not_after_unix) = {
        let (_, parsed) = x509_parser::parse_x509_certificate(&chain[0])
            .map_err(|err| cert_error(format!("the first certificate cannot be parsed: {err}")))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        (names, parsed.validity().not_after.timestamp())
    };

    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|err| match err {
        rustls::Error::InconsistentKeys(_) => key_error(format!(
            "does not belong to the certificate in {} (their public keys differ)",
            files.cert.display()
        )),
        err => key_error(format!("cannot be used: {err}")),
    })?;
    Ok(Certificate {
        files: files.clone(),
        names,
        not_after_unix,
        key: Arc::new(key),
    })
}

fn pem_reason(err: pem::Error) -> String {
    match err {
        pem::Error::Io(err) => err.to_string(),
        err => err.to_string(),
    }
}

/// The certificates served, by name. The first one is the default: for
/// clients that send no name (SNI) or one no certificate has.
#[derive(Debug)]
pub struct Certificates {
    all: Vec<Certificate>,
    by_name: HashMap<String, usize>,
}

impl Certificates {
    /// `certificates` must not be empty.
    pub fn new(certificates: Vec<Certificate>) -> Self {
        let mut by_name = HashMap::new();
        for (index, certificate) in certificates.iter().enumerate() {
            for name in &certificate.names {
                // The first certificate that names it wins.
                by_name.entry(name.clone()).or_insert(index);
            }
        }
        Self {
            all: certificates,
            by_name,
        }
    }

    /// Loads every pair; all errors, not just the first.
    pub fn load(files: &[CertificateFiles]) -> Result<Self, Vec<(CertificateFiles, CertError)>> {
        let mut loaded = Vec::new();
        let mut errors = Vec::new();
        for pair in files {
            match load(pair) {
                Ok(certificate) => loaded.push(certificate),
                Err(error) => errors.push((pair.clone(), error)),
            }
        }
        if errors.is_empty() && !loaded.is_empty() {
            Ok(Self::new(loaded))
        } else {
            Err(errors)
        }
    }

    pub fn all(&self) -> &[Certificate] {
        &self.all
    }

    /// The certificate for `server_name` (exact name, then a wildcard one
    /// label up), else the default.
    pub fn choose(&self, server_name: Option<&str>) -> &Certificate {
        let index = server_name
            .map(|name| name.trim_end_matches('.').to_ascii_lowercase())
            .and_then(|name| {
                self.by_name.get(&name).copied().or_else(|| {
                    let (_, parent) = name.split_once('.')?;
                    self.by_name.get(&format!("*.{parent}")).copied()
                })
            })
            .unwrap_or(0);
        &self.all[index]
    }

    /// What is worth a warning: certificates expired, or naming no DNS
    /// name (SNI can then only pick them as the default).
    pub fn warnings(&self) -> Vec<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut warnings = Vec::new();
        for certificate in &self.all {
            let file = certificate.files.cert.display();
            if certificate.not_after_unix < now {
                let when = httpdate::fmt_http_date(
                    UNIX_EPOCH
                        + std::time::Duration::from_secs(certificate.not_after_unix.max(0) as u64),
                );
                warnings.push(format!(
                    "{}.cert: {file}: the certificate expired on {when}; clients will refuse it",
                    certificate.files.key_path
                ));
            }
            if certificate.names.is_empty() {
                warnings.push(format!(
                    "{}.cert: {file}: the certificate has no DNS name in its subjectAltName",
                    certificate.files.key_path
                ));
            }
        }
        warnings
    }
}

/// rustls asks this for a certificate on each handshake.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<Certificates>,
}

impl CertResolver {
    pub fn new(certificates: Arc<Certificates>) -> Self {
        Self {
            current: ArcSwap::new(certificates),
        }
    }

    /// New handshakes use `certificates`; connections already set up are
    /// not affected.
    pub fn replace(&self, certificates: Arc<Certificates>) {
        self.current.store(certificates);
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.load();
        Some(current.choose(client_hello.server_name()).key.clone())
    }
}
