//! Prometheus metrics, labelled by worker (app).
//!
//! Request-path metrics (requests by status, durations, queue waits,
//! connection gauges) are updated as requests finish, through handles each
//! app resolves once, so a request never builds a label set. Everything the
//! pools already count (processes by state, queue length, spawns, recycles,
//! timeouts, crashes, rejections, RSS) is read from the pools at scrape time
//! by a collector, so it costs nothing between scrapes. The collector reads
//! them through a [`PoolSource`] of snapshots, so it needs no live pool.

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::status::{AppStatus, HttpAppPage};

/// The `worker` label: an app's name (the label keeps its old name: dashboards
/// and alerts select on it).
type AppLabel = [(&'static str, String); 1];
type CodeLabels = [(&'static str, String); 2];
type StoreLabels = [(&'static str, String); 2];
/// A metric read off a pool's status: name, help, how to read it.
type StatusField<T> = (&'static str, &'static str, fn(&pool::PoolStatus) -> T);

/// Request latency buckets, 1 ms to 60 s.
const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];
/// Queue wait buckets, 0.1 ms to 30 s.
const WAIT_BUCKETS: [f64; 14] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    requests: Family<CodeLabels, Counter>,
    durations: Family<AppLabel, Histogram>,
    queue_waits: Family<AppLabel, Histogram>,
    fastcgi_connections: Family<AppLabel, Gauge>,
    buffered_responses: Family<AppLabel, Counter>,
    buffered_bytes: Family<StoreLabels, Counter>,
    buffer_held: Family<AppLabel, Gauge>,
    pub http_connections: Gauge,
    pub reloads: Counter,
    pub reload_failures: Counter,
}

/// What the metrics count of response buffering (per app).
#[derive(Clone, Default)]
pub struct BufferMetrics {
    /// Responses that outlived their first read and were buffered.
    pub responses: Counter,
    /// Bytes held in memory, and written to temporary files.
    pub memory_bytes: Counter,
    pub file_bytes: Counter,
    /// Bytes held right now.
    pub held_bytes: Gauge,
}

/// One app's request-path handles.
pub struct AppMetrics {
    app: String,
    requests: Family<CodeLabels, Counter>,
    /// By status code 100..=599, created on first use.
    by_code: Box<[OnceLock<Counter>]>,
    pub duration: Histogram,
    pub queue_wait: Histogram,
    pub fastcgi_connections: Gauge,
    pub response_buffer: BufferMetrics,
}

impl AppMetrics {
    pub fn count(&self, status: u16) {
        let counter = match self.by_code.get(status.wrapping_sub(100) as usize) {
            Some(slot) => slot.get_or_init(|| self.counter_for(status)),
            None => &self.counter_for(status),
        };
        counter.inc();
    }

    fn counter_for(&self, status: u16) -> Counter {
        self.requests
            .get_or_create(&[("worker", self.app.clone()), ("code", status.to_string())])
            .clone()
    }
}

impl Metrics {
    /// `pools` is read at scrape time for the per-pool numbers.
    pub fn new(pools: impl PoolSource, info: BuildInfo) -> Arc<Self> {
        let mut registry = Registry::with_prefix("tqserver");
        let requests = Family::<CodeLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by worker (app) and HTTP status code",
            requests.clone(),
        );
        let durations = Family::<AppLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(DURATION_BUCKETS)
        });
        registry.register_with_unit(
            "request_duration",
            "Time from request to complete response",
            Unit::Seconds,
            durations.clone(),
        );
        let queue_waits =
            Family::<AppLabel, Histogram>::new_with_constructor(|| Histogram::new(WAIT_BUCKETS));
        registry.register_with_unit(
            "queue_wait",
            "Time requests waited for a free worker",
            Unit::Seconds,
            queue_waits.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "Open HTTP connections",
            http_connections.clone(),
        );
        let fastcgi_connections = Family::<AppLabel, Gauge>::default();
        registry.register(
            "fastcgi_connections",
            "Open connections on an app's FastCGI listener",
            fastcgi_connections.clone(),
        );
        let reloads = Counter::default();
        registry.register(
            "config_reloads",
            "Configuration reloads applied",
            reloads.clone(),
        );
        let reload_failures = Counter::default();
        registry.register(
            "config_reload_failures",
            "Configuration reloads refused (invalid configuration)",
            reload_failures.clone(),
        );
        let buffered_responses = Family::<AppLabel, Counter>::default();
        registry.register(
            "responses_buffered",
            "PHP responses held for a client slower than PHP (the worker was freed before the client had read them)",
            buffered_responses.clone(),
        );
        let buffered_bytes = Family::<StoreLabels, Counter>::default();
        registry.register_with_unit(
            "response_buffered",
            "Bytes of PHP responses held for slow clients, by where they were held (memory or file)",
            Unit::Bytes,
            buffered_bytes.clone(),
        );
        let buffer_held = Family::<AppLabel, Gauge>::default();
        registry.register_with_unit(
            "response_buffer_held",
            "Bytes of PHP responses held for clients right now",
            Unit::Bytes,
            buffer_held.clone(),
        );
        registry.register_collector(Box::new(PoolCollector {
            pools: Box::new(pools),
            info,
        }));
        Arc::new(Self {
            registry,
            requests,
            durations,
            queue_waits,
            fastcgi_connections,
            buffered_responses,
            buffered_bytes,
            buffer_held,
            http_connections,
            reloads,
            reload_failures,
        })
    }

    pub fn for_app(&self, app: &str) -> AppMetrics {
        let label = [("worker", app.to_owned())];
        // One statement each: `get_or_create` returns a read guard, and a
        // second call on the same family while it lives would deadlock.
        let store = |store: &str| {
            let labels = [("worker", app.to_owned()), ("store", store.to_owned())];
            self.buffered_bytes.get_or_create(&labels).clone()
        };
        let memory_bytes = store("memory");
        let file_bytes = store("file");
        let response_buffer = BufferMetrics {
            responses: self.buffered_responses.get_or_create(&label).clone(),
            memory_bytes,
            file_bytes,
            held_bytes: self.buffer_held.get_or_create(&label).clone(),
        };
        AppMetrics {
            app: app.to_owned(),
            requests: self.requests.clone(),
            by_code: (100..600).map(|_| OnceLock::new()).collect(),
            duration: self.durations.get_or_create(&label).clone(),
            queue_wait: self.queue_waits.get_or_create(&label).clone(),
            fastcgi_connections: self.fastcgi_connections.get_or_create(&label).clone(),
            response_buffer,
        }
    }

    /// Prometheus text format (0.0.4), or OpenMetrics when asked for.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let result = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        if result.is_err() {
            out.clear();
        }
        out
    }
}

/// Version facts for `tqserver_build_info`.
pub struct BuildInfo {
    pub version: &'static str,
}

/// Where the collector finds the pools at scrape time.
pub trait PoolSource: Send + Sync + 'static {
    /// A snapshot of every app.
    fn pools(&self) -> Vec<AppStatus>;
    /// A snapshot of every `type: http` app.
    fn http_apps(&self) -> Vec<HttpAppPage> {
        Vec::new()
    }
}

/// The `type: http` apps' series: instances by state, requests in flight,
/// restarts of the running instances, swaps, and whether the last build
/// passed.
fn http_app_families(
    encoder: &mut DescriptorEncoder,
    apps: &[HttpAppPage],
) -> Result<(), std::fmt::Error> {
    let label = |name: &str| [("worker", name.to_owned())];
    let mut states = Vec::new();
    for app in apps {
        for state in ["starting", "healthy", "unhealthy", "restarting", "draining"] {
            let count = app.instances.iter().filter(|i| i.state == state).count();
            states.push((
                [("worker", app.name.clone()), ("state", state.to_owned())],
                ConstGauge::new(count as i64),
            ));
        }
    }
    family(
        encoder,
        "http_app_instances",
        "Instances of http apps by state (healthy ones take requests)",
        None,
        states,
    )?;
    type HttpAppField = (&'static str, &'static str, fn(&HttpAppPage) -> i64);
    let gauges: [HttpAppField; 3] = [
        (
            "http_app_in_flight",
            "Requests in flight to an http app's instances",
            |app| app.instances.iter().map(|i| i.in_flight as i64).sum(),
        ),
        (
            "http_app_restarts",
            "Restarts (crash or failed health checks) of an http app's running instances",
            |app| app.instances.iter().map(|i| i.restarts as i64).sum(),
        ),
        (
            "http_app_build_ok",
            "1 if an http app's last build passed (or it has none), else 0",
            |app| i64::from(app.last_build.as_ref().is_none_or(|b| b.ok)),
        ),
    ];
    for (name, help, get) in gauges {
        let samples = apps
            .iter()
            .map(|app| (label(&app.name), ConstGauge::new(get(app))))
            .collect();
        family(encoder, name, help, None, samples)?;
    }
    let swaps = apps
        .iter()
        .map(|app| (label(&app.name), ConstCounter::new(app.swaps)))
        .collect();
    family(
        encoder,
        "http_app_swaps",
        "Times an http app switched to new instances after a change",
        None,
        swaps,
    )
}

struct PoolCollector {
    pools: Box<dyn PoolSource>,
    info: BuildInfo,
}

impl std::fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolCollector")
    }
}

/// Writes one metric family whose samples are (labels, value).
fn family<M: EncodeMetric, L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: Vec<(L, M)>,
) -> Result<(), std::fmt::Error> {
    let Some((_, first)) = samples.first() else {
        return Ok(());
    };
    let metric_type = first.metric_type();
    let mut metric = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, value) in &samples {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let apps = self.pools.pools();
        let label = |name: &str| [("worker", name.to_owned())];

        let mut build = Vec::new();
        for app in &apps {
            build.push((
                [
                    ("version", self.info.version.to_owned()),
                    ("worker", app.name.clone()),
                    ("php_version", app.php_version.clone()),
                ],
                ConstGauge::new(1i64),
            ));
        }
        if build.is_empty() {
            build.push((
                [
                    ("version", self.info.version.to_owned()),
                    ("worker", String::new()),
                    ("php_version", String::new()),
                ],
                ConstGauge::new(1i64),
            ));
        }
        family(
            &mut encoder,
            "build_info",
            "tqserver version and the PHP version of each app",
            None,
            build,
        )?;

        let mut states = Vec::new();
        for app in &apps {
            let (name, status) = (&app.name, &app.pool);
            let stopping = status.total.saturating_sub(status.idle + status.busy);
            for (state, value) in [
                ("idle", status.idle),
                ("busy", status.busy),
                ("starting", status.spawning),
                ("stopping", stopping),
            ] {
                states.push((
                    [("worker", name.clone()), ("state", state.to_owned())],
                    ConstGauge::new(value as i64),
                ));
            }
        }
        family(
            &mut encoder,
            "workers",
            "Worker processes by state",
            None,
            states,
        )?;

        let gauges: [StatusField<i64>; 5] = [
            ("queue_length", "Requests waiting for a worker", |s| {
                s.queue_len as i64
            }),
            (
                "queue_length_max",
                "Most requests ever waiting for a worker",
                |s| s.max_queue_len as i64,
            ),
            (
                "workers_min",
                "Configured minimum of worker processes",
                |s| s.min_workers as i64,
            ),
            (
                "workers_max",
                "Configured maximum of worker processes",
                |s| s.max_workers as i64,
            ),
            (
                "workers_max_active",
                "Most workers ever busy at once",
                |s| s.max_active as i64,
            ),
        ];
        for (name, help, get) in gauges {
            let samples = apps
                .iter()
                .map(|app| (label(&app.name), ConstGauge::new(get(&app.pool))))
                .collect();
            family(&mut encoder, name, help, None, samples)?;
        }

        let counters: [StatusField<u64>; 8] = [
            ("worker_spawns", "Worker processes started", |s| s.spawns),
            (
                "worker_spawn_failures",
                "Worker processes that failed to start",
                |s| s.spawn_failures,
            ),
            (
                "worker_recycles",
                "Workers retired after max_requests",
                |s| s.recycles,
            ),
            (
                "worker_timeouts",
                "Requests killed at request_timeout",
                |s| s.timeouts,
            ),
            ("worker_crashes", "Workers that exited unexpectedly", |s| {
                s.crashes
            }),
            (
                "max_workers_reached",
                "Times every worker was busy at max_workers",
                |s| s.max_children_reached,
            ),
            (
                "slow_requests",
                "Requests slower than the slow-log threshold",
                |s| s.slow_requests,
            ),
            (
                "pool_requests",
                "Requests that asked the pool for a worker",
                |s| s.accepted,
            ),
        ];
        for (name, help, get) in counters {
            let samples = apps
                .iter()
                .map(|app| (label(&app.name), ConstCounter::new(get(&app.pool))))
                .collect();
            family(&mut encoder, name, help, None, samples)?;
        }

        let mut rejections = Vec::new();
        for app in &apps {
            for (reason, value) in [
                ("queue_full", app.pool.rejected_queue_full),
                ("queue_timeout", app.pool.rejected_queue_timeout),
            ] {
                rejections.push((
                    [("worker", app.name.clone()), ("reason", reason.to_owned())],
                    ConstCounter::new(value),
                ));
            }
        }
        family(
            &mut encoder,
            "rejections",
            "Requests refused with 503 because the pool was saturated",
            None,
            rejections,
        )?;

        let rss = apps
            .iter()
            .map(|app| {
                let total: u64 = app.pool.workers.iter().filter_map(|w| w.rss_bytes).sum();
                (label(&app.name), ConstGauge::new(total as i64))
            })
            .collect();
        family(
            &mut encoder,
            "worker_rss",
            "Resident memory of all worker processes",
            Some(&Unit::Bytes),
            rss,
        )?;
        let rss_max = apps
            .iter()
            .map(|app| {
                let max = app
                    .pool
                    .workers
                    .iter()
                    .filter_map(|w| w.rss_bytes)
                    .max()
                    .unwrap_or(0);
                (label(&app.name), ConstGauge::new(max as i64))
            })
            .collect();
        family(
            &mut encoder,
            "worker_rss_max",
            "Resident memory of the largest worker process",
            Some(&Unit::Bytes),
            rss_max,
        )?;

        let start = apps
            .iter()
            .map(|app| {
                let slowest = app
                    .pool
                    .workers
                    .iter()
                    .map(|w| w.started_in.as_secs_f64())
                    .fold(0.0, f64::max);
                (label(&app.name), ConstGauge::new(slowest))
            })
            .collect();
        family(
            &mut encoder,
            "worker_start_max",
            "Slowest start among the running workers, from spawn to ready (in worker mode: the app's boot)",
            Some(&Unit::Seconds),
            start,
        )?;
        let pss = apps
            .iter()
            .map(|app| {
                let total: u64 = app.pool.workers.iter().filter_map(|w| w.pss_bytes).sum();
                (label(&app.name), ConstGauge::new(total as i64))
            })
            .collect();
        family(
            &mut encoder,
            "worker_pss",
            "Proportional memory of all worker processes (shared pages divided among their users)",
            Some(&Unit::Bytes),
            pss,
        )?;
        let zygotes = apps
            .iter()
            .filter_map(|app| {
                let zygote = app.pool.zygote.as_ref()?;
                Some((
                    label(&app.name),
                    ConstGauge::new(zygote.pss_bytes.unwrap_or(0) as i64),
                ))
            })
            .collect();
        family(
            &mut encoder,
            "zygote_pss",
            "Proportional memory of the zygote that forks the workers (php.runtime: embed)",
            Some(&Unit::Bytes),
            zygotes,
        )?;

        let own_rss = pool::stats::rss_bytes(std::process::id()).unwrap_or(0);
        family(
            &mut encoder,
            "process_resident_memory",
            "Resident memory of tqserver itself (not its workers)",
            Some(&Unit::Bytes),
            vec![(
                Vec::<(String, String)>::new(),
                ConstGauge::new(own_rss as i64),
            )],
        )?;
        http_app_families(&mut encoder, &self.pools.http_apps())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One app whose pool is made by hand.
    struct OneApp;

    impl PoolSource for OneApp {
        fn pools(&self) -> Vec<AppStatus> {
            vec![AppStatus {
                name: "app".into(),
                route: "/".into(),
                php_version: "8.4".into(),
                pool: crate::status::tests::sample_pool(),
            }]
        }
    }

    fn metrics() -> Arc<Metrics> {
        Metrics::new(OneApp, BuildInfo { version: "1.2.3" })
    }

    #[test]
    fn pool_numbers_are_read_from_the_source_at_scrape_time() {
        let text = metrics().encode(false);
        for line in [
            r#"tqserver_build_info{version="1.2.3",worker="app",php_version="8.4"} 1"#,
            r#"tqserver_workers{worker="app",state="idle"} 1"#,
            r#"tqserver_workers{worker="app",state="busy"} 1"#,
            r#"tqserver_workers{worker="app",state="stopping"} 0"#,
            r#"tqserver_queue_length{worker="app"} 3"#,
            r#"tqserver_workers_max{worker="app"} 5"#,
            r#"tqserver_worker_spawns_total{worker="app"} 3"#,
            r#"tqserver_pool_requests_total{worker="app"} 11"#,
            r#"tqserver_rejections_total{worker="app",reason="queue_full"} 2"#,
            r#"tqserver_worker_rss_bytes{worker="app"} 52428800"#,
            r#"tqserver_worker_rss_max_bytes{worker="app"} 26214400"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn request_path_metrics_carry_the_app_label() {
        let metrics = metrics();
        let app = metrics.for_app("app");
        app.count(200);
        app.count(200);
        app.count(503);
        app.count(1000);
        let text = metrics.encode(true);
        assert!(text.contains(r#"tqserver_requests_total{worker="app",code="200"} 2"#));
        assert!(text.contains(r#"tqserver_requests_total{worker="app",code="503"} 1"#));
        assert!(text.contains(r#"tqserver_requests_total{worker="app",code="1000"} 1"#));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
