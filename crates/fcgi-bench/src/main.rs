//! fcgi-bench: the ceiling load generator of tqserver's benchmark suite.
//!
//! `--spawn N` starts N php-cgi processes itself and drives each over one
//! kept-alive FastCGI connection, one request in flight per connection: PHP
//! with no web server and no process manager in front, as fast as PHP can go
//! on this machine. `--connect ADDR` drives an existing FastCGI server
//! (php-fpm, tqserver's listener) with `-c` connections instead.
//!
//! The result is one JSON line on stdout: requests/s, latency percentiles,
//! errors, and for `--spawn` each worker's spawn time (start of the process
//! to the end of its first response).

mod load;
mod request;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fastcgi::client::ClientConnection;
use tokio::time::Instant;
use tokio_util::either::Either;

use load::{ConnStats, Driver, Target, Window};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "FastCGI load generator: the ceiling for tqserver's benchmarks"
)]
struct Args {
    /// Start this many php-cgi processes and drive each over one kept-alive connection.
    #[arg(
        long,
        value_name = "N",
        required_unless_present = "connect",
        conflicts_with = "connect"
    )]
    spawn: Option<usize>,
    /// Drive an existing FastCGI server: a unix socket path (or unix:PATH) or HOST:PORT.
    #[arg(long, value_name = "ADDR")]
    connect: Option<String>,
    /// Connections for --connect, one request in flight on each.
    #[arg(short = 'c', long, default_value_t = 4)]
    connections: usize,
    /// With --connect: a new connection per request instead of FCGI_KEEP_CONN.
    #[arg(long)]
    no_keep_conn: bool,
    /// The php-cgi binary for --spawn.
    #[arg(long, default_value = "php-cgi")]
    php_cgi: PathBuf,
    /// php.ini for --spawn (php-cgi -c).
    #[arg(long, value_name = "FILE")]
    php_ini: Option<PathBuf>,
    /// An ini setting for --spawn (php-cgi -d), repeatable: -d opcache.enable=1.
    #[arg(short = 'd', long = "define", value_name = "KEY=VALUE")]
    defines: Vec<String>,
    /// The script to run: SCRIPT_FILENAME (an absolute path).
    #[arg(long)]
    script: PathBuf,
    /// DOCUMENT_ROOT [default: the script's folder].
    #[arg(long)]
    document_root: Option<PathBuf>,
    /// SCRIPT_NAME [default: / and the script's file name].
    #[arg(long)]
    script_name: Option<String>,
    /// QUERY_STRING.
    #[arg(long, default_value = "")]
    query: String,
    /// An extra param, repeatable: --param HTTPS=on.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_pair)]
    params: Vec<(String, String)>,
    /// Measured time: 5s, 500ms, 1m or seconds.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before measuring (caches, opcache, allocator).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    warmup: Duration,
    /// A request still open this long after the end counts as a timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    grace: Duration,
    /// Runtime threads; 1 is a current-thread runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 5s or 500ms"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|err| format!("`{text}`: {err}"))
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=VALUE"))?;
    Ok((name.to_owned(), value.to_owned()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(args.threads);
        builder
    }
    .enable_all()
    .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(err) => Err(format!("cannot start the runtime: {err}")),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("fcgi-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<String, String> {
    if !args.script.is_absolute() {
        return Err("--script must be an absolute path (it is SCRIPT_FILENAME)".into());
    }
    let document_root = args
        .document_root
        .clone()
        .or_else(|| args.script.parent().map(Into::into))
        .unwrap_or_else(|| "/".into());
    let script_name = args.script_name.clone().unwrap_or_else(|| {
        let file = args.script.file_name().unwrap_or_default();
        format!("/{}", file.to_string_lossy())
    });
    let spec = request::RequestSpec {
        script_filename: &args.script,
        document_root: &document_root,
        script_name: &script_name,
        query: &args.query,
        extra: &args.params,
    };
    let keep_conn = args.spawn.is_some() || !args.no_keep_conn;
    let request = request::encode(&spec, keep_conn);

    // Spawned workers live until this function returns.
    let mut workers = Vec::new();
    let mut spawn_ms = Vec::new();
    let mut conns: Vec<Option<ClientConnection<load::Stream>>> = Vec::new();
    let target = match (&args.spawn, &args.connect) {
        (Some(count), _) => {
            let dir = tempfile::Builder::new()
                .prefix("fcgi-bench-")
                .tempdir()
                .map_err(|err| format!("cannot create a socket folder: {err}"))?;
            let php = workers::PhpCommand {
                binary: args.php_cgi.clone(),
                config_file: args.php_ini.clone(),
                defines: args.defines.clone(),
            };
            // One at a time, so each spawn time is a process starting alone.
            for slot in 0..*count {
                let started = Instant::now();
                let socket = dir.path().join(format!("php-{slot}.sock"));
                let (worker, stream) = workers::spawn(&php, &socket)
                    .await
                    .map_err(|err| err.to_string())?;
                let mut conn = ClientConnection::new(Either::Left(stream));
                conn.write_buf().extend_from_slice(&request);
                let first =
                    tokio::time::timeout(Duration::from_secs(10), load::exchange(&mut conn))
                        .await
                        .map_err(|_| {
                            format!("php-cgi (pid {}) did not answer in 10 s", worker.pid())
                        })?
                        .map_err(|err| format!("php-cgi (pid {}): {err}", worker.pid()))?;
                if first.status != 200 {
                    eprintln!(
                        "fcgi-bench: warning: {} answered status {} (is --script right?)",
                        args.script.display(),
                        first.status
                    );
                }
                spawn_ms.push(started.elapsed().as_secs_f64() * 1000.0);
                workers.push(worker);
                conns.push(Some(conn));
            }
            None
        }
        (None, Some(addr)) => {
            let target = Target::parse(addr);
            conns.resize_with(args.connections.max(1), || None);
            Some(target)
        }
        (None, None) => unreachable!("clap requires --spawn or --connect"),
    };

    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let driver = Arc::new(Driver {
        request,
        target: target.clone(),
        keep_conn,
        window: Window {
            measure_from,
            end,
            hard_stop: end + args.grace,
        },
    });
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| tokio::spawn(load::drive(driver.clone(), conn)))
        .collect();
    let mut all = Vec::with_capacity(tasks.len());
    for task in tasks {
        all.push(
            task.await
                .map_err(|err| format!("a load task failed: {err}"))?,
        );
    }
    let elapsed = Instant::now()
        .min(end)
        .saturating_duration_since(measure_from);
    drop(workers);

    let mode = match &target {
        None => format!(r#""mode":"spawn","workers":{}"#, spawn_ms.len()),
        Some(target) => format!(
            r#""mode":"connect","target":{}"#,
            json_str(&target.to_string())
        ),
    };
    Ok(report(&mode, &all, elapsed, keep_conn, &spawn_ms))
}

/// The JSON line. Written by hand: a flat object, no serde needed.
fn report(
    mode: &str,
    all: &[ConnStats],
    elapsed: Duration,
    keep_conn: bool,
    spawn_ms: &[f64],
) -> String {
    let mut latencies: Vec<u32> = all
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    latencies.sort_unstable();
    let requests = latencies.len();
    let sum = |f: fn(&ConnStats) -> u64| all.iter().map(f).sum::<u64>();
    let (non_2xx, errors, timeouts) = (sum(|s| s.non_2xx), sum(|s| s.errors), sum(|s| s.timeouts));
    let bytes = sum(|s| s.response_bytes);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let ms = |us: u32| us as f64 / 1000.0;
    let percentile = |p: f64| {
        if latencies.is_empty() {
            0.0
        } else {
            // Nearest rank.
            let rank = ((p / 100.0) * requests as f64).ceil() as usize;
            ms(latencies[rank.clamp(1, requests) - 1])
        }
    };
    let mean = if requests == 0 {
        0.0
    } else {
        latencies.iter().map(|&us| us as f64).sum::<f64>() / requests as f64 / 1000.0
    };
    let first_error = all.iter().find_map(|s| s.first_error.as_deref());
    if let Some(message) = first_error {
        eprintln!("fcgi-bench: first error: {message}");
    }
    let spawn_list = spawn_ms
        .iter()
        .map(|ms| format!("{ms:.2}"))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        concat!(
            r#"{{"tool":"fcgi-bench",{},"connections":{},"keep_conn":{},"duration_s":{:.3},"#,
            r#""requests":{},"rps":{:.1},"#,
            r#""latency_ms":{{"p50":{:.3},"p90":{:.3},"p99":{:.3},"max":{:.3},"mean":{:.3}}},"#,
            r#""non_2xx":{},"errors":{},"timeouts":{},"bytes_per_response":{},"spawn_ms":[{}],"first_error":{}}}"#
        ),
        mode,
        all.len(),
        keep_conn,
        secs,
        requests,
        requests as f64 / secs,
        percentile(50.0),
        percentile(90.0),
        percentile(99.0),
        latencies.last().map_or(0.0, |&us| ms(us)),
        mean,
        non_2xx,
        errors,
        timeouts,
        if requests == 0 {
            0
        } else {
            bytes / requests as u64
        },
        spawn_list,
        first_error.map_or("null".to_owned(), json_str),
    )
}

fn json_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
    }
}
