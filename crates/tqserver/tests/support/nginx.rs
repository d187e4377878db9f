//! A real nginx for tests: started with a generated config on a free port,
//! stopped on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

pub fn nginx_binary() -> PathBuf {
    for candidate in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("nginx not found: install the Debian package nginx-light (scripts/deps.sh test)");
}

impl Nginx {
    /// Starts nginx with `server_body` inside `http { server { listen PORT; ... } }`
    /// and `http_extra` (upstreams) inside `http { }`.
    pub fn start(http_extra: &str, server_body: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tqnginx")
            .tempdir()
            .unwrap();
        let _ = Command::new("chmod").arg("0777").arg(dir.path()).status();
        let port = super::free_port();
        let prefix = dir.path();
        let config = format!(
            "worker_processes 1;\n\
             daemon off;\n\
             user www-data www-data;\n\
             pid {prefix}/nginx.pid;\n\
             error_log {prefix}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {prefix}/body;\n\
               fastcgi_temp_path {prefix}/fastcgi;\n\
               proxy_temp_path {prefix}/proxy;\n\
               uwsgi_temp_path {prefix}/uwsgi;\n\
               scgi_temp_path {prefix}/scgi;\n\
               client_max_body_size 64m;\n\
               {http_extra}\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 {server_body}\n\
               }}\n\
             }}\n",
            prefix = prefix.display()
        );
        std::fs::write(prefix.join("nginx.conf"), config).unwrap();
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Self {
            port,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(child) = nginx.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("nginx exited ({status}):\n{}", nginx.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not start:\n{}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// The master process's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> super::Response {
        self.request(format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        ))
    }

    pub fn request(&self, raw: impl AsRef<[u8]>) -> super::Response {
        let mut conn = super::Conn::open(self.port);
        conn.send(raw.as_ref());
        conn.read_response(false)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT is nginx's graceful stop; SIGTERM its fast one.
            super::stop_child(&mut child, Duration::from_secs(5));
        }
    }
}

/// A real php-fpm on a private unix socket, stopped on drop: the other half
/// of the nginx + php-fpm pair that tqserver is compared with.
pub struct PhpFpm {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

pub fn php_fpm_binary() -> PathBuf {
    for candidate in ["/usr/sbin/php-fpm8.2", "/usr/sbin/php-fpm"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("php-fpm not found: install the Debian package php-fpm (scripts/deps.sh test)");
}

impl PhpFpm {
    pub fn start(children: usize) -> Self {
        let dir = tempfile::Builder::new().prefix("tqfpm").tempdir().unwrap();
        let _ = Command::new("chmod").arg("0755").arg(dir.path()).status();
        let prefix = dir.path().display().to_string();
        // As root, the pool runs as www-data, as Debian's does.
        let user = if nix::unistd::geteuid().is_root() {
            "user = www-data\ngroup = www-data\n"
        } else {
            ""
        };
        let config = format!(
            "[global]\npid = {prefix}/fpm.pid\nerror_log = {prefix}/fpm.log\ndaemonize = no\n\
             [www]\n{user}listen = {prefix}/fpm.sock\nlisten.mode = 0666\n\
             pm = static\npm.max_children = {children}\ncatch_workers_output = yes\n"
        );
        std::fs::write(dir.path().join("fpm.conf"), config).unwrap();
        let child = Command::new(php_fpm_binary())
            .arg("-F")
            .arg("-y")
            .arg(dir.path().join("fpm.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start php-fpm");
        let fpm = Self {
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(fpm.socket()).is_err() {
            assert!(
                Instant::now() < deadline,
                "php-fpm did not start: {}",
                std::fs::read_to_string(fpm.dir.path().join("fpm.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        fpm
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("fpm.sock")
    }

    /// nginx serving `root` as Debian's sites do with php-fpm: `try_files`
    /// to a front controller, `fastcgi_params`, `.php` to this pool.
    pub fn behind_nginx(&self, root: &Path) -> Nginx {
        Nginx::start(
            "",
            &format!(
                "root {root};\n\
                 index index.php index.html;\n\
                 location / {{ try_files $uri $uri/ /index.php?$args; }}\n\
                 location ~ [^/]\\.php(/|$) {{\n\
                   fastcgi_split_path_info ^(.+?\\.php)(/.*)$;\n\
                   if (!-f $document_root$fastcgi_script_name) {{ return 404; }}\n\
                   include /etc/nginx/fastcgi_params;\n\
                   fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;\n\
                   fastcgi_param PATH_INFO $fastcgi_path_info;\n\
                   fastcgi_pass unix:{socket};\n\
                 }}\n",
                root = root.display(),
                socket = self.socket().display()
            ),
        )
    }
}

impl Drop for PhpFpm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::stop_child(&mut child, Duration::from_secs(5));
        }
    }
}
