//! Which SCRIPT_FILENAME may run: `php.limit_extensions`, inside the
//! document root and reached through symlinks `security.symlinks` follows,
//! the app's `rules:`; and php-fpm's answers to a script that may not.

use std::path::Path;

use fastcgi::server::ResponseWriter;
use tokio::io::AsyncWrite;

use super::connection::{ConnectionError, Outcome, respond};
use crate::app::App;
use crate::config::FastcgiConfig;
use crate::docroot::Location;
use crate::docroot::symlinks::SymlinkRefusal;
use crate::rules::{DenyStatus, Verdict};

/// php-fpm's answers to a script it will not run.
pub(super) async fn refuse_with<W: AsyncWrite + Unpin>(
    writer: &mut ResponseWriter<W>,
    request_id: u16,
    refusal: Refusal,
) -> Result<Outcome, ConnectionError> {
    let (head, body): (&str, &[u8]) = match refusal {
        Refusal::Extension
        | Refusal::OutsideRoot
        | Refusal::Symlink(_)
        | Refusal::Rule {
            status: DenyStatus::Forbidden,
            ..
        } => (
            "Status: 403 Forbidden\r\nContent-Type: text/plain\r\n",
            b"Access denied.\n",
        ),
        Refusal::Missing
        | Refusal::Rule {
            status: DenyStatus::NotFound,
            ..
        } => (
            "Status: 404 Not Found\r\nContent-Type: text/plain\r\n",
            b"File not found.\n",
        ),
    };
    respond(writer, request_id, head, body).await
}

#[derive(Debug)]
pub(super) enum Refusal {
    Extension,
    OutsideRoot,
    Missing,
    /// Inside the root as written, through a symlink the app's
    /// `security.symlinks` does not follow.
    Symlink(SymlinkRefusal),
    /// A `rules:` entry denies the path, or keeps scripts from running
    /// there (`static_only`: 403).
    Rule {
        status: DenyStatus,
        rule: usize,
        static_only: bool,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Extension => f.write_str("extension not in php.limit_extensions"),
            Refusal::OutsideRoot => f.write_str("SCRIPT_FILENAME outside the document root"),
            Refusal::Missing => f.write_str("SCRIPT_FILENAME does not exist"),
            Refusal::Symlink(refusal) => write!(f, "{refusal}"),
            Refusal::Rule {
                rule,
                static_only: true,
                ..
            } => write!(f, "rules[{rule}] is static_only: no script runs there"),
            Refusal::Rule { rule, status, .. } => {
                write!(f, "denied by rules[{rule}] ({})", status.code())
            }
        }
    }
}

pub(super) fn refuse(
    app: &App,
    listener: &FastcgiConfig,
    script: &Path,
    script_name: &str,
) -> Option<Refusal> {
    let config = &app.config;
    let name = script.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !config.is_executable(name) {
        return Some(Refusal::Extension);
    }
    if let Some(refusal) = refuse_by_rules(app, script, script_name) {
        return Some(refusal);
    }
    if !listener.check_document_root {
        return None;
    }
    match app.root.locate(script, config.security.symlinks) {
        Location::Inside => None,
        Location::Outside => Some(Refusal::OutsideRoot),
        Location::Refused(refusal) => Some(Refusal::Symlink(refusal)),
        // Lexically outside is outside, whether or not it exists.
        Location::Missing if !script.starts_with(&config.document_root) => {
            Some(Refusal::OutsideRoot)
        }
        Location::Missing => Some(Refusal::Missing),
    }
}

/// The app's `rules:` on the script's path below the document root (from
/// SCRIPT_FILENAME) and on SCRIPT_NAME below the app's route: either one
/// matching a rule is enough.
pub(super) fn refuse_by_rules(app: &App, script: &Path, script_name: &str) -> Option<Refusal> {
    let rules = &app.config.rules;
    if rules.is_empty() {
        return None;
    }
    let by_file = app.root.relative_path(script);
    let route = app.config.route.as_bytes();
    let name = script_name.as_bytes();
    let by_name = name
        .strip_prefix(route)
        .filter(|rest| rest.is_empty() || rest.starts_with(b"/"))
        .unwrap_or(name);
    let mut verdict = Verdict::Allow;
    for path in by_file.as_deref().into_iter().chain([by_name]) {
        // A path that climbs out of its start is judged elsewhere.
        let Some(segments) = crate::rules::normalize(path) else {
            continue;
        };
        match rules.verdict(&segments) {
            Verdict::Allow => {}
            deny @ Verdict::Deny { .. } => {
                verdict = deny;
                break;
            }
            static_only => verdict = static_only,
        }
    }
    match verdict {
        Verdict::Allow => None,
        Verdict::Deny { status, rule } => Some(Refusal::Rule {
            status,
            rule,
            static_only: false,
        }),
        Verdict::StaticOnly { rule } => Some(Refusal::Rule {
            status: DenyStatus::Forbidden,
            rule,
            static_only: true,
        }),
    }
}
