//! Response buffering: PHP's output is read from the worker as fast as PHP
//! writes it, held for the client (in memory up to
//! `php.response_buffer_memory`, then in an unnamed temporary file up to
//! `php.max_response_buffer`), and the worker goes back to the pool the
//! moment PHP finishes, however slowly the client reads. This is what nginx
//! does in front of php-fpm (`fastcgi_buffering`); without it a client
//! reading 50 MB at 700 KB/s held a worker for over a minute and was cut off
//! at `request_timeout`.
//!
//! One task per buffered response (the `Filler`) owns the worker's lease
//! and fills a `Spool`; the response body ([`SpoolReader`]) empties it. When
//! the spool is full the filler stops reading, so PHP waits for the client
//! as it would without buffering. When the client goes away the filler keeps
//! reading and drops what it reads, so PHP still finishes its request (under
//! `request_timeout`) and the worker is reused.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use fastcgi::client::ResponseEvent;
use pool::{KillReason, Lease};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, warn};

use crate::config::ResponseBuffer;
pub use crate::metrics::BufferMetrics;
use crate::php::stderr::StderrRelay;

/// Largest piece read back from the temporary file at once.
const FILE_READ_CHUNK: u64 = 64 * 1024;

enum Segment {
    Memory(Bytes),
    /// A stretch of the temporary file.
    File {
        offset: u64,
        length: u64,
    },
}

#[derive(Default)]
struct State {
    segments: VecDeque<Segment>,
    memory: u64,
    held: u64,
    file: Option<Arc<File>>,
    file_end: u64,
    /// Set when the filler is done: `Ok` if PHP finished its response.
    finished: Option<Result<(), String>>,
    reader: Option<Waker>,
    reader_gone: bool,
}

struct Spool {
    state: Mutex<State>,
    /// The reader made room, or went away (one filler waits on it).
    room: Notify,
    limits: ResponseBuffer,
    metrics: BufferMetrics,
}

impl Spool {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; carry on.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn release(&self, state: &mut State, bytes: u64, from_memory: bool) {
        state.held -= bytes;
        if from_memory {
            state.memory -= bytes;
        }
        self.metrics.held_bytes.dec_by(bytes as i64);
        self.room.notify_one();
    }
}

/// Starts buffering a response whose first bytes (`first`) are at hand and
/// whose rest is still coming from the worker. `declared` is the response's
/// Content-Length, if PHP gave one: the body ends for the client when that
/// much has been sent, while the worker finishes whatever else the script
/// does in the background (under `request_timeout`).
pub fn start(
    lease: Lease,
    first: Vec<Bytes>,
    stderr: StderrRelay,
    deadline: Instant,
    limits: ResponseBuffer,
    metrics: BufferMetrics,
) -> SpoolReader {
    metrics.responses.inc();
    let spool = Arc::new(Spool {
        state: Mutex::new(State::default()),
        room: Notify::new(),
        limits,
        metrics,
    });
    {
        let mut state = spool.lock();
        for chunk in first {
            let length = chunk.len() as u64;
            state.memory += length;
            state.held += length;
            spool.metrics.memory_bytes.inc_by(length);
            spool.metrics.held_bytes.inc_by(length as i64);
            state.segments.push_back(Segment::Memory(chunk));
        }
    }
    let filler = Filler {
        spool: spool.clone(),
        stderr,
        deadline,
    };
    tokio::spawn(filler.run(lease));
    SpoolReader {
        spool,
        reading: None,
    }
}

/// Finishes a response the client no longer needs (it had all it asked
/// for): PHP's remaining output is read and dropped, its STDERR still
/// logged, and the worker returned when PHP ends.
pub fn finish_in_background(lease: Lease, stderr: StderrRelay, deadline: Instant) {
    // Outside a runtime (never, in the server) there is nothing to finish
    // with: the lease's own drop then stops the worker.
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let spool = Arc::new(Spool {
        state: Mutex::new(State {
            reader_gone: true,
            ..State::default()
        }),
        room: Notify::new(),
        limits: ResponseBuffer {
            enabled: true,
            memory_bytes: 0,
            max_bytes: 0,
        },
        metrics: BufferMetrics::default(),
    });
    let filler = Filler {
        spool,
        stderr,
        deadline,
    };
    tokio::spawn(filler.run(lease));
}

struct Filler {
    spool: Arc<Spool>,
    stderr: StderrRelay,
    deadline: Instant,
}

impl Filler {
    async fn run(mut self, mut lease: Lease) {
        let outcome = loop {
            // Checked on every turn too: with output always ready, a timer
            // polled after the read would never be seen.
            let event = if Instant::now() < self.deadline {
                tokio::time::timeout_at(self.deadline, lease.connection().next_event())
                    .await
                    .ok()
            } else {
                None
            };
            match event {
                Some(Ok(ResponseEvent::Stdout(data))) => {
                    if let Err(failure) = self.hold(data).await {
                        break Err(failure);
                    }
                }
                Some(Ok(ResponseEvent::Stderr(data))) => self.stderr.push(&data),
                Some(Ok(ResponseEvent::End(_))) => break Ok(()),
                Some(Err(err)) => {
                    error!(
                        worker = %self.stderr.app(),
                        pid = lease.pid(),
                        "worker failed mid-response: {err}"
                    );
                    break Err((KillReason::Broken, format!("worker failed: {err}")));
                }
                None => {
                    warn!(
                        worker = %self.stderr.app(),
                        pid = lease.pid(),
                        "request_timeout reached while PHP was still sending its response"
                    );
                    break Err((
                        KillReason::Timeout,
                        "request_timeout reached while PHP was still sending".into(),
                    ));
                }
            }
        };
        self.stderr.flush();
        let finished = match outcome {
            Ok(()) => {
                lease.complete();
                Ok(())
            }
            Err((reason, why)) => {
                lease.kill(reason);
                Err(why)
            }
        };
        let mut state = self.spool.lock();
        state.finished = Some(finished);
        if let Some(waker) = state.reader.take() {
            waker.wake();
        }
    }

    /// Adds `data` to the spool once there is room for it; drops it if the
    /// client is gone. Errors if there is never room before the deadline
    /// (a timeout) or the temporary file fails (a broken request).
    async fn hold(&mut self, data: Bytes) -> Result<(), (KillReason, String)> {
        let length = data.len() as u64;
        let limits = self.spool.limits;
        loop {
            {
                let state = self.spool.lock();
                if state.reader_gone {
                    return Ok(());
                }
                // An empty spool takes any chunk, so one larger than the
                // limit cannot wedge the response.
                if state.held == 0 || state.held + length <= limits.max_bytes {
                    break;
                }
            }
            // A permit stored by notify_one is not lost between the check
            // and this wait.
            if Instant::now() >= self.deadline
                || tokio::time::timeout_at(self.deadline, self.spool.room.notified())
                    .await
                    .is_err()
            {
                return Err((
                    KillReason::Timeout,
                    "the client read too slowly to take the response in time".into(),
                ));
            }
        }
        let in_memory = {
            let state = self.spool.lock();
            state.file.is_none() && state.memory + length <= limits.memory_bytes
        };
        let segment = if in_memory {
            self.spool.metrics.memory_bytes.inc_by(length);
            Segment::Memory(data)
        } else {
            let (file, offset) = {
                let mut state = self.spool.lock();
                // Nothing of the file is waiting to be read (and no read is
                // in flight: a read always targets a queued stretch): start
                // over at its beginning, so the file never holds more than
                // the spool does.
                if !state
                    .segments
                    .iter()
                    .any(|segment| matches!(segment, Segment::File { .. }))
                {
                    state.file_end = 0;
                }
                (state.file.clone(), state.file_end)
            };
            let file = match file {
                Some(file) => file,
                None => {
                    let created = tokio::task::spawn_blocking(tempfile::tempfile)
                        .await
                        .map_err(|err| err.to_string())
                        .and_then(|file| file.map_err(|err| err.to_string()))
                        .map_err(|err| {
                            error!("cannot create a temporary file for a response: {err}");
                            (
                                KillReason::Broken,
                                format!("cannot buffer the response: {err}"),
                            )
                        })?;
                    let file = Arc::new(created);
                    self.spool.lock().file = Some(file.clone());
                    file
                }
            };
            let written = tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
                .await
                .map_err(io::Error::other)
                .and_then(|result| result);
            if let Err(err) = written {
                error!("writing a response to its temporary file: {err}");
                return Err((
                    KillReason::Broken,
                    format!("cannot buffer the response: {err}"),
                ));
            }
            self.spool.metrics.file_bytes.inc_by(length);
            Segment::File { offset, length }
        };
        let mut state = self.spool.lock();
        if state.reader_gone {
            return Ok(());
        }
        state.held += length;
        self.spool.metrics.held_bytes.inc_by(length as i64);
        match segment {
            Segment::Memory(data) => {
                state.memory += length;
                state.segments.push_back(Segment::Memory(data));
            }
            Segment::File { offset, length } => {
                state.file_end = offset + length;
                // Contiguous with the last stretch of the file: extend it.
                match state.segments.back_mut() {
                    Some(Segment::File {
                        offset: last,
                        length: last_length,
                    }) if *last + *last_length == offset => *last_length += length,
                    _ => state.segments.push_back(Segment::File { offset, length }),
                }
            }
        }
        if let Some(waker) = state.reader.take() {
            waker.wake();
        }
        Ok(())
    }
}

impl Drop for Filler {
    /// A filler that ends without saying how (a panic) must not leave the
    /// client waiting forever.
    fn drop(&mut self) {
        let mut state = self.spool.lock();
        if state.finished.is_none() {
            state.finished = Some(Err("the response buffer's task ended early".into()));
            if let Some(waker) = state.reader.take() {
                waker.wake();
            }
        }
    }
}

/// The client's side of a buffered response.
pub struct SpoolReader {
    spool: Arc<Spool>,
    /// A read of the temporary file in progress.
    reading: Option<JoinHandle<io::Result<Bytes>>>,
}

impl SpoolReader {
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if let Some(task) = self.reading.as_mut() {
            let result = std::task::ready!(std::pin::Pin::new(task).poll(cx));
            self.reading = None;
            let chunk = match result {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(err)) => return Poll::Ready(Some(Err(err))),
                Err(err) => return Poll::Ready(Some(Err(io::Error::other(err)))),
            };
            let mut state = self.spool.lock();
            let read = chunk.len() as u64;
            if let Some(Segment::File { offset, length }) = state.segments.front_mut() {
                *offset += read;
                *length -= read;
                if *length == 0 {
                    state.segments.pop_front();
                }
            }
            self.spool.release(&mut state, read, false);
            return Poll::Ready(Some(Ok(chunk)));
        }
        let mut state = self.spool.lock();
        match state.segments.front() {
            Some(Segment::Memory(_)) => {
                let Some(Segment::Memory(chunk)) = state.segments.pop_front() else {
                    unreachable!("the front segment was just seen to be in memory")
                };
                self.spool.release(&mut state, chunk.len() as u64, true);
                Poll::Ready(Some(Ok(chunk)))
            }
            Some(&Segment::File { offset, length }) => {
                let Some(file) = state.file.clone() else {
                    return Poll::Ready(Some(Err(io::Error::other("response file missing"))));
                };
                drop(state);
                let want = length.min(FILE_READ_CHUNK);
                let task = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; want as usize];
                    file.read_exact_at(&mut buf, offset)?;
                    Ok(Bytes::from(buf))
                });
                self.reading = Some(task);
                self.poll_chunk(cx)
            }
            None => match &state.finished {
                Some(Ok(())) => Poll::Ready(None),
                Some(Err(why)) => Poll::Ready(Some(Err(io::Error::other(why.clone())))),
                None => {
                    state.reader = Some(cx.waker().clone());
                    Poll::Pending
                }
            },
        }
    }

    /// Nothing more will come.
    pub fn is_done(&self) -> bool {
        let state = self.spool.lock();
        self.reading.is_none()
            && state.segments.is_empty()
            && matches!(state.finished, Some(Ok(())))
    }
}

impl Drop for SpoolReader {
    fn drop(&mut self) {
        let mut state = self.spool.lock();
        state.reader_gone = true;
        let held = state.held;
        state.segments.clear();
        state.held = 0;
        state.memory = 0;
        self.spool.metrics.held_bytes.dec_by(held as i64);
        // The temporary file goes when the filler drops its handle too.
        state.file = None;
        self.spool.room.notify_one();
    }
}
