//! Just enough HTML and JSON reading for the app tests: hidden form
//! fields, link targets and string fields of a JSON answer. Plain string
//! scanning: the pages are WordPress's and Laravel's, not arbitrary HTML.

/// The value of the `<input>` named `name` (the first one), entities
/// decoded.
pub fn input_value(html: &str, name: &str) -> Option<String> {
    let needle = format!("name=\"{name}\"");
    let mut from = 0;
    while let Some(found) = html[from..].find(&needle) {
        let at = from + found;
        let start = html[..at].rfind('<')?;
        let end = at + html[at..].find('>')?;
        let tag = &html[start..end];
        if tag.starts_with("<input") {
            return attribute(tag, "value").map(|v| decode_entities(&v));
        }
        from = at + needle.len();
    }
    None
}

/// The value of attribute `name` inside one tag's text.
pub fn attribute(tag: &str, name: &str) -> Option<String> {
    for quote in ['"', '\''] {
        let needle = format!(" {name}={quote}");
        if let Some(at) = tag.find(&needle) {
            let rest = &tag[at + needle.len()..];
            let end = rest.find(quote)?;
            return Some(rest[..end].to_owned());
        }
    }
    None
}

/// Every `href` and `src` value in a page, entities decoded.
pub fn links(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attr in ["href=", "src=", "action="] {
        let mut from = 0;
        while let Some(at) = html[from..].find(attr) {
            let start = from + at + attr.len();
            from = start;
            let Some(quote) = html[start..].chars().next() else {
                break;
            };
            if quote != '"' && quote != '\'' {
                continue;
            }
            if let Some(end) = html[start + 1..].find(quote) {
                found.push(decode_entities(&html[start + 1..start + 1 + end]));
            }
        }
    }
    found
}

/// A page cut down for an assertion message: its title and first lines.
pub fn short(text: &str) -> String {
    const MAX: usize = 1500;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let title = text
        .find("<title>")
        .and_then(|at| {
            text[at..]
                .find("</title>")
                .map(|end| &text[at..at + end + 8])
        })
        .unwrap_or("");
    let mut cut = MAX;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{title} [{} bytes] {} …", text.len(), &text[..cut])
}

/// Decodes the entities WordPress and Blade put into attributes.
pub fn decode_entities(text: &str) -> String {
    text.replace("&#038;", "&")
        .replace("&#038", "&")
        .replace("&quot;", "\"")
        .replace("&#039;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The string value of the first `"key":"..."` in a JSON text, unescaped.
pub fn json_string(json: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\":\"");
    let at = json.find(&needle)? + needle.len();
    let mut out = String::new();
    let mut chars = json[at..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// The raw (unquoted) value of the first `"key":value` in a JSON text:
/// a number, `true`, `false` or `null`.
pub fn json_scalar(json: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\":");
    let at = json.find(&needle)? + needle.len();
    let rest = json[at..].trim_start();
    let end = rest
        .find(|c: char| c == ',' || c == '}' || c == ']' || c.is_whitespace())
        .unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

/// Percent-encodes for `application/x-www-form-urlencoded`.
pub fn form_encode(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(name, value)| format!("{}={}", url_encode(name), url_encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

pub fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A JSON string literal for `text`.
pub fn json_quote(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inputs_links_and_json() {
        let html = r#"<form action="/blog/wp-login.php"><input type="hidden" id="_wpnonce" name="_wpnonce" value="abc123" /><a href='/x?a=1&#038;b=2'>x</a>"#;
        assert_eq!(input_value(html, "_wpnonce").as_deref(), Some("abc123"));
        assert_eq!(input_value(html, "missing"), None);
        assert_eq!(links(html), ["/x?a=1&b=2", "/blog/wp-login.php"]);
        let json = r#"{"id":42,"url":"http:\/\/localhost\/a\"b","ok":true}"#;
        assert_eq!(
            json_string(json, "url").as_deref(),
            Some("http://localhost/a\"b")
        );
        assert_eq!(json_scalar(json, "id").as_deref(), Some("42"));
        assert_eq!(json_scalar(json, "ok").as_deref(), Some("true"));
        assert_eq!(form_encode(&[("a b", "1&2")]), "a+b=1%262");
    }
}
