//! `fake-fcgi-worker`: a stand-in for php-cgi in deterministic pool tests,
//! built on the project's own `fastcgi::server` layer. No PHP involved.
//!
//! It starts the way php-cgi does under a process manager: its listening
//! socket (unix or TCP) is fd 0, and it serves one accepted connection at a
//! time, one request at a time. What a request does is chosen by its
//! SCRIPT_NAME: the first path segment (a `.php` suffix dropped) is the
//! action; its argument is the next segment, else PATH_INFO's first segment,
//! else QUERY_STRING.
//!
//! | action                | what happens                                          |
//! |-----------------------|-------------------------------------------------------|
//! | `echo`                | answers the request body                              |
//! | `params`              | answers every param as a `NAME=value` line            |
//! | `sleep/<ms>`          | waits `ms`, then answers `slept`                      |
//! | `big/<bytes>`         | answers that many bytes (`a` to `z`, repeating)       |
//! | `stderr`              | a line on FastCGI STDERR, then `ok`                   |
//! | `status/<code>`       | answers with `Status: <code>`                         |
//! | `crash`               | the process SIGKILLs itself, the answer unsent        |
//! | `crash-after-headers` | sends the response head, then SIGKILLs itself         |
//! | `exit-after-response` | answers, then exits with code 0 (php-cgi at its       |
//! |                       | `PHP_FCGI_MAX_REQUESTS`)                              |
//! | none, or unknown      | php-cgi's `No input file specified.` (404): what the  |
//! |                       | pool's probe request gets                             |
//!
//! Every answer carries `X-Fake-Pid` (this process) and `X-Fake-Requests`
//! (requests this process answered that named a script, this one included;
//! the pool's probe names none), so a test sees which process served it and
//! how often.
//!
//! At start, when the file named by the environment variable
//! `FAKE_WORKER_FAIL_FILE` exists, the process says so on stderr and exits
//! with code 3 before serving: a worker that dies at start, for crash-loop
//! tests that flip the switch after the pool has started.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use bytes::BytesMut;
use fastcgi::server::{RequestReader, ResponseWriter, ServerEvent, ServerValues};
use fastcgi::{Params, ParamsLimits, ProtocolStatus, Role};
use nix::sys::signal::{Signal, raise};
use tokio::io::{AsyncRead, AsyncWrite};

/// Exit code of a worker told to fail at start.
const FAIL_AT_START: i32 = 3;
/// Largest STDOUT piece buffered before a flush (`big`).
const CHUNK: usize = 64 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    if let Some(file) = std::env::var_os("FAKE_WORKER_FAIL_FILE")
        && std::path::Path::new(&file).exists()
    {
        eprintln!("fake worker: told to fail at start");
        std::process::exit(FAIL_AT_START);
    }
    let listener = Listener::from_stdin()?;
    let mut served = 0u64;
    loop {
        match listener.accept().await? {
            Accepted::Unix(stream) => serve(stream, &mut served).await,
            Accepted::Tcp(stream) => serve(stream, &mut served).await,
        }
    }
}

enum Listener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

enum Accepted {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl Listener {
    /// The listening socket the pool handed over as fd 0.
    fn from_stdin() -> io::Result<Self> {
        let fd: OwnedFd = io::stdin().as_fd().try_clone_to_owned()?;
        let socket = socket2::Socket::from(fd);
        socket.set_nonblocking(true)?;
        let domain = socket.local_addr()?.domain();
        let fd = OwnedFd::from(socket);
        if domain == socket2::Domain::UNIX {
            let listener = std::os::unix::net::UnixListener::from(fd);
            Ok(Self::Unix(tokio::net::UnixListener::from_std(listener)?))
        } else {
            let listener = std::net::TcpListener::from(fd);
            Ok(Self::Tcp(tokio::net::TcpListener::from_std(listener)?))
        }
    }

    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Self::Unix(listener) => Ok(Accepted::Unix(listener.accept().await?.0)),
            Self::Tcp(listener) => Ok(Accepted::Tcp(listener.accept().await?.0)),
        }
    }
}

/// Serves one connection until the peer closes it or breaks the protocol
/// (then, as php-cgi does, back to accepting).
async fn serve<S: AsyncRead + AsyncWrite>(stream: S, served: &mut u64) {
    let (read, write) = tokio::io::split(stream);
    let mut reader = RequestReader::new(read, ParamsLimits::default());
    let mut writer = ResponseWriter::new(write);
    if let Err(err) = serve_requests(&mut reader, &mut writer, served).await {
        eprintln!("fake worker: connection dropped: {err}");
    }
    let _ = writer.shutdown().await;
}

/// One request as it arrives.
#[derive(Default)]
struct Request {
    id: u16,
    keep_conn: bool,
    params: Params,
    body: BytesMut,
}

async fn serve_requests<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut RequestReader<R>,
    writer: &mut ResponseWriter<W>,
    served: &mut u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut request = Request::default();
    while let Some(event) = reader.next_event().await? {
        match event {
            ServerEvent::Begin {
                request_id,
                role,
                keep_conn,
            } => {
                if role != Role::Responder {
                    writer.end_request(request_id, 0, ProtocolStatus::UnknownRole, false);
                    writer.flush().await?;
                    reader.finish_request();
                    continue;
                }
                request = Request {
                    id: request_id,
                    keep_conn,
                    ..Request::default()
                };
            }
            ServerEvent::Params { params, .. } => request.params = params,
            ServerEvent::Stdin { data, .. } => request.body.extend_from_slice(&data),
            ServerEvent::Data { .. } => {}
            ServerEvent::StdinEnd { .. } => {
                answer(&request, writer, served).await?;
                reader.finish_request();
                if !request.keep_conn {
                    return Ok(());
                }
            }
            ServerEvent::Abort { request_id } => {
                writer.end_request(request_id, 0, ProtocolStatus::RequestComplete, false);
                writer.flush().await?;
                reader.finish_request();
            }
            ServerEvent::Multiplexed { request_id } => {
                writer.end_request(request_id, 0, ProtocolStatus::CantMpxConn, false);
                writer.flush().await?;
            }
            ServerEvent::GetValues(asked) => {
                writer.get_values_result(
                    &asked,
                    ServerValues {
                        max_conns: 1,
                        max_reqs: 1,
                        mpxs_conns: false,
                    },
                );
                writer.flush().await?;
            }
            ServerEvent::UnknownManagement(kind) => {
                writer.unknown_type(kind);
                writer.flush().await?;
            }
        }
    }
    Ok(())
}

/// The action a request names, and its argument.
fn action(params: &Params) -> Option<(String, String)> {
    let script = params.get_str("SCRIPT_NAME")?;
    let mut segments = script.trim_start_matches('/').splitn(2, '/');
    let action = segments.next()?.trim_end_matches(".php").to_owned();
    let argument = segments
        .next()
        .filter(|rest| !rest.is_empty())
        .or_else(|| {
            params
                .get_str("PATH_INFO")
                .map(|info| info.trim_start_matches('/'))
                .filter(|info| !info.is_empty())
        })
        .or_else(|| params.get_str("QUERY_STRING"))
        .unwrap_or("");
    let argument = argument.split('/').next().unwrap_or("").to_owned();
    Some((action, argument))
}

async fn answer<W: AsyncWrite + Unpin>(
    request: &Request,
    writer: &mut ResponseWriter<W>,
    served: &mut u64,
) -> io::Result<()> {
    let id = request.id;
    let Some((action, argument)) = action(&request.params) else {
        return not_found(writer, id).await;
    };
    *served += 1;
    let head = |status: &str| {
        format!(
            "{status}Content-Type: text/plain\r\nX-Fake-Pid: {}\r\nX-Fake-Requests: {served}\r\n\r\n",
            std::process::id()
        )
    };
    let mut had_stderr = false;
    match action.as_str() {
        "echo" => {
            writer.stdout(id, head("").as_bytes());
            writer.stdout(id, &request.body);
        }
        "params" => {
            writer.stdout(id, head("").as_bytes());
            let mut lines = Vec::new();
            for (name, value) in request.params.iter() {
                lines.extend_from_slice(name);
                lines.push(b'=');
                lines.extend_from_slice(value);
                lines.push(b'\n');
            }
            writer.stdout(id, &lines);
        }
        "sleep" => {
            let ms = argument.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            writer.stdout(id, head("").as_bytes());
            writer.stdout(id, b"slept");
        }
        "big" => {
            let mut left: usize = argument.parse().unwrap_or(0);
            writer.stdout(id, head("").as_bytes());
            let pattern: Vec<u8> = (b'a'..=b'z').cycle().take(CHUNK).collect();
            while left > 0 {
                let piece = left.min(CHUNK);
                writer.stdout(id, &pattern[..piece]);
                writer.flush().await?;
                left -= piece;
            }
        }
        "stderr" => {
            writer.stderr(id, b"fake worker stderr line\n");
            had_stderr = true;
            writer.stdout(id, head("").as_bytes());
            writer.stdout(id, b"ok");
        }
        "status" => {
            writer.stdout(id, head(&format!("Status: {argument}\r\n")).as_bytes());
        }
        "crash" => die(),
        "crash-after-headers" => {
            writer.stdout(id, head("").as_bytes());
            writer.flush().await?;
            die();
        }
        "exit-after-response" => {
            writer.stdout(id, head("").as_bytes());
            writer.stdout(id, b"bye");
            writer.end_request(id, 0, ProtocolStatus::RequestComplete, false);
            writer.flush().await?;
            std::process::exit(0);
        }
        _ => {
            *served -= 1;
            return not_found(writer, id).await;
        }
    }
    writer.end_request(id, 0, ProtocolStatus::RequestComplete, had_stderr);
    writer.flush().await
}

/// php-cgi's answer to a request without a script.
async fn not_found<W: AsyncWrite + Unpin>(
    writer: &mut ResponseWriter<W>,
    id: u16,
) -> io::Result<()> {
    writer.stdout(
        id,
        b"Status: 404 Not Found\r\nContent-type: text/html; charset=UTF-8\r\n\r\nNo input file specified.\n",
    );
    writer.end_request(id, 0, ProtocolStatus::RequestComplete, false);
    writer.flush().await
}

/// Dies the way a crashing PHP does: by a signal, with no goodbye.
fn die() -> ! {
    let _ = raise(Signal::SIGKILL);
    std::process::abort()
}
