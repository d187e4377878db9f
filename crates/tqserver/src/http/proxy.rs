//! Behind a proxy: who the client really is. From a peer in
//! `server.trusted_proxies` only, the `Forwarded` header (RFC 7239, its
//! `for=` and `proto=`), or else `X-Forwarded-For` and `X-Forwarded-Proto`,
//! say the client's address and whether it came over HTTPS. The address is
//! the rightmost hop that is not itself a trusted proxy (each proxy appends
//! the address it saw; only those appended by trusted proxies can be
//! believed, so the walk from the right stops at the first untrusted one).
//! From any other peer these headers change nothing (PHP still sees them as
//! `HTTP_X_FORWARDED_FOR` and so on, as behind nginx).

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};

use crate::config::edge::Cidr;

/// A request extension: a trusted proxy says the client came over HTTPS.
/// PHP then sees `HTTPS=on` as for a request that came over TLS itself
/// ([`super::Tls`]).
#[derive(Clone, Copy, Debug)]
pub struct ForwardedHttps;

/// The client as tqserver believes it to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    /// The client's address; port 0 when a proxy named none.
    pub addr: SocketAddr,
    /// A trusted proxy says the client used HTTPS.
    pub https: bool,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The client of a request from `peer`.
pub fn client(trusted: &[Cidr], peer: SocketAddr, headers: &HeaderMap) -> Client {
    let direct = Client {
        addr: peer,
        https: false,
    };
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if trusted.is_empty() || !is_trusted(peer.ip()) {
        return direct;
    }
    if headers.contains_key(FORWARDED) {
        return from_forwarded(headers, peer, &is_trusted);
    }
    let mut client = direct;
    // Every X-Forwarded-For line, left to right, as one list.
    let hops: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        match parse_node(hop) {
            Some(addr) => {
                client.addr = addr;
                if !is_trusted(addr.ip()) {
                    break;
                }
            }
            // "unknown" or garbage: nothing left of it can be believed.
            None => break,
        }
    }
    // The proxy next to us set (or appended) the last value.
    client.https = headers
        .get_all(X_FORWARDED_PROTO)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
    client
}

/// RFC 7239: elements separated by ',', pairs by ';'. The client is the
/// `for=` of the rightmost element whose address is not trusted; its
/// `proto=` says the scheme.
fn from_forwarded(
    headers: &HeaderMap,
    peer: SocketAddr,
    is_trusted: &dyn Fn(IpAddr) -> bool,
) -> Client {
    let elements: Vec<&str> = headers
        .get_all(FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = Client {
        addr: peer,
        https: false,
    };
    for element in elements.iter().rev() {
        let mut node = None;
        let mut proto = None;
        for pair in element.split(';') {
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "for" => node = Some(value),
                "proto" => proto = Some(value),
                _ => {}
            }
        }
        let Some(addr) = node.and_then(parse_node) else {
            break;
        };
        client.addr = addr;
        client.https = proto.is_some_and(|p| p.eq_ignore_ascii_case("https"));
        if !is_trusted(addr.ip()) {
            break;
        }
    }
    client
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_node(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn proxies() -> Vec<Cidr> {
        vec![
            Cidr::parse("127.0.0.1").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("fd00::/8").unwrap(),
        ]
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 5555)
    }

    #[test]
    fn untrusted_peers_change_nothing() {
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ]);
        let c = client(&proxies(), peer("192.0.2.9"), &h);
        assert_eq!(
            c,
            Client {
                addr: peer("192.0.2.9"),
                https: false
            }
        );
        assert_eq!(client(&[], peer("127.0.0.1"), &h).addr, peer("127.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 1.2.3.4"),
            ("x-forwarded-for", "10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let c = client(&proxies(), peer("127.0.0.1"), &h);
        assert_eq!(c.addr, SocketAddr::new("1.2.3.4".parse().unwrap(), 0));
        assert!(c.https);
        // All trusted: the leftmost.
        let h = headers(&[("x-forwarded-for", "10.0.0.2, 10.0.0.3")]);
        assert_eq!(
            client(&proxies(), peer("127.0.0.1"), &h)
                .addr
                .ip()
                .to_string(),
            "10.0.0.2"
        );
        // Garbage stops the walk at the last address believed.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, unknown, 10.0.0.3")]);
        assert_eq!(
            client(&proxies(), peer("127.0.0.1"), &h)
                .addr
                .ip()
                .to_string(),
            "10.0.0.3"
        );
        let h = headers(&[("x-forwarded-proto", "http")]);
        assert!(!client(&proxies(), peer("127.0.0.1"), &h).https);
    }

    #[test]
    fn forwarded_gives_address_port_and_proto() {
        let h = headers(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.1;proto=http",
        )]);
        let c = client(&proxies(), peer("::1").to_owned(), &h);
        assert_eq!(c.addr, peer("::1"), "::1 is not trusted here");
        let c = client(&proxies(), peer("10.9.9.9"), &h);
        assert_eq!(c.addr, "[2001:db8::1]:4711".parse().unwrap());
        assert!(c.https);
    }
}
