//! nginx in front of tqserver's FastCGI listener, configured the way a
//! WordPress or Laravel site is usually configured for php-fpm: static
//! files by nginx, `try_files $uri $uri/ /index.php?$args`, and Debian's
//! `snippets/fastcgi-php.conf` for scripts, with `fastcgi_pass` pointing at
//! tqserver instead of php-fpm.

use std::path::Path;

use crate::support::nginx::Nginx;

/// Starts nginx serving `www` (its document root; the app lives at
/// `www{prefix}`) and passing PHP to `upstream`: tqserver's listener
/// (`127.0.0.1:9001`) or php-fpm (`unix:/path/to/fpm.sock`).
///
/// `keep_alive` keeps FastCGI connections open between requests. That
/// suits tqserver, which takes any number of connections and queues their
/// requests for its pool; php-fpm's children each serve one connection at a
/// time, so connections beyond the children wait in the accept queue while
/// the children keep serving the connections they have: the usual php-fpm
/// configuration does not keep them alive.
pub fn php_site(www: &Path, prefix: &str, upstream: &str, keep_alive: bool) -> Nginx {
    let www = www.canonicalize().expect("the nginx document root");
    let prefix = prefix.trim_end_matches('/');
    Nginx::start(
        &format!(
            "include /etc/nginx/mime.types;\n\
             upstream php {{ server {upstream}; {keepalive} }}",
            keepalive = if keep_alive { "keepalive 8;" } else { "" },
        ),
        &format!(
            "root {www};\n\
             index index.php index.html;\n\
             location {prefix}/ {{ try_files $uri $uri/ {prefix}/index.php?$args; }}\n\
             location ~ [^/]\\.php(/|$) {{\n\
               # /etc/nginx/snippets/fastcgi-php.conf, spelled out (its\n\
               # relative include would resolve against this test's prefix).\n\
               fastcgi_split_path_info ^(.+?\\.php)(/.*)$;\n\
               try_files $fastcgi_script_name =404;\n\
               set $path_info $fastcgi_path_info;\n\
               fastcgi_param PATH_INFO $path_info;\n\
               fastcgi_index index.php;\n\
               include /etc/nginx/fastcgi.conf;\n\
               fastcgi_pass php;\n\
               {keep_conn}\n\
             }}",
            www = www.display(),
            keep_conn = if keep_alive {
                "fastcgi_keep_conn on;"
            } else {
                ""
            },
        ),
    )
}
