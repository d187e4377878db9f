//! The accept loop of every front: the HTTP front, each FastCGI listener and
//! the admin endpoint accept connections here, and only here.
//!
//! - **A connection limit.** A front serves at most `max_connections` at
//!   once: a slot (a semaphore permit) is taken *before* accepting, and the
//!   connection's task holds it until the connection ends. At the limit
//!   nothing is accepted, so new connections wait in the kernel's listen
//!   backlog and are served when a slot frees (rather than accepted and
//!   dropped). The log says so once per episode, not once per connection.
//! - **Accept errors never end the loop.** A connection that died in the
//!   backlog (ECONNABORTED and the like) is skipped at once; running out of
//!   file descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) backs off,
//!   5 ms doubling to 1 s (as Go's net/http), instead of spinning on an
//!   accept that fails at once; the listener itself stays open.
//! - **Graceful stop.** The loop returns when its `shutdown` token is
//!   cancelled, also while it waits for a slot; connections run on the
//!   caller's [`TaskTracker`], so the caller can wait for them to finish.
//!
//! What a connection is (TCP, unix socket, a test's fake) is the [`Accept`]
//! trait's business; what is done with one is the caller's.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// Something connections are accepted from.
pub trait Accept: Send + Sync {
    type Connection: Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Connection>> + Send;
}

impl Accept for TcpListener {
    type Connection = (TcpStream, SocketAddr);
    fn accept(&self) -> impl Future<Output = io::Result<Self::Connection>> + Send {
        TcpListener::accept(self)
    }
}

impl Accept for UnixListener {
    type Connection = UnixStream;
    async fn accept(&self) -> io::Result<UnixStream> {
        UnixListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// One front's accept loop: its name in the log and its connection limit.
#[derive(Clone, Debug)]
pub struct AcceptLoop {
    /// What the log calls the front: "HTTP", "admin", "FastCGI listener".
    pub front: &'static str,
    /// The app a FastCGI listener serves, for the log.
    pub app: Option<String>,
    pub max_connections: usize,
    /// The setting that raises the limit, named when it is reached.
    pub setting: &'static str,
}

impl AcceptLoop {
    /// Accepts until `shutdown`. `handle` turns each connection into the
    /// task that serves it (spawned on `connections`, holding a slot until it
    /// ends), or refuses it with `None` (the connection is dropped).
    pub async fn run<A, F, Fut>(
        &self,
        listener: &A,
        shutdown: &CancellationToken,
        connections: &TaskTracker,
        mut handle: F,
    ) where
        A: Accept,
        F: FnMut(A::Connection) -> Option<Fut>,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let max = self.max_connections.max(1);
        // One permit per connection being served; never closed.
        let slots = Arc::new(Semaphore::new(max));
        let mut saturation = Saturation::default();
        let mut backoff = Backoff::default();
        let app = self.app.as_deref().unwrap_or("");
        loop {
            if let Some(lasted) = saturation.check(slots.available_permits(), max) {
                info!(
                    front = self.front,
                    worker = app,
                    "accepting again: connections below {} after {lasted:?} at it",
                    self.setting
                );
            }
            let permit = match slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    if saturation.full() {
                        warn!(
                            front = self.front,
                            worker = app,
                            max_connections = max,
                            "{max} connections open, the most {} allows: new connections wait in the \
                             listen backlog until one closes",
                            self.setting
                        );
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        permit = slots.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => return,
                        },
                    }
                }
            };
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok(connection) => {
                    if backoff.reset() {
                        info!(front = self.front, worker = app, "accepting again");
                    }
                    if let Some(task) = handle(connection) {
                        connections.spawn(async move {
                            task.await;
                            drop(permit);
                        });
                    }
                }
                Err(err) if is_connection_error(&err) => {
                    // That connection is gone; the next one may be fine.
                    debug!(front = self.front, worker = app, "accept: {err}");
                }
                Err(err) => {
                    drop(permit);
                    let (wait, first) = backoff.next();
                    if first {
                        warn!(
                            front = self.front,
                            worker = app,
                            "accept failed: {err}; retrying, backing off up to {:?}",
                            Backoff::MAX
                        );
                    } else {
                        debug!(front = self.front, worker = app, "accept failed: {err}");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

/// An accept error that concerns one connection (it was aborted or refused
/// while in the backlog), not the listener: the next accept may succeed at
/// once. accept(2) says to retry these as EAGAIN.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    ) || matches!(
        err.raw_os_error(),
        Some(
            libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

/// The wait after an accept that failed for want of resources (EMFILE,
/// ENFILE, ENOBUFS, ENOMEM, or anything unexpected): 5 ms, doubling to 1 s,
/// back to the start once an accept succeeds.
#[derive(Debug, Default)]
struct Backoff {
    /// The last wait; `None` while accepts succeed.
    last: Option<Duration>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    /// The next wait, and whether it is the first of an episode of failures.
    fn next(&mut self) -> (Duration, bool) {
        let first = self.last.is_none();
        let wait = self
            .last
            .map_or(Self::FIRST, |last| (last * 2).min(Self::MAX));
        self.last = Some(wait);
        (wait, first)
    }

    /// An accept succeeded; `true` if that ends an episode of failures.
    fn reset(&mut self) -> bool {
        self.last.take().is_some()
    }
}

/// Episodes of a front at its connection limit, so the log says when one
/// starts and when it ends, not every time a slot is taken. An episode ends
/// once a tenth of the slots (at least one) are free again, so a front that
/// hovers at its limit does not log each connection that closes.
#[derive(Debug, Default)]
struct Saturation {
    since: Option<Instant>,
}

impl Saturation {
    /// No slot is free; `true` if that starts an episode.
    fn full(&mut self) -> bool {
        if self.since.is_some() {
            return false;
        }
        self.since = Some(Instant::now());
        true
    }

    /// With `free` of `max` slots free: how long the episode lasted, if this
    /// ends one.
    fn check(&mut self, free: usize, max: usize) -> Option<Duration> {
        let since = self.since?;
        if free < (max / 10).max(1) {
            return None;
        }
        self.since = None;
        Some(since.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::{mpsc, oneshot};

    use super::*;

    fn accept_loop(max_connections: usize) -> AcceptLoop {
        AcceptLoop {
            front: "test",
            app: None,
            max_connections,
            setting: "test.max_connections",
        }
    }

    /// A listener that hands out what a test scripted, one per accept, then
    /// waits forever; it counts the accepts.
    #[derive(Default)]
    struct Scripted {
        script: Mutex<VecDeque<io::Result<u32>>>,
        more: tokio::sync::Notify,
        accepts: AtomicUsize,
    }

    impl Scripted {
        fn push(&self, next: io::Result<u32>) {
            self.script.lock().unwrap().push_back(next);
            self.more.notify_one();
        }

        fn accepts(&self) -> usize {
            self.accepts.load(Ordering::SeqCst)
        }

        fn waiting(&self) -> usize {
            self.script.lock().unwrap().len()
        }
    }

    impl Accept for Scripted {
        type Connection = u32;
        async fn accept(&self) -> io::Result<u32> {
            loop {
                let next = self.script.lock().unwrap().pop_front();
                if let Some(next) = next {
                    self.accepts.fetch_add(1, Ordering::SeqCst);
                    return next;
                }
                self.more.notified().await;
            }
        }
    }

    /// Runs `accept_loop` on `listener`; each connection reports its number
    /// on the returned channel and lives until its sender in the map is
    /// dropped or fired.
    #[allow(clippy::type_complexity)]
    fn serve_scripted(
        accept_loop: AcceptLoop,
        listener: Arc<Scripted>,
        shutdown: CancellationToken,
    ) -> (
        mpsc::UnboundedReceiver<(u32, oneshot::Sender<()>)>,
        tokio::task::JoinHandle<()>,
    ) {
        let (served_tx, served) = mpsc::unbounded_channel();
        let tracker = TaskTracker::new();
        let task = tokio::spawn(async move {
            accept_loop
                .run(&*listener, &shutdown, &tracker, |n| {
                    let served_tx = served_tx.clone();
                    Some(async move {
                        let (close, closed) = oneshot::channel();
                        let _ = served_tx.send((n, close));
                        let _ = closed.await;
                    })
                })
                .await;
        });
        (served, task)
    }

    /// With a limit of 2, the third connection is not even accepted (it
    /// stays in the backlog) until one of the first two closes.
    #[tokio::test(start_paused = true)]
    async fn at_the_limit_the_next_connection_waits_in_the_backlog() {
        let listener = Arc::new(Scripted::default());
        let shutdown = CancellationToken::new();
        let (mut served, task) = serve_scripted(accept_loop(2), listener.clone(), shutdown.clone());
        for n in 1..=3 {
            listener.push(Ok(n));
        }
        let (first, close_first) = served.recv().await.unwrap();
        let (second, _keep_second) = served.recv().await.unwrap();
        assert_eq!((first, second), (1, 2));
        // Paused time only moves on once every task waits: the loop is
        // parked on its slots, not polling.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(served.try_recv().is_err(), "a third connection was served");
        assert_eq!(listener.accepts(), 2, "a third connection was accepted");
        assert_eq!(listener.waiting(), 1);

        drop(close_first);
        let (third, _keep_third) = served.recv().await.unwrap();
        assert_eq!(third, 3);
        assert_eq!(listener.accepts(), 3);

        // A stop ends the loop while it waits for a slot.
        shutdown.cancel();
        task.await.unwrap();
    }

    /// Out of file descriptors: the loop neither exits nor spins; it
    /// retries after 5, 10, 20 ms... and serves once accept works again.
    #[tokio::test(start_paused = true)]
    async fn emfile_backs_off_and_retries() {
        let listener = Arc::new(Scripted::default());
        let shutdown = CancellationToken::new();
        let (mut served, task) = serve_scripted(accept_loop(8), listener.clone(), shutdown.clone());
        for _ in 0..4 {
            listener.push(Err(io::Error::from_raw_os_error(libc::EMFILE)));
        }
        listener.push(Err(io::Error::from_raw_os_error(libc::ENFILE)));
        listener.push(Ok(7));
        let started = Instant::now();
        let (n, _keep) = served.recv().await.unwrap();
        assert_eq!(n, 7);
        assert_eq!(listener.accepts(), 6, "one accept per failure, no spinning");
        // 5 + 10 + 20 + 40 + 80 ms of backing off.
        assert_eq!(started.elapsed(), Duration::from_millis(155));

        // A success starts the backoff over.
        listener.push(Err(io::Error::from_raw_os_error(libc::EMFILE)));
        listener.push(Ok(8));
        let started = Instant::now();
        let (n, _keep) = served.recv().await.unwrap();
        assert_eq!(n, 8);
        assert_eq!(started.elapsed(), Duration::from_millis(5));

        shutdown.cancel();
        task.await.unwrap();
    }

    /// A connection aborted in the backlog costs no wait at all.
    #[tokio::test(start_paused = true)]
    async fn an_aborted_connection_is_skipped_at_once() {
        let listener = Arc::new(Scripted::default());
        let shutdown = CancellationToken::new();
        let (mut served, task) = serve_scripted(accept_loop(1), listener.clone(), shutdown.clone());
        listener.push(Err(io::ErrorKind::ConnectionAborted.into()));
        listener.push(Err(io::Error::from_raw_os_error(libc::EPROTO)));
        listener.push(Ok(1));
        let started = Instant::now();
        let (n, _keep) = served.recv().await.unwrap();
        assert_eq!(n, 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
        // The slot of a failed accept was not lost: with a limit of 1, the
        // one connection is served.
        shutdown.cancel();
        task.await.unwrap();
    }

    /// A connection the handler refuses frees its slot at once.
    #[tokio::test(start_paused = true)]
    async fn a_refused_connection_frees_its_slot() {
        let listener = Arc::new(Scripted::default());
        let shutdown = CancellationToken::new();
        let (served_tx, mut served) = mpsc::unbounded_channel();
        let tracker = TaskTracker::new();
        let task = tokio::spawn({
            let (listener, shutdown, tracker) =
                (listener.clone(), shutdown.clone(), tracker.clone());
            async move {
                accept_loop(1)
                    .run(&*listener, &shutdown, &tracker, |n: u32| {
                        let served_tx = served_tx.clone();
                        (n % 2 == 0).then_some(async move {
                            let _ = served_tx.send(n);
                            std::future::pending::<()>().await;
                        })
                    })
                    .await;
            }
        });
        for n in [1, 3, 2] {
            listener.push(Ok(n));
        }
        assert_eq!(served.recv().await, Some(2));
        assert_eq!(listener.accepts(), 3);
        shutdown.cancel();
        task.await.unwrap();
        // The connection tasks are the caller's to end and wait for.
        tracker.close();
        assert_eq!(tracker.len(), 1);
    }

    /// The same over real TCP: a third client connects (the kernel's
    /// backlog takes it) but gets nothing until the first one leaves.
    #[tokio::test]
    async fn over_tcp_the_third_client_waits_until_one_leaves() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let task = tokio::spawn({
            let (shutdown, tracker) = (shutdown.clone(), tracker.clone());
            async move {
                accept_loop(2)
                    .run(&listener, &shutdown, &tracker, |(mut stream, _)| {
                        // Greets, then holds the connection until the client
                        // closes it.
                        Some(async move {
                            let _ = stream.write_all(b"hi").await;
                            let _ = stream.read(&mut [0; 1]).await;
                        })
                    })
                    .await;
            }
        });
        async fn greeted(client: &mut TcpStream, within: Duration) -> bool {
            let mut hi = [0; 2];
            matches!(
                tokio::time::timeout(within, client.read_exact(&mut hi)).await,
                Ok(Ok(_))
            )
        }
        let patience = Duration::from_secs(10);
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(greeted(&mut first, patience).await);
        assert!(greeted(&mut second, patience).await);
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(
            !greeted(&mut third, Duration::from_millis(300)).await,
            "the third client was served while two were open"
        );
        drop(first);
        assert!(greeted(&mut third, patience).await);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn backoff_doubles_to_a_second_and_starts_over() {
        let mut backoff = Backoff::default();
        let waits: Vec<_> = (0..10).map(|_| backoff.next()).collect();
        assert_eq!(waits[0], (Duration::from_millis(5), true));
        assert_eq!(waits[1], (Duration::from_millis(10), false));
        assert_eq!(waits[7], (Duration::from_millis(640), false));
        assert_eq!(waits[8], (Duration::from_secs(1), false));
        assert_eq!(waits[9], (Duration::from_secs(1), false));
        assert!(backoff.reset());
        assert!(!backoff.reset());
        assert_eq!(backoff.next(), (Duration::from_millis(5), true));
    }

    #[test]
    fn saturation_is_one_episode_until_a_tenth_is_free() {
        let mut saturation = Saturation::default();
        assert_eq!(saturation.check(0, 100), None, "no episode yet");
        assert!(saturation.full(), "an episode starts");
        assert!(!saturation.full(), "and is logged once");
        assert_eq!(saturation.check(1, 100), None);
        assert!(!saturation.full());
        assert_eq!(saturation.check(9, 100), None);
        assert!(saturation.check(10, 100).is_some(), "a tenth free ends it");
        assert!(saturation.full(), "the next one is logged again");
        // Small limits: one free slot ends an episode.
        let mut saturation = Saturation::default();
        assert!(saturation.full());
        assert!(saturation.check(1, 2).is_some());
    }

    #[test]
    fn connection_errors_are_not_resource_errors() {
        assert!(is_connection_error(
            &io::ErrorKind::ConnectionAborted.into()
        ));
        assert!(is_connection_error(&io::Error::from_raw_os_error(
            libc::EPROTO
        )));
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(!is_connection_error(&io::Error::from_raw_os_error(errno)));
        }
    }
}
