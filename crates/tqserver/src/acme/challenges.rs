//! Challenge answers, put here by the ACME task while the CA validates:
//! - HTTP-01: a token's key authorization; the HTTP front answers
//!   `GET /.well-known/acme-challenge/<token>` from here before any app is
//!   routed to (so no app, rule or `allow_dotfiles` setting is in the way);
//! - TLS-ALPN-01: a self-signed certificate per name carrying the key
//!   authorization's digest (RFC 8737), which the TLS port presents to a
//!   handshake that offers only the `acme-tls/1` protocol.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;

/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The URL path prefix of HTTP-01 challenges (RFC 8555 8.3).
pub const PATH_PREFIX: &str = "/.well-known/acme-challenge/";

/// Tokens and their key authorizations, for the challenges under way.
/// A plain lock: held for a map lookup or insert, never across an await.
#[derive(Debug, Default)]
pub struct Http01Challenges {
    answers: RwLock<HashMap<String, Bytes>>,
}

impl Http01Challenges {
    pub fn insert(&self, token: &str, key_authorization: &str) {
        if let Ok(mut answers) = self.answers.write() {
            answers.insert(
                token.to_owned(),
                Bytes::copy_from_slice(key_authorization.as_bytes()),
            );
        }
    }

    pub fn remove(&self, token: &str) {
        if let Ok(mut answers) = self.answers.write() {
            answers.remove(token);
        }
    }

    /// The answer for a request path, if it asks for a token under way.
    pub fn answer(&self, path: &str) -> Option<Bytes> {
        let token = path.strip_prefix(PATH_PREFIX)?;
        self.answers.read().ok()?.get(token).cloned()
    }
}

/// TLS-ALPN-01 certificates by name, for the challenges under way.
#[derive(Debug, Default)]
pub struct TlsAlpn01Challenges {
    certificates: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl TlsAlpn01Challenges {
    /// Makes the validation certificate for `name` from the SHA-256 digest
    /// of the key authorization.
    pub fn insert(&self, name: &str, digest: &[u8]) -> Result<(), String> {
        let certificate = validation_certificate(name, digest)?;
        if let Ok(mut certificates) = self.certificates.write() {
            certificates.insert(name.to_ascii_lowercase(), Arc::new(certificate));
        }
        Ok(())
    }

    pub fn remove(&self, name: &str) {
        if let Ok(mut certificates) = self.certificates.write() {
            certificates.remove(&name.to_ascii_lowercase());
        }
    }

    /// The certificate for a validation handshake for `name`.
    pub fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.certificates.read().ok()?.get(&name).cloned()
    }
}

/// A self-signed certificate for `name` with the critical acmeIdentifier
/// extension holding `digest`.
fn validation_certificate(name: &str, digest: &[u8]) -> Result<CertifiedKey, String> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_ascii_lowercase()])
        .map_err(|err| format!("no certificate for {name}: {err}"))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|err| format!("no key: {err}"))?;
    let certificate = params
        .self_signed(&key)
        .map_err(|err| format!("no certificate for {name}: {err}"))?;
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // Not `CertifiedKey::from_der`: its key check parses the certificate
    // with webpki, which refuses the unknown critical extension.
    let signing_key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|err| format!("no key: {err}"))?;
    Ok(CertifiedKey::new(
        vec![certificate.der().clone()],
        signing_key,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_alpn_certificates_carry_the_digest_for_their_name_only() {
        let store = TlsAlpn01Challenges::default();
        assert!(store.get("shop.test").is_none());
        let digest = [7u8; 32];
        store.insert("Shop.Test", &digest).unwrap();
        let certificate = store.get("shop.test.").unwrap();
        let der = certificate.end_entity_cert().unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(der).unwrap();
        // id-pe-acmeIdentifier, critical, an OCTET STRING of the digest.
        let extension = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(extension.critical);
        assert_eq!(&extension.value[2..], &digest);
        assert!(store.get("other.test").is_none());
        store.remove("shop.test");
        assert!(store.get("shop.test").is_none());
    }

    #[test]
    fn answers_only_tokens_under_way() {
        let store = Http01Challenges::default();
        assert_eq!(store.answer("/.well-known/acme-challenge/abc"), None);
        store.insert("abc", "abc.thumb");
        assert_eq!(
            store.answer("/.well-known/acme-challenge/abc").as_deref(),
            Some(&b"abc.thumb"[..])
        );
        assert_eq!(store.answer("/.well-known/acme-challenge/abcd"), None);
        assert_eq!(store.answer("/.well-known/acme-challenge/"), None);
        assert_eq!(store.answer("/x/.well-known/acme-challenge/abc"), None);
        store.remove("abc");
        assert_eq!(store.answer("/.well-known/acme-challenge/abc"), None);
    }
}
