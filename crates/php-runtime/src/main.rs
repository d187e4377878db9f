//! tqserver-php: PHP for tqserver, on Debian's libphp8.2-embed.
//!
//! # Theory of operation
//! tqserver's pool asks for a worker; with `php.runtime: embed` it has one
//! zygote per app (`tqserver-php --zygote`, [`zygote`]) that ran PHP's module
//! startup once, so OPcache's shared memory and preloaded classes are there
//! before any worker exists. The zygote forks a worker for each request for
//! one, handing it a listening socket; the worker ([`worker`], in the
//! library: it needs no libphp, so it can be fuzzed) serves FastCGI
//! on it exactly as php-cgi does on fd 0: a connection from tqserver, a
//! BEGIN_REQUEST, PARAMS, STDIN, then PHP runs the script through the C half
//! of the SAPI (csrc/tq_sapi.c, [`ffi`]) and the response goes back as STDOUT
//! records and an END_REQUEST. The pool, its queue, timeouts and recycling
//! are the same as for php-cgi.
//!
//! Without `--zygote` the binary is a single worker on fd 0, as php-cgi is.
//!
//! Arguments, as php-cgi's: `-c php.ini` and `-d key=value` (repeated).

mod ffi;
mod zygote;

use std::ffi::CString;

use php_runtime::worker;

fn main() {
    let mut ini = String::new();
    let mut ini_path: Option<CString> = None;
    let mut as_zygote = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--zygote" => as_zygote = true,
            "-c" => ini_path = args.next().and_then(|p| CString::new(p).ok()),
            "-d" => {
                if let Some(setting) = args.next() {
                    ini.push_str(&setting);
                    ini.push('\n');
                }
            }
            "-v" | "--version" => {
                // The first line reads as php-cgi's does: tqserver checks it.
                println!(
                    "PHP {} (cgi-fcgi) (tqserver-php {}, libphp8.2-embed)",
                    ffi::version(),
                    env!("CARGO_PKG_VERSION")
                );
                return;
            }
            other if other.starts_with("-d") => {
                ini.push_str(&other[2..]);
                ini.push('\n');
            }
            other => {
                eprintln!(
                    "tqserver-php: unknown argument `{other}` (expected -c FILE, -d KEY=VALUE, --zygote)"
                );
                std::process::exit(64);
            }
        }
    }
    // As php-cgi: a peer closing a socket must not kill the process.
    // SAFETY: setting SIGPIPE to ignored, before any other thread or handler
    // exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let ini = CString::new(ini).unwrap_or_default();
    if !ffi::startup(&ini, ini_path.as_deref()) {
        eprintln!("tqserver-php: PHP's module startup failed");
        std::process::exit(1);
    }
    if as_zygote {
        zygote::run();
    }
    worker::serve(&mut ffi::Php);
}
