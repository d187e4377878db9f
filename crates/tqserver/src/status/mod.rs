//! The status pages: php-fpm's page of one pool (text by default, `?json`,
//! `?html`, `?xml`, `?openmetrics`, each with `&full` for per-process rows)
//! and the admin endpoint's `/status` of the whole server, which
//! `tqserver status` reads back.
//!
//! Each page is a serde struct ([`PoolPage`], [`ProcessPage`],
//! [`ServerPage`]) built from a snapshot ([`pool::PoolStatus`], no live
//! pool), so it can be made by hand in a test. JSON is the struct through
//! serde_json; the other formats walk the struct's fields once listed
//! ([`fields`]), so a field added to the struct shows in every format.
//! `render` holds what a format adds on top: php-fpm's date in text and
//! HTML, its `phpfpm_*` series in OpenMetrics.
//!
//! Field names and meanings follow php-fpm's `pm.status_path`, so tools
//! written for it (php-fpm_exporter and the like) read tqserver unchanged:
//! "listen queue" is the number of requests waiting for a worker (which
//! php-fpm cannot see on unix sockets), "listen queue len" the queue's bound.
//! tqserver adds what php-fpm lacks: the pool's limits, per-process RSS,
//! queue wait, spawns, recycles, timeouts, crashes and rejections.

pub mod fields;
mod render;

use std::time::{SystemTime, UNIX_EPOCH};

use pool::{PoolStatus, WorkerStatus};
use serde::{Deserialize, Serialize};

/// A rendered page and its content type.
pub struct Page {
    pub content_type: &'static str,
    pub body: String,
}

/// One pool, as php-fpm's status page shows it, plus tqserver's fields.
/// Missing fields read as zero, so `tqserver status` reads an older server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolPage {
    // php-fpm's fields, in its order.
    pub pool: String,
    #[serde(rename = "process manager")]
    pub process_manager: String,
    /// Unix seconds.
    #[serde(rename = "start time")]
    pub start_time: u64,
    /// Seconds.
    #[serde(rename = "start since")]
    pub start_since: u64,
    #[serde(rename = "accepted conn")]
    pub accepted_conn: u64,
    /// Requests waiting for a worker.
    #[serde(rename = "listen queue")]
    pub listen_queue: u64,
    #[serde(rename = "max listen queue")]
    pub max_listen_queue: u64,
    /// The wait queue's bound.
    #[serde(rename = "listen queue len")]
    pub listen_queue_len: u64,
    #[serde(rename = "idle processes")]
    pub idle_processes: u64,
    #[serde(rename = "active processes")]
    pub active_processes: u64,
    #[serde(rename = "total processes")]
    pub total_processes: u64,
    #[serde(rename = "max active processes")]
    pub max_active_processes: u64,
    #[serde(rename = "max children reached")]
    pub max_children_reached: u64,
    #[serde(rename = "slow requests")]
    pub slow_requests: u64,
    // tqserver's.
    #[serde(rename = "min children")]
    pub min_children: u64,
    #[serde(rename = "max children")]
    pub max_children: u64,
    #[serde(rename = "starting processes")]
    pub starting_processes: u64,
    pub draining: bool,
    pub spawns: u64,
    #[serde(rename = "spawn failures")]
    pub spawn_failures: u64,
    pub recycles: u64,
    pub timeouts: u64,
    pub crashes: u64,
    #[serde(rename = "rejected queue full")]
    pub rejected_queue_full: u64,
    #[serde(rename = "rejected queue timeout")]
    pub rejected_queue_timeout: u64,
    /// Requests that had to wait for a worker.
    #[serde(rename = "queued requests")]
    pub queued_requests: u64,
    /// Seconds those requests waited in all (to the microsecond).
    #[serde(rename = "queue wait total")]
    pub queue_wait_total: f64,
    /// Seconds until crash-loop backoff lets the pool spawn again (to the
    /// millisecond).
    #[serde(rename = "backoff remaining")]
    pub backoff_remaining: f64,
    /// `php.runtime: embed` only: the zygote the workers are forked from
    /// (pid 0 while a dead one is replaced), how many this pool started
    /// (more than 1: it was replaced), and its memory in bytes.
    #[serde(rename = "zygote pid", skip_serializing_if = "Option::is_none")]
    pub zygote_pid: Option<u32>,
    #[serde(rename = "zygote starts", skip_serializing_if = "Option::is_none")]
    pub zygote_starts: Option<u64>,
    #[serde(rename = "zygote rss", skip_serializing_if = "Option::is_none")]
    pub zygote_rss: Option<u64>,
    #[serde(rename = "zygote pss", skip_serializing_if = "Option::is_none")]
    pub zygote_pss: Option<u64>,
    /// With `full`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<Vec<ProcessPage>>,
}

/// One process of a pool (php-fpm's `full` rows, plus its RSS).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessPage {
    pub pid: u32,
    /// php-fpm's word: Idle, Running or Finishing.
    pub state: String,
    /// Unix seconds.
    #[serde(rename = "start time")]
    pub start_time: u64,
    #[serde(rename = "start since")]
    pub start_since: u64,
    pub requests: u64,
    /// Microseconds of the current request so far, or of the last one.
    #[serde(rename = "request duration")]
    pub request_duration: u64,
    #[serde(rename = "request method")]
    pub request_method: String,
    #[serde(rename = "request uri")]
    pub request_uri: String,
    #[serde(rename = "content length")]
    pub content_length: u64,
    /// Always "-" (php-fpm's HTTP auth user).
    pub user: String,
    pub script: String,
    /// CPU time over wall time of the last request, in percent; 0 while one
    /// runs (as php-fpm).
    #[serde(rename = "last request cpu")]
    pub last_request_cpu: f64,
    /// Peak RSS during the last request, in bytes; 0 while one runs.
    #[serde(rename = "last request memory")]
    pub last_request_memory: u64,
    /// Bytes.
    pub rss: u64,
    /// Bytes: shared pages count divided among the processes that map
    /// them, so forked workers sharing OPcache show what each really costs.
    pub pss: u64,
    /// Microseconds from spawn to ready: the process start (and the fork or
    /// exec), PHP's start, and in worker mode the app's boot.
    #[serde(rename = "start duration")]
    pub start_duration: u64,
}

/// An app on the server's `/status`: its pool's page plus where it is
/// routed and which PHP it runs (JSON only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AppPage {
    #[serde(flatten)]
    pub pool: PoolPage,
    #[serde(default)]
    pub route: String,
    #[serde(rename = "php version", default)]
    pub php_version: String,
}

/// The admin endpoint's `/status`: the server and every app (JSON only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerPage {
    pub version: String,
    /// starting, running, draining or stopping.
    pub phase: String,
    /// Seconds.
    pub uptime: u64,
    pub pid: u32,
    /// The configuration file.
    pub config: String,
    #[serde(rename = "last reload")]
    pub last_reload: ReloadPage,
    pub pools: Vec<AppPage>,
    /// `type: http` apps (left out when there are none).
    #[serde(rename = "http apps", skip_serializing_if = "Vec::is_empty")]
    pub http_apps: Vec<HttpAppPage>,
}

/// A `type: http` app on the server's `/status` (JSON only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpAppPage {
    pub name: String,
    pub route: String,
    /// Counts the sets of instances started (the first is 1); one per
    /// successful swap after that.
    pub generation: u64,
    pub swaps: u64,
    /// Milliseconds from the change seen to the new instances serving, for
    /// the last swap.
    #[serde(rename = "last swap ms")]
    pub last_swap_ms: u64,
    /// The last build, if the app has `build`.
    #[serde(rename = "last build", skip_serializing_if = "Option::is_none")]
    pub last_build: Option<BuildPage>,
    /// Why the last swap did not happen (the old instances kept serving).
    #[serde(rename = "last error", skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub instances: Vec<InstancePage>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildPage {
    pub ok: bool,
    /// Unix seconds.
    pub at: u64,
    #[serde(rename = "duration ms")]
    pub duration_ms: u64,
    /// Its standard output and error (the end, when long).
    pub output: String,
}

/// One instance of an http app.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstancePage {
    pub index: usize,
    pub generation: u64,
    /// starting, healthy, unhealthy, restarting, draining, stopped, failed.
    pub state: String,
    pub pid: u32,
    pub port: u16,
    pub restarts: u64,
    #[serde(rename = "in flight")]
    pub in_flight: u64,
    pub requests: u64,
}

/// The outcome of the last reload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReloadPage {
    /// Counts reloads; changes when one is done.
    pub seq: u64,
    pub ok: bool,
    /// Unix seconds; 0 before any reload.
    pub at: u64,
    pub errors: Vec<String>,
    /// Counts reloads begun: `seq + 1` while one runs (so a client that
    /// asks for a reload can tell the one that read the files before it
    /// asked from its own).
    pub begun: u64,
}

impl Default for ReloadPage {
    fn default() -> Self {
        Self {
            seq: 0,
            ok: true,
            at: 0,
            errors: Vec::new(),
            begun: 0,
        }
    }
}

/// One app, as status pages and the pool metrics see it: a snapshot, so
/// whoever reads it needs no live pool.
#[derive(Clone, Debug)]
pub struct AppStatus {
    /// The app's (worker's) name.
    pub name: String,
    /// As the config shows it ("/" for the root).
    pub route: String,
    pub php_version: String,
    pub pool: PoolStatus,
}

impl PoolPage {
    /// `status` at `now`, with a row per process if `processes`.
    pub fn new(status: &PoolStatus, processes: bool, now: SystemTime) -> Self {
        let count = |n: usize| n as u64;
        Self {
            pool: status.name.clone(),
            process_manager: status.manager.to_owned(),
            start_time: unix_seconds(status.started_at),
            start_since: since(status.started_at, now),
            accepted_conn: status.accepted,
            listen_queue: count(status.queue_len),
            max_listen_queue: count(status.max_queue_len),
            listen_queue_len: count(status.max_queue),
            idle_processes: count(status.idle),
            active_processes: count(status.busy),
            total_processes: count(status.total),
            max_active_processes: count(status.max_active),
            max_children_reached: status.max_children_reached,
            slow_requests: status.slow_requests,
            min_children: count(status.min_workers),
            max_children: count(status.max_workers),
            starting_processes: count(status.spawning),
            draining: status.draining,
            spawns: status.spawns,
            spawn_failures: status.spawn_failures,
            recycles: status.recycles,
            timeouts: status.timeouts,
            crashes: status.crashes,
            rejected_queue_full: status.rejected_queue_full,
            rejected_queue_timeout: status.rejected_queue_timeout,
            queued_requests: status.queued,
            // An integer over a power of ten is the nearest float to the
            // decimal, so the JSON shows at most 6 (3) decimals.
            queue_wait_total: status.queue_wait_total.as_micros() as f64 / 1e6,
            backoff_remaining: status.backoff_remaining.map_or(0, |d| d.as_millis()) as f64 / 1e3,
            zygote_pid: status.zygote.as_ref().map(|z| z.pid.unwrap_or(0)),
            zygote_starts: status.zygote.as_ref().map(|z| z.starts),
            zygote_rss: status.zygote.as_ref().map(|z| z.rss_bytes.unwrap_or(0)),
            zygote_pss: status.zygote.as_ref().map(|z| z.pss_bytes.unwrap_or(0)),
            processes: processes.then(|| {
                status
                    .workers
                    .iter()
                    .map(|worker| ProcessPage::new(worker, now))
                    .collect()
            }),
        }
    }
}

impl ProcessPage {
    pub fn new(worker: &WorkerStatus, now: SystemTime) -> Self {
        // The current request if one runs, else the last one.
        let request = worker.current.as_ref().or(worker.last.as_ref());
        let text = |get: fn(&pool::RequestInfo) -> &str| {
            request.map_or("-", |(info, _)| get(info)).to_owned()
        };
        // What the last request cost; zero while one runs (as php-fpm).
        let usage = match worker.current {
            Some(_) => pool::RequestUsage::default(),
            None => worker.last_usage.unwrap_or_default(),
        };
        Self {
            pid: worker.pid,
            state: worker.state.fpm_name().to_owned(),
            start_time: unix_seconds(worker.started_at),
            start_since: since(worker.started_at, now),
            requests: worker.requests,
            request_duration: request
                .map_or(0, |(_, d)| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            request_method: text(pool::RequestInfo::method),
            request_uri: text(pool::RequestInfo::uri),
            content_length: request.map_or(0, |(info, _)| info.content_length),
            user: "-".to_owned(),
            script: text(pool::RequestInfo::script),
            // Two decimals, as php-fpm.
            last_request_cpu: (usage.cpu_percent * 100.0).round() / 100.0,
            last_request_memory: usage.peak_memory_bytes,
            rss: worker.rss_bytes.unwrap_or(0),
            pss: worker.pss_bytes.unwrap_or(0),
            start_duration: u64::try_from(worker.started_in.as_micros()).unwrap_or(u64::MAX),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// php-fpm's status page of `status` in the format `query` asks for.
pub fn render_pool(status: &PoolStatus, query: &str) -> Page {
    let (format, full) = parse_query(query);
    // The HTML page lists the processes whenever there are any.
    let processes = full || (format == Format::Html && !status.workers.is_empty());
    let page = PoolPage::new(status, processes, SystemTime::now());
    match format {
        Format::Text => Page {
            content_type: "text/plain",
            body: render::text(&page),
        },
        Format::Json => Page {
            content_type: "application/json",
            body: json(&page),
        },
        Format::Html => Page {
            content_type: "text/html; charset=utf-8",
            body: render::html(&page),
        },
        Format::Xml => Page {
            content_type: "text/xml",
            body: render::xml(&page),
        },
        Format::OpenMetrics => Page {
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: render::openmetrics(&page),
        },
    }
}

/// A page as JSON.
pub fn json<T: Serialize>(page: &T) -> String {
    // Serialising these structs (strings, numbers, lists) cannot fail.
    serde_json::to_string(page).unwrap_or_default()
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn since(time: SystemTime, now: SystemTime) -> u64 {
    now.duration_since(time).map_or(0, |d| d.as_secs())
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

/// A JSON string literal.
pub fn quote(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pool::{RequestInfo, RequestUsage, WorkerState};
    use std::time::Duration;

    /// 26/Nov/2026:01:02:03 +0000.
    pub const STARTED: u64 = 1_795_651_200 + 3_723;

    /// A pool of two processes, one idle after a GET and one running a
    /// POST, made by hand.
    pub fn sample_pool() -> PoolStatus {
        let started_at = UNIX_EPOCH + Duration::from_secs(STARTED);
        let worker = |pid, state, current: bool| WorkerStatus {
            id: u64::from(pid),
            pid,
            state,
            started_at,
            started_in: Duration::from_micros(2500),
            requests: 7,
            current: current.then(|| {
                (
                    RequestInfo::new("POST", "/a?<b>", "/srv/a.php", 12),
                    Duration::from_micros(1500),
                )
            }),
            last: Some((
                RequestInfo::new("GET", "/ok.php", "/srv/ok.php", 0),
                Duration::from_micros(2500),
            )),
            last_usage: Some(RequestUsage {
                cpu_percent: 12.345,
                peak_memory_bytes: 30 << 20,
            }),
            rss_bytes: Some(25 << 20),
            pss_bytes: Some(9 << 20),
        };
        PoolStatus {
            name: "app".into(),
            manager: "dynamic",
            started_at,
            draining: false,
            min_workers: 2,
            max_workers: 5,
            max_queue: 64,
            idle: 1,
            busy: 1,
            spawning: 0,
            total: 2,
            queue_len: 3,
            max_queue_len: 4,
            max_active: 2,
            backoff_remaining: Some(Duration::from_millis(1250)),
            accepted: 11,
            completed: 10,
            spawns: 3,
            spawn_failures: 1,
            recycles: 2,
            timeouts: 1,
            crashes: 1,
            rejected_queue_full: 2,
            rejected_queue_timeout: 1,
            max_children_reached: 1,
            slow_requests: 2,
            queued: 5,
            queue_wait_total: Duration::from_micros(123_456),
            workers: vec![
                worker(4001, WorkerState::Idle, false),
                worker(4002, WorkerState::Busy, true),
            ],
            zygote: None,
        }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(STARTED + 90)
    }

    fn page(full: bool) -> PoolPage {
        PoolPage::new(&sample_pool(), full, now())
    }

    #[test]
    fn fpm_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(STARTED);
        assert_eq!(fpm_time(t), "26/Nov/2026:01:02:03 +0000");
        assert_eq!(fpm_time(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
    }

    #[test]
    fn json_strings() {
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }

    #[test]
    fn query_forms() {
        assert_eq!(parse_query("json&full"), (Format::Json, true));
        assert_eq!(parse_query(""), (Format::Text, false));
        assert_eq!(parse_query("full&html"), (Format::Html, true));
    }

    /// A pool of forked workers shows its zygote; an exec'd pool does not.
    #[test]
    fn an_embed_pool_shows_its_zygote() {
        assert!(!json(&page(false)).contains("zygote"));
        let mut status = sample_pool();
        status.zygote = Some(pool::ZygoteStatus {
            pid: Some(4000),
            starts: 2,
            rss_bytes: Some(40 << 20),
            pss_bytes: None,
        });
        let body = json(&PoolPage::new(&status, false, now()));
        assert!(
            body.ends_with(
                r#""backoff remaining":1.25,"zygote pid":4000,"zygote starts":2,"zygote rss":41943040,"zygote pss":0}"#
            ),
            "{body}"
        );
        let text = render::text(&PoolPage::new(&status, false, now()));
        assert!(text.contains("zygote starts:        2\n"), "{text}");
    }

    /// The JSON that php-fpm's exporters and `tqserver status` read: every
    /// name and type as before the page became a struct, in the same order.
    #[test]
    fn json_has_php_fpm_names_and_types_in_order() {
        let body = json(&page(true));
        let expected = concat!(
            r#"{"pool":"app","process manager":"dynamic","start time":1795654923,"start since":90,"#,
            r#""accepted conn":11,"listen queue":3,"max listen queue":4,"listen queue len":64,"#,
            r#""idle processes":1,"active processes":1,"total processes":2,"max active processes":2,"#,
            r#""max children reached":1,"slow requests":2,"min children":2,"max children":5,"#,
            r#""starting processes":0,"draining":false,"spawns":3,"spawn failures":1,"recycles":2,"#,
            r#""timeouts":1,"crashes":1,"rejected queue full":2,"rejected queue timeout":1,"#,
            r#""queued requests":5,"queue wait total":0.123456,"backoff remaining":1.25,"#,
            r#""processes":[{"pid":4001,"state":"Idle","start time":1795654923,"start since":90,"#,
            r#""requests":7,"request duration":2500,"request method":"GET","request uri":"/ok.php","#,
            r#""content length":0,"user":"-","script":"/srv/ok.php","last request cpu":12.35,"#,
            r#""last request memory":31457280,"rss":26214400,"pss":9437184,"start duration":2500},"#,
            r#"{"pid":4002,"state":"Running","start time":1795654923,"start since":90,"#,
            r#""requests":7,"request duration":1500,"request method":"POST","request uri":"/a?<b>","#,
            r#""content length":12,"user":"-","script":"/srv/a.php","last request cpu":0.0,"#,
            r#""last request memory":0,"rss":26214400,"pss":9437184,"start duration":2500}]}"#,
        );
        assert_eq!(body, expected);
        // Without `full`, no processes.
        assert!(!json(&page(false)).contains("processes\":["));
        let page: PoolPage = serde_json::from_str(&body).unwrap();
        assert_eq!(page, self::page(true));
    }

    #[test]
    fn text_is_php_fpm_s_layout_with_every_field() {
        let text = render::text(&page(true));
        assert!(text.starts_with("pool:                 app\n"), "{text}");
        assert!(text.contains("\nprocess manager:      dynamic\n"), "{text}");
        assert!(text.contains("\nstart time:           26/Nov/2026:01:02:03 +0000\n"));
        assert!(text.contains("\naccepted conn:        11\n"), "{text}");
        // tqserver's fields too; a long name keeps a space.
        assert!(text.contains("\nrejected queue timeout: 1\n"), "{text}");
        assert!(text.contains("\nbackoff remaining:    1.25\n"), "{text}");
        assert_eq!(text.matches("************************").count(), 2);
        assert!(text.contains("\nrequest URI:          /a?<b>\n"), "{text}");
        assert!(text.contains("\nlast request cpu:     12.35\n"), "{text}");
        assert!(!render::text(&page(false)).contains("pid:"));
    }

    #[test]
    fn xml_tags_are_dashed_names() {
        let xml = render::xml(&page(true));
        assert!(xml.starts_with("<?xml version=\"1.0\" ?>\n<status>\n<pool>app</pool>\n"));
        assert!(xml.contains("<process-manager>dynamic</process-manager>\n"));
        assert!(xml.contains("<start-time>1795654923</start-time>\n"));
        assert!(xml.contains("<listen-queue-len>64</listen-queue-len>\n"));
        assert!(xml.contains("<spawn-failures>1</spawn-failures>\n"));
        assert!(xml.contains("<processes>\n<process><pid>4001</pid><state>Idle</state>"));
        assert!(
            xml.contains("<request-uri>/a?&lt;b&gt;</request-uri>"),
            "{xml}"
        );
        assert_eq!(xml.matches("</process>\n").count(), 2);
        assert!(xml.ends_with("</processes>\n</status>\n"), "{xml}");
    }

    #[test]
    fn html_has_a_row_per_field_and_per_process() {
        let html = render::html(&page(true));
        assert!(html.contains("<title>tqserver status: app</title>"));
        assert!(html.contains("<tr><th>accepted conn</th><td>11</td></tr>"));
        assert!(html.contains("<tr><th>start time</th><td>26/Nov/2026:01:02:03 +0000</td></tr>"));
        assert!(html.contains("<th>pid</th><th>state</th>"), "{html}");
        assert!(html.contains("<th>request URI</th>"), "{html}");
        assert!(html.contains("<tr class=\"Running\"><td>4002</td><td>Running</td>"));
        assert!(html.contains("<td>/a?&lt;b&gt;</td>"), "{html}");
        // Always the processes, even without `full`.
        let page = render_pool(&sample_pool(), "html");
        assert_eq!(page.content_type, "text/html; charset=utf-8");
        assert!(page.body.contains("<tr class=\"Idle\"><td>4001</td>"));
    }

    #[test]
    fn openmetrics_has_php_fpm_s_series_only() {
        let om = render::openmetrics(&page(false));
        assert!(om.starts_with("# HELP phpfpm_up Whether the pool can be reached.\n# TYPE phpfpm_up gauge\nphpfpm_up 1\n"));
        assert!(om.contains(
            "# TYPE phpfpm_accepted_connections counter\nphpfpm_accepted_connections_total 11\n"
        ));
        assert!(om.contains("phpfpm_listen_queue_length 64\n"));
        assert!(om.contains("phpfpm_start_since 90\n"));
        assert!(om.contains("phpfpm_slow_requests_total 2\n"));
        assert_eq!(om.matches("# TYPE").count(), 12, "{om}");
        assert!(!om.contains("spawn"), "{om}");
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn render_pool_picks_format_and_content_type() {
        let status = sample_pool();
        let json = render_pool(&status, "json&full");
        assert_eq!(json.content_type, "application/json");
        let value: serde_json::Value = serde_json::from_str(&json.body).unwrap();
        assert_eq!(value["processes"][1]["state"], "Running");
        assert_eq!(render_pool(&status, "").content_type, "text/plain");
        assert_eq!(render_pool(&status, "xml").content_type, "text/xml");
        assert!(
            render_pool(&status, "openmetrics")
                .content_type
                .starts_with("application/openmetrics-text")
        );
    }

    /// What each process row shows of a running and an idle worker.
    #[test]
    fn process_rows_show_the_current_or_last_request() {
        let pool = sample_pool();
        let idle = ProcessPage::new(&pool.workers[0], now());
        assert_eq!(
            (idle.request_method.as_str(), idle.request_duration),
            ("GET", 2500)
        );
        assert_eq!(idle.last_request_memory, 30 << 20);
        let running = ProcessPage::new(&pool.workers[1], now());
        assert_eq!(
            (running.request_uri.as_str(), running.content_length),
            ("/a?<b>", 12)
        );
        // What the last request cost is hidden while one runs (php-fpm).
        assert_eq!(
            (running.last_request_cpu, running.last_request_memory),
            (0.0, 0)
        );
        let fresh = WorkerStatus {
            current: None,
            last: None,
            last_usage: None,
            rss_bytes: None,
            ..pool.workers[0].clone()
        };
        let fresh = ProcessPage::new(&fresh, now());
        assert_eq!(
            (
                fresh.request_method.as_str(),
                fresh.script.as_str(),
                fresh.rss
            ),
            ("-", "-", 0)
        );
    }
}
