//! The php-fpm compatible status page of a pool: text (default), `?json`,
//! `?html`, `?xml`, `?openmetrics`, each with `&full` for per-process rows.
//!
//! Field names and meanings follow php-fpm's `pm.status_path`, so tools
//! written for it (php-fpm_exporter and the like) read tqserver unchanged:
//! "listen queue" is the number of requests waiting for a worker (which
//! php-fpm cannot see on unix sockets), "listen queue len" the queue's bound.
//! tqserver adds what php-fpm lacks: the pool's limits, per-process RSS,
//! queue wait, spawns, recycles, timeouts, crashes and rejections.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pool::{PoolStatus, WorkerStatus};

pub struct Page {
    pub content_type: &'static str,
    pub body: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Json,
    Html,
    Xml,
    OpenMetrics,
}

fn parse_query(query: &str) -> (Format, bool) {
    let mut format = Format::Text;
    let mut full = false;
    for part in query.split('&') {
        match part.split('=').next().unwrap_or("") {
            "json" => format = Format::Json,
            "html" => format = Format::Html,
            "xml" => format = Format::Xml,
            "openmetrics" => format = Format::OpenMetrics,
            "full" => full = true,
            _ => {}
        }
    }
    (format, full)
}

pub fn render_pool(status: &PoolStatus, query: &str) -> Page {
    let (format, full) = parse_query(query);
    match format {
        Format::Text => Page {
            content_type: "text/plain",
            body: text(status, full),
        },
        Format::Json => Page {
            content_type: "application/json",
            body: json(status, full),
        },
        Format::Html => Page {
            content_type: "text/html; charset=utf-8",
            body: html(status, full),
        },
        Format::Xml => Page {
            content_type: "text/xml",
            body: xml(status, full),
        },
        Format::OpenMetrics => Page {
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: openmetrics(status),
        },
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn since(time: SystemTime) -> u64 {
    SystemTime::now()
        .duration_since(time)
        .map_or(0, |d| d.as_secs())
}

/// php-fpm's "26/Nov/2026:08:00:00 +0000".
pub fn fpm_time(time: SystemTime) -> String {
    let secs = unix_seconds(time) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One process's numbers, as php-fpm names them.
struct Process<'a> {
    worker: &'a WorkerStatus,
}

impl Process<'_> {
    fn state(&self) -> &'static str {
        self.worker.state.fpm_name()
    }

    /// Current request if running, else the last one.
    fn request(&self) -> Option<(&pool::RequestInfo, Duration)> {
        self.worker
            .current
            .as_ref()
            .or(self.worker.last.as_ref())
            .map(|(info, duration)| (info, *duration))
    }

    fn duration_us(&self) -> u128 {
        self.request().map_or(0, |(_, d)| d.as_micros())
    }

    fn method(&self) -> &str {
        self.request().map_or("-", |(info, _)| info.method())
    }

    fn uri(&self) -> &str {
        self.request().map_or("-", |(info, _)| info.uri())
    }

    fn script(&self) -> &str {
        self.request().map_or("-", |(info, _)| info.script())
    }

    fn content_length(&self) -> u64 {
        self.request().map_or(0, |(info, _)| info.content_length)
    }

    /// What the last request cost; zero while one runs (as php-fpm).
    fn usage(&self) -> pool::RequestUsage {
        match self.worker.current {
            Some(_) => pool::RequestUsage::default(),
            None => self.worker.last_usage.unwrap_or_default(),
        }
    }

    fn cpu(&self) -> String {
        format!("{:.2}", self.usage().cpu_percent)
    }

    fn memory(&self) -> u64 {
        self.usage().peak_memory_bytes
    }
}

fn text(status: &PoolStatus, full: bool) -> String {
    let mut out = String::new();
    let mut line = |name: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(out, "{:<22}{value}", format!("{name}:"));
    };
    line("pool", &status.name);
    line("process manager", &status.manager);
    line("start time", &fpm_time(status.started_at));
    line("start since", &since(status.started_at));
    line("accepted conn", &status.accepted);
    line("listen queue", &status.queue_len);
    line("max listen queue", &status.max_queue_len);
    line("listen queue len", &status.max_queue);
    line("idle processes", &status.idle);
    line("active processes", &status.busy);
    line("total processes", &status.total);
    line("max active processes", &status.max_active);
    line("max children reached", &status.max_children_reached);
    line("slow requests", &status.slow_requests);
    line("min children", &status.min_workers);
    line("max children", &status.max_workers);
    line("spawns", &status.spawns);
    line("recycles", &status.recycles);
    line("timeouts", &status.timeouts);
    line("crashes", &status.crashes);
    line(
        "rejected requests",
        &(status.rejected_queue_full + status.rejected_queue_timeout),
    );
    line("queue wait total ms", &status.queue_wait_total.as_millis());
    if full {
        for worker in &status.workers {
            let process = Process { worker };
            out.push_str("\n************************\n");
            let mut line = |name: &str, value: &dyn std::fmt::Display| {
                let _ = writeln!(out, "{:<22}{value}", format!("{name}:"));
            };
            line("pid", &worker.pid);
            line("state", &process.state());
            line("start time", &fpm_time(worker.started_at));
            line("start since", &since(worker.started_at));
            line("requests", &worker.requests);
            line("request duration", &process.duration_us());
            line("request method", &process.method());
            line("request URI", &process.uri());
            line("content length", &process.content_length());
            line("user", &"-");
            line("script", &process.script());
            line("last request cpu", &process.cpu());
            line("last request memory", &process.memory());
            line("rss", &worker.rss_bytes.unwrap_or(0));
        }
    }
    out
}

/// The pool as a JSON object (php-fpm's `?json` fields plus tqserver's).
pub fn json_value(status: &PoolStatus, full: bool) -> String {
    let mut out = String::from("{");
    let mut field = |name: &str, value: String| {
        if out.len() > 1 {
            out.push(',');
        }
        let _ = write!(out, "{}:{value}", quote(name));
    };
    field("pool", quote(&status.name));
    field("process manager", quote(status.manager));
    field("start time", unix_seconds(status.started_at).to_string());
    field("start since", since(status.started_at).to_string());
    field("accepted conn", status.accepted.to_string());
    field("listen queue", status.queue_len.to_string());
    field("max listen queue", status.max_queue_len.to_string());
    field("listen queue len", status.max_queue.to_string());
    field("idle processes", status.idle.to_string());
    field("active processes", status.busy.to_string());
    field("total processes", status.total.to_string());
    field("max active processes", status.max_active.to_string());
    field(
        "max children reached",
        status.max_children_reached.to_string(),
    );
    field("slow requests", status.slow_requests.to_string());
    field("min children", status.min_workers.to_string());
    field("max children", status.max_workers.to_string());
    field("starting processes", status.spawning.to_string());
    field("draining", status.draining.to_string());
    field("spawns", status.spawns.to_string());
    field("spawn failures", status.spawn_failures.to_string());
    field("recycles", status.recycles.to_string());
    field("timeouts", status.timeouts.to_string());
    field("crashes", status.crashes.to_string());
    field(
        "rejected queue full",
        status.rejected_queue_full.to_string(),
    );
    field(
        "rejected queue timeout",
        status.rejected_queue_timeout.to_string(),
    );
    field("queued requests", status.queued.to_string());
    field(
        "queue wait total",
        format!("{:.6}", status.queue_wait_total.as_secs_f64()),
    );
    field(
        "backoff remaining",
        format!(
            "{:.3}",
            status.backoff_remaining.map_or(0.0, |d| d.as_secs_f64())
        ),
    );
    if full {
        let processes: Vec<String> = status
            .workers
            .iter()
            .map(|worker| {
                let p = Process { worker };
                format!(
                    "{{\"pid\":{},\"state\":{},\"start time\":{},\"start since\":{},\"requests\":{},\"request duration\":{},\"request method\":{},\"request uri\":{},\"content length\":{},\"user\":\"-\",\"script\":{},\"last request cpu\":{},\"last request memory\":{},\"rss\":{}}}",
                    worker.pid,
                    quote(p.state()),
                    unix_seconds(worker.started_at),
                    since(worker.started_at),
                    worker.requests,
                    p.duration_us(),
                    quote(p.method()),
                    quote(p.uri()),
                    p.content_length(),
                    quote(p.script()),
                    p.cpu(),
                    p.memory(),
                    worker.rss_bytes.unwrap_or(0),
                )
            })
            .collect();
        field("processes", format!("[{}]", processes.join(",")));
    }
    out.push('}');
    out
}

fn json(status: &PoolStatus, full: bool) -> String {
    json_value(status, full)
}

/// A JSON string literal.
pub fn quote(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(status: &PoolStatus, full: bool) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
<title>tqserver status: {name}</title><style>body{{font-family:system-ui,sans-serif;margin:1.5rem}}\
table{{border-collapse:collapse;margin-bottom:1.5rem}}th,td{{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}}\
th{{background:#f0f3f7}}.Running{{background:#fff3cd}}.Idle{{background:#e7f5e9}}</style></head><body>\
<h1>Pool {name}</h1><table>",
        name = escape_html(&status.name)
    );
    let rows: [(&str, String); 18] = [
        ("pool", status.name.clone()),
        ("process manager", status.manager.to_owned()),
        ("start time", fpm_time(status.started_at)),
        ("start since", since(status.started_at).to_string()),
        ("accepted conn", status.accepted.to_string()),
        ("listen queue", status.queue_len.to_string()),
        ("max listen queue", status.max_queue_len.to_string()),
        ("listen queue len", status.max_queue.to_string()),
        ("idle processes", status.idle.to_string()),
        ("active processes", status.busy.to_string()),
        ("total processes", status.total.to_string()),
        ("max active processes", status.max_active.to_string()),
        (
            "max children reached",
            status.max_children_reached.to_string(),
        ),
        ("slow requests", status.slow_requests.to_string()),
        (
            "min / max children",
            format!("{} / {}", status.min_workers, status.max_workers),
        ),
        (
            "spawns / recycles",
            format!("{} / {}", status.spawns, status.recycles),
        ),
        (
            "timeouts / crashes",
            format!("{} / {}", status.timeouts, status.crashes),
        ),
        (
            "rejected requests",
            (status.rejected_queue_full + status.rejected_queue_timeout).to_string(),
        ),
    ];
    for (name, value) in rows {
        let _ = write!(
            out,
            "<tr><th>{name}</th><td>{}</td></tr>",
            escape_html(&value)
        );
    }
    out.push_str("</table>");
    if full || !status.workers.is_empty() {
        out.push_str("<h2>Processes</h2><table><tr><th>pid</th><th>state</th><th>start since</th><th>requests</th><th>request duration (µs)</th><th>method</th><th>request URI</th><th>script</th><th>last request CPU %</th><th>last request memory (KiB)</th><th>RSS (KiB)</th></tr>");
        for worker in &status.workers {
            let p = Process { worker };
            let _ = write!(
                out,
                "<tr class=\"{state}\"><td>{}</td><td>{state}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                worker.pid,
                since(worker.started_at),
                worker.requests,
                p.duration_us(),
                escape_html(p.method()),
                escape_html(p.uri()),
                escape_html(p.script()),
                p.cpu(),
                p.memory() / 1024,
                worker.rss_bytes.unwrap_or(0) / 1024,
                state = p.state(),
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</body></html>\n");
    out
}

fn xml(status: &PoolStatus, full: bool) -> String {
    let mut out = String::from("<?xml version=\"1.0\" ?>\n<status>\n");
    let mut tag = |name: &str, value: String| {
        let _ = writeln!(out, "<{name}>{}</{name}>", escape_html(&value));
    };
    tag("pool", status.name.clone());
    tag("process-manager", status.manager.to_owned());
    tag("start-time", unix_seconds(status.started_at).to_string());
    tag("start-since", since(status.started_at).to_string());
    tag("accepted-conn", status.accepted.to_string());
    tag("listen-queue", status.queue_len.to_string());
    tag("max-listen-queue", status.max_queue_len.to_string());
    tag("listen-queue-len", status.max_queue.to_string());
    tag("idle-processes", status.idle.to_string());
    tag("active-processes", status.busy.to_string());
    tag("total-processes", status.total.to_string());
    tag("max-active-processes", status.max_active.to_string());
    tag(
        "max-children-reached",
        status.max_children_reached.to_string(),
    );
    tag("slow-requests", status.slow_requests.to_string());
    if full {
        out.push_str("<processes>\n");
        for worker in &status.workers {
            let p = Process { worker };
            let _ = write!(
                out,
                "<process><pid>{}</pid><state>{}</state><start-time>{}</start-time><start-since>{}</start-since><requests>{}</requests><request-duration>{}</request-duration><request-method>{}</request-method><request-uri>{}</request-uri><content-length>{}</content-length><user>-</user><script>{}</script><last-request-cpu>{}</last-request-cpu><last-request-memory>{}</last-request-memory></process>",
                worker.pid,
                p.state(),
                unix_seconds(worker.started_at),
                since(worker.started_at),
                worker.requests,
                p.duration_us(),
                escape_html(p.method()),
                escape_html(p.uri()),
                p.content_length(),
                escape_html(p.script()),
                p.cpu(),
                p.memory(),
            );
            out.push('\n');
        }
        out.push_str("</processes>\n");
    }
    out.push_str("</status>\n");
    out
}

/// php-fpm's `?openmetrics` series, named `phpfpm_*`.
fn openmetrics(status: &PoolStatus) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = write!(
            out,
            "# HELP phpfpm_{name} {help}\n# TYPE phpfpm_{name} {kind}\nphpfpm_{name}{suffix} {value}\n",
            suffix = if kind == "counter" { "_total" } else { "" }
        );
    };
    metric(
        "up",
        "gauge",
        "Whether the pool can be reached.",
        "1".into(),
    );
    metric(
        "start_since",
        "gauge",
        "Seconds since the pool started.",
        since(status.started_at).to_string(),
    );
    metric(
        "accepted_connections",
        "counter",
        "Requests accepted by the pool.",
        status.accepted.to_string(),
    );
    metric(
        "listen_queue",
        "gauge",
        "Requests waiting for a worker.",
        status.queue_len.to_string(),
    );
    metric(
        "max_listen_queue",
        "gauge",
        "Most requests ever waiting for a worker.",
        status.max_queue_len.to_string(),
    );
    metric(
        "listen_queue_length",
        "gauge",
        "Bound of the wait queue.",
        status.max_queue.to_string(),
    );
    metric(
        "idle_processes",
        "gauge",
        "Idle worker processes.",
        status.idle.to_string(),
    );
    metric(
        "active_processes",
        "gauge",
        "Busy worker processes.",
        status.busy.to_string(),
    );
    metric(
        "total_processes",
        "gauge",
        "Worker processes.",
        status.total.to_string(),
    );
    metric(
        "max_active_processes",
        "gauge",
        "Most worker processes ever busy at once.",
        status.max_active.to_string(),
    );
    metric(
        "max_children_reached",
        "counter",
        "Times every worker was busy at max_workers.",
        status.max_children_reached.to_string(),
    );
    metric(
        "slow_requests",
        "counter",
        "Requests slower than the slow-log threshold.",
        status.slow_requests.to_string(),
    );
    out.push_str("# EOF\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fpm_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_651_200 + 3_723);
        assert_eq!(fpm_time(t), "26/Nov/2026:01:02:03 +0000");
        assert_eq!(fpm_time(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
    }

    #[test]
    fn json_strings() {
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }

    #[test]
    fn query_forms() {
        assert!(parse_query("json&full") == (Format::Json, true));
        assert!(parse_query("") == (Format::Text, false));
        assert!(parse_query("full&html") == (Format::Html, true));
    }
}
