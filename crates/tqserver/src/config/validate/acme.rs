//! `server.tls.acme`: which names, which CA, where the certificates live.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use super::defaults;
use crate::config::raw::RawAcme;
use crate::config::yaml::ConfigError;
use crate::config::{AcmeChallenge, AcmeConfig};

pub(super) fn acme(
    raw: &RawAcme,
    root: &Path,
    at: &dyn Fn(&str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> Option<AcmeConfig> {
    let before = errors.len();
    let mut domains = Vec::new();
    match raw.domains.as_deref() {
        None | Some([]) => errors.push(at(
            "server.tls.acme.domains",
            "is required: the names to get a certificate for, such as [example.com, www.example.com]"
                .to_owned(),
        )),
        Some(names) => {
            for name in names {
                let name = name.trim().to_ascii_lowercase();
                match check_domain(&name) {
                    Ok(()) if !domains.contains(&name) => domains.push(name),
                    Ok(()) => {}
                    Err(why) => errors.push(at("server.tls.acme.domains", why)),
                }
            }
        }
    }
    let mut contact = Vec::new();
    for email in raw.contact.as_deref().unwrap_or_default() {
        let email = email.trim();
        let address = email.strip_prefix("mailto:").unwrap_or(email);
        match address.split_once('@') {
            Some((user, host))
                if !user.is_empty()
                    && host.contains('.')
                    && !address.contains([' ', ',', '<', '>']) =>
            {
                contact.push(format!("mailto:{address}"));
            }
            _ => errors.push(at(
                "server.tls.acme.contact",
                format!("`{email}` is not an e-mail address such as admin@example.com"),
            )),
        }
    }
    let directory = raw
        .directory
        .clone()
        .unwrap_or_else(|| defaults::ACME_DIRECTORY.to_owned());
    if !directory.starts_with("https://") || directory.parse::<http::Uri>().is_err() {
        errors.push(at(
            "server.tls.acme.directory",
            format!(
                "`{directory}` is not an https:// URL of an ACME directory (Let's Encrypt's is {})",
                defaults::ACME_DIRECTORY
            ),
        ));
    }
    let ca_root = raw.ca_root.as_deref().map(|file| root.join(file));
    if let Some(file) = &ca_root {
        match CertificateDer::pem_file_iter(file) {
            Err(err) => errors.push(at(
                "server.tls.acme.ca_root",
                format!("cannot read {}: {err}", file.display()),
            )),
            Ok(certs) => {
                let certs: Result<Vec<_>, _> = certs.collect();
                match certs {
                    Ok(certs) if !certs.is_empty() => {}
                    Ok(_) => errors.push(at(
                        "server.tls.acme.ca_root",
                        format!(
                            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                            file.display()
                        ),
                    )),
                    Err(err) => errors.push(at(
                        "server.tls.acme.ca_root",
                        format!("{} is not a PEM certificate file: {err}", file.display()),
                    )),
                }
            }
        }
    }
    let storage = root.join(raw.storage.as_deref().unwrap_or(defaults::ACME_STORAGE));
    let renew_before = raw.renew_before.map(|d| d.0);
    if renew_before.is_some_and(|d| d.is_zero()) {
        errors.push(at(
            "server.tls.acme.renew_before",
            "must be more than 0s (a certificate is renewed when this little of its lifetime is left)"
                .to_owned(),
        ));
    }
    let challenge = match raw.challenge.as_deref() {
        None | Some("http-01") => AcmeChallenge::Http01,
        Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
        Some(other) => {
            errors.push(at(
                "server.tls.acme.challenge",
                format!("`{other}` is not one of http-01, tls-alpn-01"),
            ));
            AcmeChallenge::Http01
        }
    };
    (errors.len() == before).then_some(AcmeConfig {
        domains,
        contact,
        directory,
        ca_root,
        storage,
        renew_before,
        challenge,
    })
}

/// A name an HTTP-01 challenge can prove: a DNS name, no wildcard, no IP.
fn check_domain(name: &str) -> Result<(), String> {
    if name.starts_with("*.") {
        return Err(format!(
            "`{name}`: wildcard certificates need a DNS-01 challenge, which tqserver does not answer; list each name"
        ));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "`{name}` is an IP address; ACME certificates here are for DNS names"
        ));
    }
    let labels_ok = name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !labels_ok {
        return Err(format!(
            "`{name}` is not a DNS name such as example.com (letters, digits, hyphens and dots; IDNs in their xn-- form)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert!(check_domain("example.com").is_ok());
        assert!(check_domain("shop.test").is_ok());
        assert!(check_domain("xn--caf-dma.example").is_ok());
        assert!(
            check_domain("*.example.com")
                .unwrap_err()
                .contains("DNS-01")
        );
        assert!(check_domain("127.0.0.1").unwrap_err().contains("IP"));
        assert!(check_domain("a..b").is_err());
        assert!(check_domain("-a.b").is_err());
        assert!(check_domain("café.example").is_err());
        assert!(check_domain("example.com.").is_err());
    }
}
