//! Per-path rules of an app (`rules:` in worker.yaml): deny a path (403 or
//! 404), or let no script under it run (`static_only`), as Debian's web
//! server configs for DokuWiki, phpMyAdmin and MediaWiki do with
//! `Require all denied` and `php_admin_flag engine off`.
//!
//! Rules match the path below the app's route after it was decoded and
//! normalized (no `.` or `..` segments, no doubled slashes): `/data/x`,
//! `/%64ata/x`, `/./data//x` and `/lib/../data/x` are one path and meet the
//! same rule. They match the URL path, not where a symlink leads.
//!
//! This module only decides; `http::resolve` applies the decision to what a
//! request resolved to, and the FastCGI listener to SCRIPT_FILENAME and
//! SCRIPT_NAME.

use std::fmt;

/// The rules of one app, in the order written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathRules(pub Vec<PathRule>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    pub pattern: Pattern,
    pub action: RuleAction,
}

/// Which paths a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `path: /data/`: the path itself and everything below it, by whole
    /// segments (`/data` covers `/data` and `/data/x`, never `/database`).
    Prefix(Vec<String>),
    /// `glob: /images/**`: `*` is any run of characters but `/`, `?` one
    /// character, and a `**` segment any number of segments (none included).
    Glob(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    Deny(DenyStatus),
    /// Files are served; a script under the path never runs (403).
    StaticOnly,
}

/// The answer to a denied path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyStatus {
    Forbidden,
    NotFound,
}

impl DenyStatus {
    pub fn code(self) -> u16 {
        match self {
            DenyStatus::Forbidden => 403,
            DenyStatus::NotFound => 404,
        }
    }
}

/// What the rules say about one path. A deny wins over `static_only`; among
/// denies, the first one written that matches gives the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// `rule` is the index of the matching rule in `rules:`.
    StaticOnly {
        rule: usize,
    },
    Deny {
        status: DenyStatus,
        rule: usize,
    },
}

impl PathRules {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The verdict on a normalized path given as its segments
    /// (`/data/pages/x.txt` is `["data", "pages", "x.txt"]`).
    pub fn verdict<S: AsRef<[u8]>>(&self, segments: &[S]) -> Verdict {
        let mut verdict = Verdict::Allow;
        for (index, rule) in self.0.iter().enumerate() {
            if !rule.pattern.matches(segments) {
                continue;
            }
            match rule.action {
                RuleAction::Deny(status) => {
                    return Verdict::Deny {
                        status,
                        rule: index,
                    };
                }
                RuleAction::StaticOnly if verdict == Verdict::Allow => {
                    verdict = Verdict::StaticOnly { rule: index };
                }
                RuleAction::StaticOnly => {}
            }
        }
        verdict
    }
}

impl Pattern {
    /// Parses `path:` (a prefix) or `glob:` as written in worker.yaml;
    /// the error says what is wrong with it.
    pub fn prefix(text: &str) -> Result<Self, String> {
        let segments = clean_segments(text)?;
        if segments
            .iter()
            .any(|segment| segment.contains(['*', '?', '[', '{']))
        {
            return Err(format!(
                "`{text}` has wildcard characters; a `path` is a plain prefix, use `glob` for patterns"
            ));
        }
        Ok(Pattern::Prefix(segments))
    }

    pub fn glob(text: &str) -> Result<Self, String> {
        if text.len() > 1 && text.ends_with('/') {
            return Err(format!(
                "`{text}` ends with /; write `{}**` for a directory and everything in it, or use `path: {text}`",
                text
            ));
        }
        let segments = clean_segments(text)?;
        for segment in &segments {
            if segment.contains(['[', ']', '{', '}']) {
                return Err(format!(
                    "`{text}`: only *, ? and ** are supported in a glob"
                ));
            }
            if segment.contains("**") && segment != "**" {
                return Err(format!(
                    "`{text}`: ** must be a whole segment (`/a/**/b`); use * inside a name"
                ));
            }
        }
        Ok(Pattern::Glob(segments))
    }

    /// Whether a `/`-separated relative path (`cmd/main.go`) matches.
    pub fn matches_relative(&self, path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        self.matches(&segments)
    }

    fn matches<S: AsRef<[u8]>>(&self, path: &[S]) -> bool {
        match self {
            Pattern::Prefix(prefix) => {
                path.len() >= prefix.len()
                    && prefix
                        .iter()
                        .zip(path)
                        .all(|(want, have)| want.as_bytes() == have.as_ref())
            }
            Pattern::Glob(glob) => glob_matches(glob, path),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (key, segments) = match self {
            Pattern::Prefix(segments) => ("path", segments),
            Pattern::Glob(segments) => ("glob", segments),
        };
        write!(f, "{key}: /{}", segments.join("/"))
    }
}

/// "/data/" → ["data"]; refuses what a normalized path can never contain.
fn clean_segments(text: &str) -> Result<Vec<String>, String> {
    if !text.starts_with('/') {
        return Err(format!(
            "`{text}` must start with / (it is relative to the app's path)"
        ));
    }
    let trimmed = text.trim_end_matches('/');
    let segments: Vec<&str> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed[1..].split('/').collect()
    };
    if segments
        .iter()
        .any(|segment| segment.is_empty() || *segment == "." || *segment == "..")
        || text.contains(['%', '\\'])
        || text.chars().any(char::is_control)
    {
        return Err(format!(
            "`{text}` is not a clean path (no //, ., .., %, \\): rules match the decoded, normalized path"
        ));
    }
    Ok(segments.into_iter().map(str::to_owned).collect())
}

/// Whole segments against the glob's segments, `**` standing for any run of
/// segments. The classic wildcard walk with one backtrack point: linear in
/// the path for each `**`, so a long URL cannot make matching slow.
fn glob_matches<S: AsRef<[u8]>>(glob: &[String], path: &[S]) -> bool {
    let (mut g, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while p < path.len() {
        if g < glob.len() && glob[g] == "**" {
            star = Some((g, p));
            g += 1;
        } else if g < glob.len() && segment_matches(glob[g].as_bytes(), path[p].as_ref()) {
            g += 1;
            p += 1;
        } else if let Some((star_g, star_p)) = star {
            // Let the last `**` take one more segment and try again.
            g = star_g + 1;
            p = star_p + 1;
            star = Some((star_g, star_p + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|segment| segment == "**")
}

/// One segment against `*` and `?` (`?` takes one UTF-8 character), by the
/// same walk as [`glob_matches`].
fn segment_matches(pattern: &[u8], name: &[u8]) -> bool {
    let (mut i, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(i) {
            Some(b'*') => {
                star = Some((i, n));
                i += 1;
            }
            Some(b'?') => {
                i += 1;
                n = (n + utf8_width(name[n])).min(name.len());
            }
            Some(&want) if want == name[n] => {
                i += 1;
                n += 1;
            }
            _ => match star {
                Some((star_i, star_n)) => {
                    let next = (star_n + utf8_width(name[star_n])).min(name.len());
                    i = star_i + 1;
                    n = next;
                    star = Some((star_i, next));
                }
                None => return false,
            },
        }
    }
    n == name.len() && pattern[i.min(pattern.len())..].iter().all(|&b| b == b'*')
}

fn utf8_width(lead: u8) -> usize {
    match lead {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// Splits a path (already decoded) into its normalized segments: empty and
/// `.` segments go, `..` removes the one before. `None` if it climbs above
/// its start. For SCRIPT_NAME and SCRIPT_FILENAME from a web server, which
/// tqserver did not normalize itself.
pub fn normalize(path: &[u8]) -> Option<Vec<&[u8]>> {
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in path.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop()?;
            }
            _ => segments.push(segment),
        }
    }
    Some(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(path: &str) -> Vec<&[u8]> {
        normalize(path.as_bytes()).unwrap()
    }

    fn rules(list: &[(&str, RuleAction)]) -> PathRules {
        PathRules(
            list.iter()
                .map(|(text, action)| PathRule {
                    pattern: match text.strip_prefix("glob:") {
                        Some(glob) => Pattern::glob(glob).unwrap(),
                        None => Pattern::prefix(text).unwrap(),
                    },
                    action: *action,
                })
                .collect(),
        )
    }

    const DENY_404: RuleAction = RuleAction::Deny(DenyStatus::NotFound);
    const DENY_403: RuleAction = RuleAction::Deny(DenyStatus::Forbidden);

    #[test]
    fn prefixes_match_whole_segments() {
        let rules = rules(&[("/data/", DENY_404), ("/conf", DENY_403)]);
        let deny = |status, rule| Verdict::Deny { status, rule };
        for (path, expected) in [
            ("/data", deny(DenyStatus::NotFound, 0)),
            ("/data/", deny(DenyStatus::NotFound, 0)),
            ("/data/pages/start.txt", deny(DenyStatus::NotFound, 0)),
            ("/conf/local.php", deny(DenyStatus::Forbidden, 1)),
            ("/conf", deny(DenyStatus::Forbidden, 1)),
            ("/database.php", Verdict::Allow),
            ("/configuration", Verdict::Allow),
            ("/lib/data/x", Verdict::Allow),
            ("/", Verdict::Allow),
            ("/Data/x", Verdict::Allow),
        ] {
            assert_eq!(rules.verdict(&segments(path)), expected, "{path}");
        }
    }

    #[test]
    fn normalized_spellings_meet_the_same_rule() {
        let rules = rules(&[("/data/", DENY_404)]);
        for path in [
            "//data/x",
            "/./data/x",
            "/lib/../data/x",
            "/data//x",
            "/data/./x",
        ] {
            assert!(
                matches!(rules.verdict(&segments(path)), Verdict::Deny { .. }),
                "{path}"
            );
        }
        assert_eq!(normalize(b"/../data"), None);
    }

    #[test]
    fn globs() {
        for (glob, path, expected) in [
            ("/images/**", "/images", true),
            ("/images/**", "/images/a.jpg", true),
            ("/images/**", "/images/a/b/c.php", true),
            ("/images/**", "/imagesx/a.jpg", false),
            ("/images/*", "/images/a.jpg", true),
            ("/images/*", "/images/a/b.jpg", false),
            ("/images/*", "/images", false),
            ("/**/*.sql", "/dump.sql", true),
            ("/**/*.sql", "/a/b/dump.sql", true),
            ("/**/*.sql", "/a/b/dump.sqlx", false),
            ("/*.md", "/README.md", true),
            ("/*.md", "/doc/README.md", false),
            ("/a/**/z", "/a/z", true),
            ("/a/**/z", "/a/b/c/z", true),
            ("/a/**/z", "/a/b/c/y", false),
            ("/file?.txt", "/file1.txt", true),
            ("/fil?.txt", "/filé.txt", true),
            ("/fil?.txt", "/fil.txt", false),
            ("/file?.txt", "/file12.txt", false),
            ("/**", "/", true),
            ("/**", "/anything/at/all", true),
            ("/*", "/", false),
        ] {
            let pattern = Pattern::glob(glob).unwrap();
            assert_eq!(
                pattern.matches(&segments(path)),
                expected,
                "{glob} on {path}"
            );
        }
    }

    #[test]
    fn a_long_path_cannot_make_matching_slow() {
        let path = "/a".repeat(30_000) + "/b";
        let glob = Pattern::glob("/**/a/**/a/**/a/**/c").unwrap();
        let started = std::time::Instant::now();
        assert!(!glob.matches(&segments(&path)));
        let name = "a".repeat(200);
        assert!(!segment_matches(b"*a*a*a*a*a*b", name.as_bytes()));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn deny_wins_over_static_only_and_the_first_deny_gives_the_status() {
        let rules = rules(&[
            ("glob:/images/**", RuleAction::StaticOnly),
            ("/images/private/", DENY_403),
            ("/images/", DENY_404),
        ]);
        assert_eq!(
            rules.verdict(&segments("/images/a.jpg")),
            Verdict::Deny {
                status: DenyStatus::NotFound,
                rule: 2
            }
        );
        assert_eq!(
            rules.verdict(&segments("/images/private/a.jpg")),
            Verdict::Deny {
                status: DenyStatus::Forbidden,
                rule: 1
            }
        );
        let rules = PathRules(rules.0[..1].to_vec());
        assert_eq!(
            rules.verdict(&segments("/images/a.php")),
            Verdict::StaticOnly { rule: 0 }
        );
        assert_eq!(rules.verdict(&segments("/index.php")), Verdict::Allow);
    }

    #[test]
    fn bad_patterns_are_explained() {
        for (text, needle) in [
            ("data/", "must start with /"),
            ("/a//b", "not a clean path"),
            ("/a/../b", "not a clean path"),
            ("/a%2fb", "not a clean path"),
            ("/images/*", "use `glob`"),
        ] {
            let err = Pattern::prefix(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
        for (text, needle) in [
            ("/images/", "ends with /"),
            ("/a**", "whole segment"),
            ("/[ab]", "only *, ? and **"),
            ("images/**", "must start with /"),
        ] {
            let err = Pattern::glob(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
        assert_eq!(Pattern::prefix("/").unwrap(), Pattern::Prefix(vec![]));
    }
}
