//! The one place YAML is read. Errors name the file, the line and the dotted
//! key, and suggest the nearest valid key for a misspelt one.
//!
//! YAML crate: `serde-saphyr` (maintained, panic-free, reports locations);
//! serde_yaml is archived and serde_yml has an unsoundness advisory.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// One problem in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Dotted key path, e.g. `php.pool.max_workers`.
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: None,
            key: None,
            message: message.into(),
        }
    }

    /// An error about `key` (dotted), located in `text` when the key is there.
    pub fn at_key(file: &Path, text: &str, key: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: line_of_key(text, key),
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found, across all files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self(vec![error])
    }
}

/// Reads and parses one YAML file. Returns the value and the text (for
/// locating keys in later validation errors).
pub fn load<T: DeserializeOwned + Default>(file: &Path) -> Result<(T, String), ConfigError> {
    let text = std::fs::read_to_string(file)
        .map_err(|err| ConfigError::new(file, format!("cannot read: {err}")))?;
    let value = parse(file, &text)?;
    Ok((value, text))
}

/// Parses YAML text; an empty document gives `T::default()`.
pub fn parse<T: DeserializeOwned + Default>(file: &Path, text: &str) -> Result<T, ConfigError> {
    if text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---"
    }) {
        return Ok(T::default());
    }
    let mut failed_path = None;
    let result = serde_saphyr::with_deserializer_from_str(text, |deserializer| {
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            failed_path = Some(err.path().to_string());
            err.into_inner()
        })
    });
    result.map_err(|err| {
        let line = err
            .location()
            .map(|loc| loc.line() as usize)
            .filter(|l| *l > 0);
        let message = bare_message(&err.without_snippet().to_string());
        let key = failed_path.filter(|path| !path.is_empty() && path != ".");
        let (key, message) = explain(key, &message);
        ConfigError {
            file: file.to_owned(),
            line,
            key,
            message,
        }
    })
}

/// "error: line 5 column 5: unknown field ..." → "unknown field ...".
fn bare_message(rendered: &str) -> String {
    let text = rendered.trim();
    let text = text.strip_prefix("error: ").unwrap_or(text);
    let text = match text.strip_prefix("line ") {
        Some(rest) => rest.split_once(": ").map(|(_, msg)| msg).unwrap_or(rest),
        None => text,
    };
    text.lines().next().unwrap_or(text).to_owned()
}

/// Turns serde's unknown-field message into "unknown key", with the full key
/// path and a suggestion.
fn explain(key: Option<String>, message: &str) -> (Option<String>, String) {
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        // "duplicate mapping key: grace_period, set DuplicateKeyPolicy ..."
        // with the path "server.?": name the key, not the parser's option.
        let field = rest.split(',').next().unwrap_or(rest).trim();
        let parent = key
            .as_deref()
            .map(|path| path.trim_end_matches('?').trim_end_matches('.'))
            .filter(|path| !path.is_empty());
        let key = match parent {
            Some(parent) => format!("{parent}.{field}"),
            None => field.to_owned(),
        };
        return (Some(key), "key given twice; keep one".to_owned());
    }
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return (key, message.to_owned());
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return (key, message.to_owned());
    };
    let candidates: Vec<&str> = expected
        .trim_start_matches(|c: char| c == ',' || c.is_whitespace())
        .trim_start_matches("expected one of")
        .trim_start_matches("expected")
        .split(',')
        .map(|c| c.trim().trim_matches('`'))
        .filter(|c| !c.is_empty())
        .collect();
    // Depending on where the error surfaced, the path may stop at the parent.
    let key = match key {
        Some(path) if path == field || path.ends_with(&format!(".{field}")) => path,
        Some(parent) => format!("{parent}.{field}"),
        None => field.to_owned(),
    };
    let mut message = "unknown key".to_owned();
    if let Some(best) = suggest(field, &candidates) {
        message.push_str(&format!("; did you mean `{best}`?"));
    } else if !candidates.is_empty() {
        message.push_str(&format!("; expected one of: {}", candidates.join(", ")));
    }
    (Some(key), message)
}

/// The closest candidate, if it is close enough to be a typo.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|candidate| (strsim::damerau_levenshtein(word, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// The 1-based line of a dotted key in block-style YAML, found by following
/// indentation. `None` if the key is not written in the file.
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut depth = 0;
    let mut parent_indent: Option<usize> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if let Some(parent) = parent_indent
            && indent <= parent
        {
            // Left the section we were searching in.
            return None;
        }
        let Some((name, _)) = trimmed.split_once(':') else {
            continue;
        };
        let name = name.trim().trim_matches(|c| c == '"' || c == '\'');
        if name == parts[depth] {
            if depth + 1 == parts.len() {
                return Some(index + 1);
            }
            depth += 1;
            parent_indent = Some(indent);
        }
    }
    None
}

/// The 1-based line of item `index` (0-based) of the block list under the
/// top-level key `list` (`rules:` then `- path: /x`), or of `field` inside
/// that item when given and written; falls back to the line of `list`.
pub fn line_of_list_item(
    text: &str,
    list: &str,
    index: usize,
    field: Option<&str>,
) -> Option<usize> {
    let list_line = line_of_key(text, list)?;
    let lines: Vec<&str> = text.lines().collect();
    let indent_of = |line: &str| line.len() - line.trim_start().len();
    let list_indent = indent_of(lines[list_line - 1]);
    let mut item_indent = None;
    let mut items = 0;
    let mut found = None;
    for (number, line) in lines.iter().enumerate().skip(list_line) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = indent_of(line);
        let is_item = trimmed == "-" || trimmed.starts_with("- ");
        if indent < list_indent || (indent == list_indent && !is_item) {
            break;
        }
        let starts_item = is_item && item_indent.is_none_or(|at| at == indent);
        let mut rest = trimmed;
        if starts_item {
            item_indent = Some(indent);
            items += 1;
            if found.is_some() {
                break;
            }
            if items - 1 != index {
                continue;
            }
            found = Some(number + 1);
            rest = trimmed[1..].trim_start();
        } else if found.is_none() {
            continue;
        }
        if let Some(field) = field
            && let Some((name, _)) = rest.split_once(':')
            && name.trim().trim_matches(|c| c == '"' || c == '\'') == field
        {
            return Some(number + 1);
        }
    }
    found.or(Some(list_line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::raw::RawWorkerFile;

    fn parse_worker(text: &str) -> Result<RawWorkerFile, ConfigError> {
        parse(Path::new("workers/blog/config/worker.yaml"), text)
    }

    #[test]
    fn misspelt_key_names_file_line_key_and_suggestion() {
        let err =
            parse_worker("path: /blog\nphp:\n  pool:\n    manager: dynamic\n    max_worker: 3\n")
                .unwrap_err();
        assert_eq!(err.line, Some(5));
        assert_eq!(err.key.as_deref(), Some("php.pool.max_worker"));
        assert!(
            err.message.contains("did you mean `max_workers`"),
            "{}",
            err.message
        );
        assert_eq!(
            err.to_string(),
            "workers/blog/config/worker.yaml:5: php.pool.max_worker: unknown key; did you mean `max_workers`?"
        );
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = parse_worker("php:\n  pool:\n    max_workers: lots\n").unwrap_err();
        assert_eq!(err.line, Some(3));
        assert_eq!(err.key.as_deref(), Some("php.pool.max_workers"));
    }

    #[test]
    fn duplicate_key_is_named() {
        let err = parse_worker("path: /a\nphp:\n  pool:\n    max_workers: 2\n    max_workers: 3\n")
            .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("php.pool.max_workers"), "{err}");
        assert_eq!(err.line, Some(5), "{err}");
        assert!(err.to_string().contains("given twice"), "{err}");
    }

    #[test]
    fn bad_duration_is_explained() {
        let err = parse_worker("php:\n  pool:\n    idle_timeout: 10 parsecs\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("php.pool.idle_timeout"));
        assert!(err.message.contains("duration"), "{}", err.message);
    }

    #[test]
    fn broken_yaml_has_a_line() {
        let err = parse_worker("path: /blog\nphp:\n  pool: [\n").unwrap_err();
        assert!(err.line.is_some(), "{err}");
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let raw = parse_worker("# nothing here\n").unwrap();
        assert!(raw.path.is_none());
    }

    #[test]
    fn locating_keys() {
        let text = "path: /x\nphp:\n  settings:\n    a: 1\n  pool:\n    min_workers: 3\n    max_workers: 2\n";
        assert_eq!(line_of_key(text, "php.pool.max_workers"), Some(7));
        assert_eq!(line_of_key(text, "path"), Some(1));
        assert_eq!(line_of_key(text, "php.pool.start_workers"), None);
    }

    #[test]
    fn locating_list_items() {
        let text = "path: /x\nrules:\n  - path: /data/\n    deny: 404\n  # a comment\n  - glob: /images/**\n\n    static_only: true\nphp:\n  binary: x\n";
        assert_eq!(line_of_list_item(text, "rules", 0, Some("path")), Some(3));
        assert_eq!(line_of_list_item(text, "rules", 0, Some("deny")), Some(4));
        assert_eq!(line_of_list_item(text, "rules", 1, None), Some(6));
        assert_eq!(
            line_of_list_item(text, "rules", 1, Some("static_only")),
            Some(8)
        );
        // A key the item does not have: the item's line.
        assert_eq!(line_of_list_item(text, "rules", 1, Some("deny")), Some(6));
        // No such item: the list's line.
        assert_eq!(line_of_list_item(text, "rules", 5, None), Some(2));
        // Items at the same indentation as the key.
        let text = "rules:\n- path: /a\n  deny: 403\n- path: /b\nenabled: true\n";
        assert_eq!(line_of_list_item(text, "rules", 1, Some("path")), Some(4));
        assert_eq!(line_of_list_item(text, "rules", 0, Some("deny")), Some(3));
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        let keys = ["min_workers", "max_workers", "manager"];
        assert_eq!(suggest("max_wrokers", &keys), Some("max_workers"));
        assert_eq!(suggest("colour", &keys), None);
    }
}
