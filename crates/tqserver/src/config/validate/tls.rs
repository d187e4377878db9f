//! `server.tls`: the TLS port, its certificates (loaded and checked here, so
//! a bad one is a config error naming the file and the reason), the
//! redirect of plain HTTP and HSTS.

#[allow(unused_imports)]
use super::*;
use crate::config::TlsSettings;
use crate::config::raw::RawTls;
use crate::tls::{CertificateFiles, Certificates};

/// The TLS settings and certificates, or `(None, None)` without
/// `server.tls`. Problems go to `errors`.
pub(super) fn tls(
    raw: Option<&RawTls>,
    host: IpAddr,
    http_port: u16,
    root: &Path,
    server_file: &Path,
    text: &str,
    errors: &mut Vec<ConfigError>,
) -> (Option<TlsSettings>, Option<Arc<Certificates>>) {
    let Some(raw) = raw else {
        return (None, None);
    };
    let at = |key: &str, message: String| ConfigError::at_key(server_file, text, key, message);
    let port = raw.port.unwrap_or(defaults::TLS_PORT);
    if port == http_port {
        errors.push(at(
            "server.tls.port",
            format!("{port} is server.port too; give TLS its own port (e.g. 443 or 8443)"),
        ));
    }

    // The single pair first (the default), then the list.
    let mut files = Vec::new();
    let mut pairs: Vec<(Option<usize>, &Option<String>, &Option<String>)> =
        vec![(None, &raw.cert, &raw.key)];
    for (index, item) in raw.certificates.iter().flatten().enumerate() {
        pairs.push((Some(index), &item.cert, &item.key));
    }
    // An error about `field` of the single pair or of item `index`.
    let error_at = |index: Option<usize>, field: &str, message: String| match index {
        None => at(&format!("server.tls.{field}"), message),
        Some(index) => ConfigError {
            file: server_file.to_owned(),
            line: yaml::line_of_list_item(text, "server.tls.certificates", index, Some(field)),
            key: Some(format!("server.tls.certificates[{index}].{field}")),
            message,
        },
    };
    for (index, cert, key) in pairs {
        let key_path = match index {
            None => "server.tls".to_owned(),
            Some(index) => format!("server.tls.certificates[{index}]"),
        };
        match (cert, key) {
            (Some(cert), Some(key)) => files.push(CertificateFiles {
                cert: root.join(cert),
                key: root.join(key),
                key_path,
            }),
            (Some(_), None) | (None, None) if index.is_some() || cert.is_some() => {
                errors.push(error_at(
                    index,
                    "key",
                    "missing: the certificate's private key (a PEM file)".to_owned(),
                ));
                if cert.is_none() {
                    errors.push(error_at(
                        index,
                        "cert",
                        "missing: the certificate chain (a PEM file)".to_owned(),
                    ));
                }
            }
            (None, Some(_)) => errors.push(error_at(
                index,
                "cert",
                "missing: the certificate chain (a PEM file) of this key".to_owned(),
            )),
            _ => {}
        }
    }
    let acme = raw
        .acme
        .as_ref()
        .and_then(|acme| super::acme::acme(acme, root, &at, errors));
    if raw.cert.is_none() && raw.key.is_none() && raw.certificates.is_none() && raw.acme.is_none() {
        errors.push(at(
            "server.tls",
            "needs a certificate: server.tls.cert and server.tls.key (PEM files), a list in server.tls.certificates, or server.tls.acme".to_owned(),
        ));
    }

    let certificates = if files.is_empty() {
        None
    } else {
        match Certificates::load(&files) {
            Ok(certificates) => Some(Arc::new(certificates)),
            Err(failed) => {
                for (pair, error) in failed {
                    let index = pair
                        .key_path
                        .strip_prefix("server.tls.certificates[")
                        .and_then(|rest| rest.trim_end_matches(']').parse().ok());
                    let message = format!("{}: {}", error.file.display(), error.reason);
                    errors.push(error_at(index, error.setting, message));
                }
                None
            }
        }
    };

    let hsts = raw.hsts.as_ref().and_then(|hsts| {
        let Some(max_age) = hsts.max_age else {
            errors.push(at(
                "server.tls.hsts",
                "needs max_age: how long browsers keep to HTTPS (e.g. 365d; 0 tells them to forget)".to_owned(),
            ));
            return None;
        };
        let mut value = format!("max-age={}", max_age.0.as_secs());
        if hsts.include_subdomains == Some(true) {
            value.push_str("; includeSubDomains");
        }
        if hsts.preload == Some(true) {
            value.push_str("; preload");
        }
        http::HeaderValue::from_str(&value).ok()
    });
    let settings = TlsSettings {
        listen: SocketAddr::new(host, port),
        redirect_http: raw.redirect_http.unwrap_or(false),
        hsts,
        acme,
    };
    (Some(settings), certificates)
}
