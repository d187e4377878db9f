//! Typed settings for what sits at the edge of the HTTP front: response
//! compression (`server.compression`, an app's `compression`), the proxies
//! whose forwarding headers are believed (`server.trusted_proxies`), and the
//! places an app's X-Accel-Redirect and X-Sendfile may point (`internal`,
//! `x_sendfile`).

use std::net::IpAddr;
use std::path::PathBuf;

/// A content coding tqserver can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Br,
    Zstd,
    Gzip,
}

impl Coding {
    /// Every coding, in tqserver's order of preference when a client likes
    /// several equally.
    pub const ALL: [Coding; 3] = [Coding::Br, Coding::Zstd, Coding::Gzip];

    /// The Content-Encoding token.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    /// The suffix of a precompressed sibling file.
    pub fn suffix(self) -> &'static str {
        match self {
            Coding::Br => ".br",
            Coding::Zstd => ".zst",
            Coding::Gzip => ".gz",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "br" => Some(Coding::Br),
            "zstd" => Some(Coding::Zstd),
            "gzip" => Some(Coding::Gzip),
            _ => None,
        }
    }
}

/// Quality levels for compression on the fly. The defaults are those of
/// nginx and Caddy for dynamic content: cheap enough per response, most of
/// the gain (see docs/PERFORMANCE.md's figures in the compression test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    /// 0 to 11.
    pub br: u32,
    /// 1 to 19.
    pub zstd: i32,
    /// 1 to 9.
    pub gzip: u32,
}

/// How responses are compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionConfig {
    pub enabled: bool,
    /// Media types compressed on the fly, lower case without parameters;
    /// `text/*` takes a whole top-level type.
    pub types: Vec<String>,
    /// Bodies known to be smaller are sent as they are.
    pub min_size: u64,
    /// Codings made on the fly, in order of preference.
    pub algorithms: Vec<Coding>,
    pub levels: Levels,
    /// Serve `x.css.br`, `x.css.zst`, `x.css.gz` for `x.css` when present.
    pub precompressed: bool,
}

impl CompressionConfig {
    /// Whether responses of this media type (lower case, no parameters) are
    /// compressed on the fly.
    pub fn compresses(&self, essence: &str) -> bool {
        self.types.iter().any(|t| match t.strip_suffix("/*") {
            Some(top) => essence
                .strip_prefix(top)
                .is_some_and(|rest| rest.starts_with('/')),
            None => t == essence,
        })
    }
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            types: super::defaults::COMPRESSION_TYPES
                .iter()
                .map(|t| (*t).to_owned())
                .collect(),
            min_size: super::defaults::COMPRESSION_MIN_SIZE,
            algorithms: Coding::ALL.to_vec(),
            levels: Levels {
                br: 4,
                zstd: 3,
                gzip: 5,
            },
            precompressed: true,
        }
    }
}

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `::1/128`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim_matches(['[', ']']).parse().map_err(|_| {
            format!("`{text}` is not an address or network such as 10.0.0.0/8 or fd00::/8")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("`{text}`: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is in this network. IPv4 clients seen on an IPv6
    /// socket (`::ffff:10.0.0.1`) count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One of an app's `internal:` locations: a URL prefix that PHP may name in
/// X-Accel-Redirect, served from `root` and never reachable by a client's
/// own URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalLocation {
    /// Starts and ends with '/': `/protected/`.
    pub location: String,
    /// Absolute.
    pub root: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_match_their_networks_only() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Cidr::parse("::/0")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("example.com").is_err());
    }

    #[test]
    fn types_match_exactly_or_by_top_level() {
        let config = CompressionConfig {
            types: vec!["text/*".into(), "application/json".into()],
            ..CompressionConfig::default()
        };
        assert!(config.compresses("text/html"));
        assert!(config.compresses("application/json"));
        assert!(!config.compresses("textual/x"));
        assert!(!config.compresses("application/jsonx"));
        assert!(!config.compresses("image/png"));
    }
}
