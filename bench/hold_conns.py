#!/usr/bin/env python3
"""Opens COUNT HTTP/1.1 keep-alive connections to HOST:PORT, sends one GET for
PATH on each, reads the whole response, and keeps every connection open and
idle until its standard input closes. Used by bench/run to measure what idle
keep-alive connections cost a server.

Usage: hold_conns.py [--tls] HOST PORT PATH COUNT

With --tls each connection is TLS (certificate not checked), HTTP/1.1 over it.

Prints one line `open N failed M first_error E` once set up, then, when stdin
closes, one line `still_open N` (connections the server had not closed).
"""

import resource
import select
import socket
import ssl
import sys


def read_response(sock):
    """Reads one response with a Content-Length body; returns its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        body += chunk
    return status


def main():
    args = sys.argv[1:]
    tls = args[:1] == ["--tls"]
    if tls:
        args = args[1:]
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["http/1.1"])
    host, port, path, count = args[0], int(args[1]), args[2], int(args[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: hold_conns\r\n\r\n".encode()
    conns, failed, first_error = [], 0, "none"
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(10)
            sock.connect((host, port))
            if tls:
                sock = context.wrap_socket(sock)
            sock.sendall(request)
            status = read_response(sock)
            if status != 200:
                raise ConnectionError(f"status {status}")
            conns.append(sock)
        except OSError as err:
            failed += 1
            if first_error == "none":
                first_error = repr(err).replace(" ", "_")
            sock.close()
    print(f"open {len(conns)} failed {failed} first_error {first_error}", flush=True)
    sys.stdin.read()  # hold until bench/run closes our stdin

    # A connection the server closed is readable (EOF) now.
    poller = select.poll()
    for sock in conns:
        poller.register(sock, select.POLLIN)
    # (Over TLS a readable socket may also hold a session ticket, so this
    # counts a connection as closed only if a read finds its end.)
    closed = 0
    for fd, _ in poller.poll(0):
        sock = next(s for s in conns if s.fileno() == fd)
        try:
            sock.setblocking(False)
            if sock.recv(1) == b"":
                closed += 1
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        except OSError:
            closed += 1
    print(f"still_open {len(conns) - closed}", flush=True)


if __name__ == "__main__":
    main()
