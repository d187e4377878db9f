//! What happens when a request finishes: metrics, the access log and the
//! slow log.
//!
//! An [`Observation`] is made when a request is routed and finished once the
//! response is complete: at once for bodies already in memory, or when a
//! streamed PHP body ends (or its client goes away). The slow log needs no
//! ptrace: tqserver times every request itself, so it works in containers.
//!
//! Log files are buffered and flushed four times a second (and on
//! shutdown); SIGUSR1 reopens them after logrotate moved them.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri, Version};
use tokio::time::Instant;
use tracing::warn;

use crate::config::{AccessLogConfig, SlowLogConfig};
use crate::metrics::{AppMetrics, Metrics};
use crate::status::{fpm_time, quote};

/// A log file (or standard output) written through a buffer.
pub struct LogSink {
    path: Option<PathBuf>,
    writer: Mutex<Box<dyn Write + Send>>,
}

impl LogSink {
    pub fn open(path: Option<PathBuf>) -> std::io::Result<Arc<Self>> {
        let writer = Self::writer(path.as_deref())?;
        Ok(Arc::new(Self {
            path,
            writer: Mutex::new(writer),
        }))
    }

    fn writer(path: Option<&std::path::Path>) -> std::io::Result<Box<dyn Write + Send>> {
        Ok(match path {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                Box::new(std::io::BufWriter::with_capacity(64 * 1024, file))
            }
            None => Box::new(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stdout(),
            )),
        })
    }

    pub fn write_line(&self, line: &str) {
        if let Ok(mut writer) = self.writer.lock() {
            let _ = writer.write_all(line.as_bytes());
            let _ = writer.write_all(b"\n");
        }
    }

    pub fn flush(&self) {
        if let Ok(mut writer) = self.writer.lock() {
            let _ = writer.flush();
        }
    }

    /// Reopens the file at its path (logrotate); stdout stays stdout.
    pub fn reopen(&self) -> std::io::Result<()> {
        if self.path.is_none() {
            return Ok(());
        }
        let fresh = Self::writer(self.path.as_deref())?;
        if let Ok(mut writer) = self.writer.lock() {
            let _ = writer.flush();
            *writer = fresh;
        }
        Ok(())
    }
}

pub struct AccessLog {
    json: bool,
    sink: Arc<LogSink>,
}

/// Which requests are slow and where they are logged: the server's
/// `logging.slow_log`, or an app's own `slow_log` over it.
#[derive(Clone, Default)]
pub struct SlowLog {
    /// Requests that take at least this long are logged; None: off.
    pub threshold: Option<Duration>,
    /// None: the server log.
    sink: Option<Arc<LogSink>>,
}

/// Server-wide observation state.
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    /// Used by apps without an access log of their own.
    pub access_log: Option<Arc<AccessLog>>,
    /// The server's slow log, used by apps without one of their own.
    pub slow_log: SlowLog,
    /// Every sink, for flushing and reopening.
    sinks: Mutex<Vec<Arc<LogSink>>>,
    /// Requests that matched no app.
    pub unrouted: AppMetrics,
}

impl Telemetry {
    pub fn new(
        metrics: Arc<Metrics>,
        access_log: Option<&AccessLogConfig>,
        slow_threshold: Option<Duration>,
        slow_log_file: Option<PathBuf>,
    ) -> std::io::Result<Arc<Self>> {
        let unrouted = metrics.for_app("");
        let telemetry = Self {
            metrics,
            access_log: None,
            slow_log: SlowLog::default(),
            sinks: Mutex::new(Vec::new()),
            unrouted,
        };
        let access_log = access_log.map(|c| telemetry.access_log(c)).transpose()?;
        let sink = slow_log_file
            .map(|path| telemetry.sink(Some(path)))
            .transpose()?;
        Ok(Arc::new(Self {
            access_log,
            slow_log: SlowLog {
                threshold: slow_threshold,
                sink,
            },
            ..telemetry
        }))
    }

    /// An app's slow log: its own settings over the server's.
    pub fn slow_log(&self, config: Option<&SlowLogConfig>) -> std::io::Result<SlowLog> {
        let Some(config) = config else {
            return Ok(self.slow_log.clone());
        };
        if !config.enabled {
            return Ok(SlowLog::default());
        }
        Ok(SlowLog {
            threshold: config.threshold.or(self.slow_log.threshold),
            sink: match &config.file {
                Some(path) => Some(self.sink(Some(path.clone()))?),
                None => self.slow_log.sink.clone(),
            },
        })
    }

    fn sink(&self, path: Option<PathBuf>) -> std::io::Result<Arc<LogSink>> {
        let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = sinks.iter().find(|s| s.path == path) {
            return Ok(existing.clone());
        }
        let sink = LogSink::open(path)?;
        sinks.push(sink.clone());
        Ok(sink)
    }

    /// An access log writer for `config` (shared with any other user of the
    /// same file).
    pub fn access_log(&self, config: &AccessLogConfig) -> std::io::Result<Arc<AccessLog>> {
        Ok(Arc::new(AccessLog {
            json: config.json,
            sink: self.sink(config.file.clone())?,
        }))
    }

    pub fn flush(&self) {
        for sink in self.sinks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            sink.flush();
        }
    }

    pub fn reopen(&self) -> std::io::Result<()> {
        for sink in self.sinks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            sink.reopen()?;
        }
        Ok(())
    }

    /// Flushes the log buffers four times a second until `stop`.
    pub async fn flush_periodically(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => self.flush(),
            }
        }
        self.flush();
    }
}

/// The request line, as each front end has it.
pub enum RequestLine {
    Http {
        method: Method,
        uri: Uri,
        version: Version,
        referer: Option<HeaderValue>,
        user_agent: Option<HeaderValue>,
    },
    FastCgi {
        method: String,
        uri: String,
    },
}

/// What a request's observation needs of its app (its name, metric
/// handles, logs and pool counters), so observing needs no running `App`.
pub struct AppTelemetry {
    pub name: String,
    pub metrics: AppMetrics,
    /// The app's own access log, if it has one (else the server's).
    pub access_log: Option<Arc<AccessLog>>,
    /// The app's slow log (its own settings over the server's).
    pub slow_log: SlowLog,
    /// Counts slow requests on the pool's status page (PHP apps).
    pub pool: Option<pool::WorkerPool>,
}

/// "HTTP/1.1" and the like, as SERVER_PROTOCOL and the access log write it.
pub fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}

/// One request on its way through tqserver.
pub struct Observation {
    telemetry: Arc<Telemetry>,
    app: Option<Arc<AppTelemetry>>,
    started: Instant,
    peer: Option<SocketAddr>,
    line: RequestLine,
    /// The worker process that ran it, if PHP did.
    pub pid: Option<u32>,
    /// What PHP was asked to run (for the slow log).
    pub request: Option<pool::RequestInfo>,
}

impl Observation {
    pub fn new(
        telemetry: Arc<Telemetry>,
        app: Option<Arc<AppTelemetry>>,
        peer: Option<SocketAddr>,
        line: RequestLine,
    ) -> Self {
        Self {
            telemetry,
            app,
            started: Instant::now(),
            peer,
            line,
            pid: None,
            request: None,
        }
    }

    /// The app that took the request, once known.
    pub fn set_app(&mut self, app: Arc<AppTelemetry>) {
        self.app = Some(app);
    }

    pub fn queue_waited(&self, wait: Duration) {
        if let Some(app) = &self.app {
            app.metrics.queue_wait.observe(wait.as_secs_f64());
        }
    }

    /// The response is complete (or its client is gone).
    pub fn finish(self, status: u16, bytes: u64) {
        let duration = self.started.elapsed();
        let metrics = match &self.app {
            Some(app) => &app.metrics,
            None => &self.telemetry.unrouted,
        };
        metrics.count(status);
        metrics.duration.observe(duration.as_secs_f64());
        let slow_log = match &self.app {
            Some(app) => &app.slow_log,
            None => &self.telemetry.slow_log,
        };
        if let Some(threshold) = slow_log.threshold
            && duration >= threshold
        {
            self.slow(slow_log, status, duration);
        }
        let access_log = self
            .app
            .as_ref()
            .and_then(|app| app.access_log.as_ref())
            .or(self.telemetry.access_log.as_ref());
        if let Some(log) = access_log {
            let line = if log.json {
                self.json_line(status, bytes, duration)
            } else {
                self.combined_line(status, bytes)
            };
            log.sink.write_line(&line);
        }
    }

    fn method_and_uri(&self) -> (&str, &str) {
        match &self.line {
            RequestLine::Http { method, uri, .. } => (
                method.as_str(),
                uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/"),
            ),
            RequestLine::FastCgi { method, uri } => (method, uri),
        }
    }

    fn slow(&self, slow_log: &SlowLog, status: u16, duration: Duration) {
        let app = self.app.as_ref().map(|a| a.name.as_str()).unwrap_or("");
        if let Some(pool) = self.app.as_ref().and_then(|app| app.pool.as_ref()) {
            pool.record_slow_request();
        }
        let (method, uri) = self.method_and_uri();
        let script = self.request.as_ref().map_or("-", |r| r.script());
        let pid = self.pid.unwrap_or(0);
        let duration_ms = duration.as_secs_f64() * 1000.0;
        let client = self.peer.map_or("-".to_owned(), |p| p.ip().to_string());
        match &slow_log.sink {
            Some(sink) => sink.write_line(&format!(
                "[{}] slow request: worker={app} pid={pid} client={client} method={method} uri={uri} script={script} duration_ms={duration_ms:.1} status={status}",
                fpm_time(SystemTime::now())
            )),
            None => warn!(
                worker = %app,
                pid,
                client = %client,
                method = %method,
                uri = %uri,
                script = %script,
                duration_ms = format_args!("{duration_ms:.1}"),
                status,
                "slow request"
            ),
        }
    }

    fn combined_line(&self, status: u16, bytes: u64) -> String {
        let (method, uri) = self.method_and_uri();
        let (protocol, referer, agent) = match &self.line {
            RequestLine::Http {
                version,
                referer,
                user_agent,
                ..
            } => (
                protocol_name(*version),
                header_text(referer.as_ref()),
                header_text(user_agent.as_ref()),
            ),
            RequestLine::FastCgi { .. } => ("FCGI", "-".into(), "-".into()),
        };
        format!(
            "{} - - [{}] \"{method} {} {protocol}\" {status} {bytes} \"{referer}\" \"{agent}\"",
            self.peer.map_or("-".to_owned(), |p| p.ip().to_string()),
            fpm_time(SystemTime::now()),
            escape_log(uri),
        )
    }

    fn json_line(&self, status: u16, bytes: u64, duration: Duration) -> String {
        let (method, uri) = self.method_and_uri();
        let (referer, agent) = match &self.line {
            RequestLine::Http {
                referer,
                user_agent,
                ..
            } => (
                header_text(referer.as_ref()),
                header_text(user_agent.as_ref()),
            ),
            RequestLine::FastCgi { .. } => ("-".into(), "-".into()),
        };
        format!(
            "{{\"time\":{},\"worker\":{},\"remote_addr\":{},\"method\":{},\"uri\":{},\"status\":{status},\"bytes\":{bytes},\"duration_ms\":{:.3},\"pid\":{},\"referer\":{},\"user_agent\":{}}}",
            quote(&fpm_time(SystemTime::now())),
            quote(self.app.as_ref().map(|a| a.name.as_str()).unwrap_or("")),
            quote(&self.peer.map_or(String::new(), |p| p.ip().to_string())),
            quote(method),
            quote(uri),
            duration.as_secs_f64() * 1000.0,
            self.pid.unwrap_or(0),
            quote(&referer),
            quote(&agent),
        )
    }
}

fn header_text(value: Option<&HeaderValue>) -> String {
    value
        .map(|v| escape_log(&String::from_utf8_lossy(v.as_bytes())))
        .unwrap_or_else(|| "-".to_owned())
}

/// Keeps a log line one line and its quotes balanced.
fn escape_log(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}
