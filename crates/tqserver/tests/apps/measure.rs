//! What the two ignored benchmarks (`bench_opcache`, `bench_worker_mode`)
//! measure the same way: wrk's figures, a process's memory and CPU time
//! from /proc, medians.

use std::process::Command;
use std::time::Duration;

use crate::setup::run_ok;

/// Connections wrk keeps open.
pub const CONCURRENCY: usize = 20;

/// One wrk run's figures.
pub struct Wrk {
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
}

/// `wrk -t2 -c20 -dSECONDS --latency` against `path`; any non-2xx answer or
/// socket error fails the benchmark. `BENCH_VERBOSE=1` prints wrk's output.
pub fn wrk(port: u16, path: &str, seconds: u64) -> Wrk {
    let output = run_ok(
        Command::new("wrk")
            .arg("-t2")
            .arg(format!("-c{CONCURRENCY}"))
            .arg(format!("-d{seconds}s"))
            .args(["--timeout", "10s", "--latency"])
            .arg(format!("http://localhost:{port}{path}")),
        Duration::from_secs(seconds + 60),
    );
    assert!(
        !output.contains("Non-2xx") && !output.contains("Socket errors"),
        "wrk saw errors on {path}:\n{output}"
    );
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!("{output}");
    }
    // "Requests/sec: 123.45", "50%  12.34ms": milliseconds whatever the unit.
    let value = |prefix: &str| -> f64 {
        let line = output
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in wrk's output:\n{output}"));
        let text = line[prefix.len()..].trim();
        let (number, unit) = text
            .find(|c: char| c.is_ascii_alphabetic())
            .map(|at| text.split_at(at))
            .unwrap_or((text, ""));
        let number: f64 = number.trim().parse().expect("a number in wrk's output");
        match unit.trim() {
            "us" => number / 1000.0,
            "s" => number * 1000.0,
            _ => number,
        }
    };
    // "  1234 requests in 5.00s, 12.34MB read"
    let requests = output
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{output}"));
    Wrk {
        requests_per_second: value("Requests/sec:"),
        p50_ms: value("50%"),
        p99_ms: value("99%"),
        requests,
    }
}

/// RSS and PSS of a process in KiB, from smaps_rollup (0 if it is gone).
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// CPU clock ticks (user + system) a process has used (0 if it is gone).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // utime and stime: fields 14 and 15, the 12th and 13th after the
    // parenthesised command name.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    field(11).unwrap_or(0) + field(12).unwrap_or(0)
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
