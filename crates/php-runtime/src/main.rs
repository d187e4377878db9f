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
//! Arguments, as php-cgi's: `-c php.ini` and `-d key=value` (repeated);
//! `--worker SCRIPT [--document-root DIR]` for worker mode (php.worker):
//! each worker runs SCRIPT once, and the script handles requests in a loop
//! with `frankenphp_handle_request()`.

mod ffi;
mod zygote;

use std::ffi::CString;

use php_runtime::worker;

fn main() {
    let mut ini = String::new();
    let mut ini_path: Option<CString> = None;
    let mut as_zygote = false;
    let mut worker_script: Option<String> = None;
    let mut document_root: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--zygote" => as_zygote = true,
            "--worker" => worker_script = args.next(),
            "--document-root" => document_root = args.next(),
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
                    "tqserver-php: unknown argument `{other}` (expected -c FILE, -d KEY=VALUE, --zygote, --worker SCRIPT, --document-root DIR)"
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
    let boot = worker_script.map(|script| boot_params(&script, document_root.as_deref()));
    let serve = move || match &boot {
        None => worker::serve(&mut ffi::Php),
        Some(boot) => serve_worker(boot),
    };
    if as_zygote {
        zygote::run(&serve);
    }
    serve();
}

/// The worker script's own $_SERVER: where it is, as a request for it
/// would say.
fn boot_params(script: &str, document_root: Option<&str>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let path = std::path::Path::new(script);
    let root = document_root
        .map(str::to_owned)
        .or_else(|| path.parent().map(|p| p.display().to_string()))
        .unwrap_or_default();
    let name = path
        .strip_prefix(&root)
        .map(|rel| format!("/{}", rel.display()))
        .unwrap_or_else(|_| script.to_owned());
    [
        ("SCRIPT_FILENAME", script.to_owned()),
        ("SCRIPT_NAME", name.clone()),
        ("PHP_SELF", name),
        ("DOCUMENT_ROOT", root),
        ("GATEWAY_INTERFACE", "CGI/1.1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
    .collect()
}

/// Runs the worker script; exits when it ends (the pool starts another).
fn serve_worker(boot: &[(Vec<u8>, Vec<u8>)]) -> ! {
    let end = worker::serve_worker(&mut ffi::PhpWorker, boot);
    if !end.started {
        eprintln!("tqserver-php: PHP could not start the worker script");
        std::process::exit(1);
    }
    if !end.booted {
        eprintln!(
            "tqserver-php: the worker script ended before it asked for its first request (it failed while booting, or it has no frankenphp_handle_request() loop)"
        );
        std::process::exit(1);
    }
    std::process::exit(0);
}
