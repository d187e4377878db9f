//! A small browser for the app tests: keeps cookies (with their paths, as a
//! browser does), sends forms (urlencoded and multipart) and JSON, follows
//! redirects on request. Each request goes on a new connection with the
//! `Host` the app sees as its own (`localhost:<port>`).

use crate::html::form_encode;
use crate::support::{Conn, Response};

#[derive(Debug, Clone)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    pub path: String,
}

pub struct Browser {
    port: u16,
    cookies: Vec<Cookie>,
    /// Extra request headers sent with every request.
    pub headers: Vec<(String, String)>,
}

/// One part of a multipart/form-data body.
pub enum Part<'a> {
    Field(&'a str, &'a str),
    File {
        name: &'a str,
        filename: &'a str,
        content_type: &'a str,
        data: &'a [u8],
    },
}

impl Browser {
    pub fn new(port: u16) -> Self {
        Self {
            port,
            cookies: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// The origin the app sees: `http://localhost:<port>`.
    pub fn origin(&self) -> String {
        format!("http://localhost:{}", self.port)
    }

    pub fn cookies(&self) -> &[Cookie] {
        &self.cookies
    }

    pub fn cookie(&self, name: &str) -> Option<&Cookie> {
        self.cookies.iter().find(|c| c.name == name)
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[], &[])
    }

    pub fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Response {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            form_encode(fields).as_bytes(),
        )
    }

    pub fn post_multipart(&mut self, path: &str, parts: &[Part]) -> Response {
        let boundary = "----tqserverAppTestBoundary7MA4YWxkTrZu0gW";
        let mut body = Vec::new();
        for part in parts {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            match part {
                Part::Field(name, value) => {
                    body.extend_from_slice(
                        format!(
                            "Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                        )
                        .as_bytes(),
                    );
                }
                Part::File {
                    name,
                    filename,
                    content_type,
                    data,
                } => {
                    body.extend_from_slice(
                        format!(
                            "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                    body.extend_from_slice(data);
                    body.extend_from_slice(b"\r\n");
                }
            }
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let content_type = format!("multipart/form-data; boundary={boundary}");
        self.request("POST", path, &[("Content-Type", &content_type)], &body)
    }

    pub fn post_json(&mut self, path: &str, headers: &[(&str, &str)], json: &str) -> Response {
        let mut all = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ];
        all.extend_from_slice(headers);
        self.request("POST", path, &all, json.as_bytes())
    }

    /// Sends one request on a new connection; stores the cookies it sets.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        assert!(path.starts_with('/'), "a path, not a URL: {path}");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nUser-Agent: tqserver-app-tests\r\nConnection: close\r\n",
            self.port
        );
        let cookies = self.cookie_header(path);
        if !cookies.is_empty() {
            head.push_str(&format!("Cookie: {cookies}\r\n"));
        }
        for (name, value) in headers
            .iter()
            .copied()
            .chain(self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body);
        let mut conn = Conn::open(self.port);
        conn.send(&raw);
        let response = conn.read_response(method == "HEAD");
        for set_cookie in response.headers_named("set-cookie") {
            self.store_cookie(set_cookie);
        }
        response
    }

    /// Follows redirects (GET, as browsers do after a POST) up to `max`
    /// times; returns the final response and the path it came from.
    pub fn follow(&mut self, mut response: Response, max: usize) -> (Response, String) {
        let mut path = String::new();
        for _ in 0..max {
            if !matches!(response.status, 301 | 302 | 303 | 307 | 308) {
                return (response, path);
            }
            path = self.local_path(response.header("location").expect("a redirect's Location"));
            response = self.get(&path);
        }
        assert!(
            !matches!(response.status, 301 | 302 | 303 | 307 | 308),
            "more than {max} redirects, last to {path}"
        );
        (response, path)
    }

    /// The path of a `Location` (absolute URLs must point at this server).
    pub fn local_path(&self, location: &str) -> String {
        if location.starts_with('/') {
            return location.to_owned();
        }
        let origin = self.origin();
        let rest = location
            .strip_prefix(&origin)
            .unwrap_or_else(|| panic!("redirect away from {origin}: {location}"));
        if rest.is_empty() {
            "/".to_owned()
        } else {
            rest.to_owned()
        }
    }

    fn cookie_header(&self, path: &str) -> String {
        let mut matching: Vec<&Cookie> = self
            .cookies
            .iter()
            .filter(|c| path_matches(&c.path, path))
            .collect();
        matching.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        matching
            .iter()
            .map(|c| format!("{}={}", c.name, c.value))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn store_cookie(&mut self, header: &str) {
        let mut parts = header.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else {
            return;
        };
        let mut path = "/".to_owned();
        let mut expired = false;
        for attribute in parts {
            let (key, val) = attribute.split_once('=').unwrap_or((attribute, ""));
            match key.trim().to_ascii_lowercase().as_str() {
                "path" => path = val.trim().to_owned(),
                "max-age" => expired = val.trim().parse::<i64>().is_ok_and(|age| age <= 0),
                _ => {}
            }
        }
        let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
        self.cookies.retain(|c| !(c.name == name && c.path == path));
        if !expired && value != "deleted" {
            self.cookies.push(Cookie { name, value, path });
        }
    }
}

/// RFC 6265 path-match.
fn path_matches(cookie_path: &str, request_path: &str) -> bool {
    let request_path = request_path.split('?').next().unwrap_or("/");
    request_path == cookie_path
        || (request_path.starts_with(cookie_path)
            && (cookie_path.ends_with('/')
                || request_path.as_bytes().get(cookie_path.len()) == Some(&b'/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_follow_paths_and_expire() {
        let mut browser = Browser::new(1);
        browser.store_cookie("a=1; path=/blog/wp-admin; HttpOnly");
        browser.store_cookie("b=2; path=/blog/");
        browser.store_cookie("c=3; expires=Thu, 01-Jan-1970 00:00:01 GMT; Max-Age=0; path=/");
        assert_eq!(
            browser.cookie_header("/blog/wp-admin/index.php"),
            "a=1; b=2"
        );
        assert_eq!(browser.cookie_header("/blog/hello/"), "b=2");
        assert_eq!(browser.cookie_header("/blog/wp-adminx"), "b=2");
        browser.store_cookie("b=gone; Max-Age=0; path=/blog/");
        assert_eq!(browser.cookie_header("/blog/"), "");
    }
}
