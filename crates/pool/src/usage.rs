//! What one request cost its worker process: CPU and peak memory, as
//! php-fpm's status page shows them ("last request cpu", "last request
//! memory").
//!
//! php-fpm measures inside its children; our workers are separate php-cgi
//! processes, so this reads them from /proc. Each worker's files are opened
//! once, when it starts, and read with `pread` at offset 0: the CPU time at
//! each request's end (0.5 µs), and the peak RSS (2.7 µs for
//! /proc/PID/status, then a reset of it) only when a status page asks
//! (measured on this machine's Linux 6.18 against a php-cgi worker).
//! Open files also keep answering for the process they were opened for:
//! a recycled pid never gives another process's numbers.
//!
//! - CPU: `/proc/PID/schedstat`'s first field, the time on a CPU in
//!   nanoseconds of the process's main thread (php-cgi has only one) (php-fpm uses `times()`, in clock ticks of 10 ms, which
//!   makes a 5 ms request 0% or 200%); `/proc/PID/stat`'s utime + stime
//!   where schedstat is missing. The percentage is CPU time over the
//!   request's wall time, as php-fpm computes it.
//! - Memory: the peak resident set (`VmHWM` in `/proc/PID/status`) since
//!   the previous status read, reset after each by writing 5 to
//!   `/proc/PID/clear_refs`.
//!   The RSS at the end would miss memory PHP freed before finishing. PHP
//!   answers (END_REQUEST) before it frees the request's variables, so a
//!   request that starts while that is still under way counts the memory
//!   not yet freed in its peak. Unlike
//!   php-fpm's figure (PHP's own allocator peak), this includes the
//!   process's baseline (the php-cgi binary, extensions, OPcache's mapping
//!   as far as it is touched).

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// What one request cost.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RequestUsage {
    /// CPU time over wall time, in percent of one CPU.
    pub cpu_percent: f64,
    /// Peak resident memory of the process during the request, in bytes.
    pub peak_memory_bytes: u64,
}

#[derive(Debug)]
enum CpuSource {
    /// /proc/PID/schedstat: nanoseconds.
    Schedstat(File),
    /// /proc/PID/stat: utime + stime in clock ticks.
    Stat(File),
}

/// A worker's /proc files, opened once.
#[derive(Debug, Default)]
pub(crate) struct ProcFiles {
    cpu: Option<CpuSource>,
    status: Option<File>,
    clear_refs: Option<File>,
}

impl ProcFiles {
    pub(crate) fn open(pid: u32) -> Self {
        if pid == 0 {
            return Self::default();
        }
        let path = |name: &str| format!("/proc/{pid}/{name}");
        let cpu = File::open(path("schedstat"))
            .map(CpuSource::Schedstat)
            .or_else(|_| File::open(path("stat")).map(CpuSource::Stat))
            .ok();
        Self {
            cpu,
            status: File::open(path("status")).ok(),
            clear_refs: std::fs::OpenOptions::new()
                .write(true)
                .open(path("clear_refs"))
                .ok(),
        }
    }

    /// CPU time used so far, in nanoseconds.
    pub(crate) fn cpu_ns(&self) -> Option<u64> {
        let mut buf = [0u8; 1024];
        match self.cpu.as_ref()? {
            CpuSource::Schedstat(file) => {
                let read = file.read_at(&mut buf, 0).ok()?;
                parse_schedstat(&buf[..read])
            }
            CpuSource::Stat(file) => {
                let read = file.read_at(&mut buf, 0).ok()?;
                let ticks = parse_stat_ticks(&buf[..read])?;
                // SAFETY: sysconf has no preconditions.
                let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
                Some(ticks.saturating_mul(1_000_000_000) / per_second)
            }
        }
    }

    /// Starts a new peak: VmHWM becomes the current RSS.
    pub(crate) fn reset_peak(&self) {
        if let Some(mut file) = self.clear_refs.as_ref() {
            let _ = file.write(b"5");
        }
    }

    /// The peak RSS since the last reset, in bytes.
    pub(crate) fn peak_rss(&self) -> Option<u64> {
        let mut buf = [0u8; 4096];
        let read = self.status.as_ref()?.read_at(&mut buf, 0).ok()?;
        parse_vm_hwm(&buf[..read])
    }
}

/// The usage of a request that took `wall` and `cpu_ns` of CPU time.
pub(crate) fn usage(wall: Duration, cpu_ns: u64, peak_memory_bytes: u64) -> RequestUsage {
    let wall_ns = wall.as_nanos().max(1) as f64;
    RequestUsage {
        cpu_percent: cpu_ns as f64 / wall_ns * 100.0,
        peak_memory_bytes,
    }
}

fn parse_schedstat(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime (fields 14 and 15) of /proc/PID/stat.
fn parse_stat_ticks(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    // The command name may hold spaces and parentheses: fields count from
    // the last ')'; field 3 (state) comes first after it.
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_vm_hwm(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line["VmHWM:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_formats() {
        assert_eq!(parse_schedstat(b"887257 1259593 17\n"), Some(887_257));
        let stat = b"4242 (php (cgi)) S 1 4242 4242 0 -1 4194560 2570 0 0 0 31 7 0 0 20 0 1 0";
        assert_eq!(parse_stat_ticks(stat), Some(38));
        let status =
            b"Name:\tphp-cgi\nVmPeak:\t  250000 kB\nVmHWM:\t    2284 kB\nVmRSS:\t 2000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2284 * 1024));
    }

    #[test]
    fn cpu_percent_is_cpu_time_over_wall_time() {
        let half = usage(Duration::from_millis(200), 100_000_000, 0);
        assert!((half.cpu_percent - 50.0).abs() < 1e-9);
        assert_eq!(usage(Duration::ZERO, 0, 7).peak_memory_bytes, 7);
    }

    #[test]
    fn this_thread_can_be_measured() {
        // schedstat counts one task (php-cgi has one thread): this test's
        // thread, which /proc also answers for by its id.
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let files = ProcFiles::open(tid);
        let before = files.cpu_ns().unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(files.cpu_ns().unwrap() > before);
        files.reset_peak();
        let base = files.peak_rss().unwrap();
        let block = vec![1u8; 32 << 20];
        std::hint::black_box(&block);
        assert!(files.peak_rss().unwrap() >= base + (30 << 20));
    }
}
