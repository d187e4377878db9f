//! What ACME keeps on disk, under `server.tls.acme.storage`:
//!
//! ```text
//! <storage>/<directory>/account.json              the account (its key): 0600
//! <storage>/<directory>/<first domain>/key.pem     the certificate's key: 0600
//! <storage>/<directory>/<first domain>/fullchain.pem  leaf first, then intermediates
//! ```
//!
//! `<directory>` is the directory URL made a file name (an account and a
//! certificate of a staging CA never pass for production ones). Files are
//! written whole, to a temporary name and renamed, so a crash leaves the old
//! file or the new one; the key is written before the chain, and a chain
//! whose key does not match is taken as absent.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::config::AcmeConfig;

/// Where one `server.tls.acme` block keeps its files.
#[derive(Clone, Debug)]
pub struct Storage {
    /// `<storage>/<directory>`.
    dir: PathBuf,
    /// `<storage>/<directory>/<first domain>`.
    cert_dir: PathBuf,
}

impl Storage {
    pub fn new(config: &AcmeConfig) -> Self {
        let dir = config.storage.join(file_name_of_url(&config.directory));
        let first = config.domains.first().map_or("certificate", String::as_str);
        Self {
            cert_dir: dir.join(first),
            dir,
        }
    }

    pub fn account_file(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    pub fn chain_file(&self) -> PathBuf {
        self.cert_dir.join("fullchain.pem")
    }

    pub fn key_file(&self) -> PathBuf {
        self.cert_dir.join("key.pem")
    }

    /// The stored account's credentials (JSON), if there are any.
    pub fn read_account(&self) -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(self.account_file()) {
            Ok(text) => Ok(Some(text)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub fn write_account(&self, json: &str) -> std::io::Result<()> {
        write_atomically(&self.account_file(), json.as_bytes(), 0o600)
    }

    /// The stored certificate, if there is one that parses and matches its
    /// key.
    pub fn read_certificate(&self) -> Result<Option<Certificate>, String> {
        let chain = match std::fs::read(self.chain_file()) {
            Ok(chain) => chain,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(format!(
                    "cannot read {}: {err}",
                    self.chain_file().display()
                ));
            }
        };
        let key = std::fs::read(self.key_file())
            .map_err(|err| format!("cannot read {}: {err}", self.key_file().display()))?;
        Certificate::from_pem(&chain, &key).map(Some)
    }

    /// Stores a new certificate: the key, then the chain.
    pub fn write_certificate(&self, chain_pem: &str, key_pem: &str) -> std::io::Result<()> {
        write_atomically(&self.key_file(), key_pem.as_bytes(), 0o600)?;
        write_atomically(&self.chain_file(), chain_pem.as_bytes(), 0o644)
    }
}

/// An issued certificate, ready to serve.
#[derive(Clone, Debug)]
pub struct Certificate {
    pub certified_key: Arc<CertifiedKey>,
    /// The names it is valid for (its DNS subject alternative names).
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Hexadecimal, as `openssl x509 -serial` prints it.
    pub serial: String,
}

impl Certificate {
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|err| format!("the certificate chain is not PEM: {err}"))?;
        let Some(leaf) = chain.first() else {
            return Err("the certificate file holds no certificate".to_owned());
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|err| format!("the certificate does not parse: {err}"))?;
        let validity = parsed.validity();
        let at = |t: x509_parser::time::ASN1Time| {
            UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
        };
        let names = match parsed.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        Some(dns.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let serial = parsed
            .raw_serial()
            .iter()
            .skip_while(|b| **b == 0)
            .map(|b| format!("{b:02X}"))
            .collect();
        let (not_before, not_after) = (at(validity.not_before), at(validity.not_after));
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|err| format!("the key is not a PEM private key: {err}"))?;
        let provider = rustls::crypto::ring::default_provider();
        let certified_key = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|err| format!("the key does not fit the certificate: {err}"))?;
        Ok(Self {
            certified_key: Arc::new(certified_key),
            names,
            not_before,
            not_after,
            serial,
        })
    }

    /// Whether it names every one of `domains`.
    pub fn covers(&self, domains: &[String]) -> bool {
        domains.iter().all(|domain| self.names.contains(domain))
    }
}

/// `https://acme-v02.api.letsencrypt.org/directory` →
/// `acme-v02.api.letsencrypt.org-directory`.
fn file_name_of_url(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.trim_end_matches('/')
        .chars()
        .enumerate()
        .map(|(i, c)| {
            // A leading dot could make `..`.
            if c.is_ascii_alphanumeric() || c == '-' || (c == '.' && i > 0) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Writes `path` whole or not at all: a temporary file beside it (with
/// `mode` from the start, so a key is never readable by others), synced,
/// then renamed over it.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // The folders hold private keys: only the owner may list them.
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn directory_urls_become_file_names() {
        assert_eq!(
            file_name_of_url("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org-directory"
        );
        assert_eq!(
            file_name_of_url("https://127.0.0.1:14000/dir/"),
            "127.0.0.1-14000-dir"
        );
        assert_eq!(file_name_of_url("https://a/../b"), "a-..-b");
        assert_eq!(file_name_of_url("https://.."), "-.");
    }

    /// A self-signed certificate for `names` and its key, as PEM.
    pub(crate) fn self_signed(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_stored_certificate_is_read_back_with_its_names_and_dates() {
        let dir = tempfile::tempdir().unwrap();
        let config = AcmeConfig {
            domains: vec!["shop.test".into(), "www.shop.test".into()],
            contact: vec![],
            directory: "https://ca.test/dir".into(),
            ca_root: None,
            storage: dir.path().to_owned(),
            renew_before: None,
            challenge: Default::default(),
        };
        let storage = Storage::new(&config);
        assert!(storage.read_certificate().unwrap().is_none());
        let (chain, key) = self_signed(&["shop.test", "WWW.shop.test"]);
        storage.write_certificate(&chain, &key).unwrap();
        assert_eq!(
            storage.chain_file(),
            dir.path().join("ca.test-dir/shop.test/fullchain.pem")
        );
        let stored = storage.read_certificate().unwrap().unwrap();
        assert_eq!(stored.names, ["shop.test", "www.shop.test"]);
        assert!(stored.covers(&config.domains));
        assert!(!stored.covers(&["other.test".to_owned()]));
        assert!(stored.not_before < stored.not_after);
        // Whole bytes in hex, without leading zero bytes (a first byte
        // below 0x10 still starts with a 0 digit, as openssl prints it).
        assert!(!stored.serial.is_empty() && !stored.serial.starts_with("00"));
        assert_eq!(stored.serial.len() % 2, 0, "{}", stored.serial);

        // A key that is not the certificate's (a crash between the two
        // writes) makes the pair unusable, not served.
        let (_, other_key) = self_signed(&["shop.test"]);
        std::fs::write(storage.key_file(), other_key).unwrap();
        let err = storage.read_certificate().unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
    }

    #[test]
    fn writes_are_whole_and_keys_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key.pem");
        write_atomically(&path, b"one", 0o600).unwrap();
        write_atomically(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["key.pem"]);
    }
}
