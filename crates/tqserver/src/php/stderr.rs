//! A worker's FastCGI STDERR, relayed to the log a whole line at a time
//! with the app's name and the worker's pid (both fronts).

use tracing::warn;

/// Relays a worker's FastCGI STDERR to the log a whole line at a time, with
/// the app's name and the worker's pid.
pub struct StderrRelay {
    app: String,
    pid: u32,
    partial: Vec<u8>,
}

/// A line longer than this is logged in pieces (marked as continuing).
const MAX_STDERR_LINE: usize = 1024 * 1024;

impl StderrRelay {
    pub fn new(app: String, pid: u32) -> Self {
        Self {
            app,
            pid,
            partial: Vec::new(),
        }
    }

    pub fn app(&self) -> &str {
        &self.app
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn push(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(newline) = memchr::memchr(b'\n', rest) {
            if self.partial.is_empty() {
                self.emit(&rest[..newline], false);
            } else {
                self.partial.extend_from_slice(&rest[..newline]);
                let line = std::mem::take(&mut self.partial);
                self.emit(&line, false);
            }
            rest = &rest[newline + 1..];
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > MAX_STDERR_LINE {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line, true);
        }
    }

    pub fn flush(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line, false);
        }
    }

    fn emit(&self, line: &[u8], continues: bool) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            return;
        }
        let suffix = if continues { " [line continues]" } else { "" };
        warn!(worker = %self.app, pid = self.pid, stream = "stderr", "{line}{suffix}");
    }
}
