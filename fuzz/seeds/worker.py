#!/usr/bin/env python3
"""Writes the seed corpus of the `worker` fuzz target (fuzz/seeds/worker/).

Each seed is the target's 3-byte header (fuzz_targets/worker.rs: read sizes
and runner flags, the runner's body read size, the web server's read limit),
the read sizes, then FastCGI as nginx sends it to php-cgi.

    python3 fuzz/seeds/worker.py
"""

import os
import struct

BEGIN, ABORT, PARAMS, STDIN, GET_VALUES = 1, 2, 4, 5, 9
RESPONDER, KEEP_CONN = 1, 1


def record(kind, request_id, content=b""):
    padding = -len(content) % 8
    header = struct.pack(">BBHHBx", 1, kind, request_id, len(content), padding)
    return header + content + b"\0" * padding


def pair(name, value):
    def length(n):
        return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)

    return length(len(name)) + length(len(value)) + name + value


def begin(request_id, keep_conn=True):
    flags = KEEP_CONN if keep_conn else 0
    return record(BEGIN, request_id, struct.pack(">HB5x", RESPONDER, flags))


def params(request_id, pairs):
    content = b"".join(pair(n, v) for n, v in pairs)
    return record(PARAMS, request_id, content) + record(PARAMS, request_id)


def stdin(request_id, body):
    """The body in records of 8 bytes, then the empty record."""
    pieces = [body[i : i + 8] for i in range(0, len(body), 8)]
    return b"".join(record(STDIN, request_id, p) for p in pieces) + record(STDIN, request_id)


def nginx(method, uri, body=b"", content_type=b""):
    """nginx's fastcgi_params and fastcgi_param SCRIPT_FILENAME."""
    path, _, query = uri.partition(b"?")
    return [
        (b"SCRIPT_FILENAME", b"/srv/www" + path),
        (b"QUERY_STRING", query),
        (b"REQUEST_METHOD", method),
        (b"CONTENT_TYPE", content_type),
        (b"CONTENT_LENGTH", str(len(body)).encode() if body else b""),
        (b"SCRIPT_NAME", path),
        (b"REQUEST_URI", uri),
        (b"DOCUMENT_URI", path),
        (b"DOCUMENT_ROOT", b"/srv/www"),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
        (b"REQUEST_SCHEME", b"http"),
        (b"GATEWAY_INTERFACE", b"CGI/1.1"),
        (b"SERVER_SOFTWARE", b"nginx/1.22.1"),
        (b"REMOTE_ADDR", b"127.0.0.1"),
        (b"REMOTE_PORT", b"51234"),
        (b"SERVER_ADDR", b"127.0.0.1"),
        (b"SERVER_PORT", b"80"),
        (b"SERVER_NAME", b"localhost"),
        (b"REDIRECT_STATUS", b"200"),
        (b"HTTP_HOST", b"localhost"),
        (b"HTTP_USER_AGENT", b"curl/7.88.1"),
        (b"HTTP_ACCEPT", b"*/*"),
    ]


def request(request_id, pairs, body=b"", keep_conn=True):
    return begin(request_id, keep_conn) + params(request_id, pairs) + stdin(request_id, body)


def seed(flags=0, piece=7, limit=0, sizes=b""):
    return bytes([(flags << 4) | len(sizes), piece - 1, limit]) + sizes


FORM = b"name=value&other=%20x&list[]=1&list[]=2"
URLENCODED = b"application/x-www-form-urlencoded"
MANAGEMENT = 0
SEEDS = {
    # A POST then a GET on the kept connection, in one read each.
    "post-then-get": seed()
    + request(1, nginx(b"POST", b"/form.php?a=1", FORM, URLENCODED), FORM)
    + request(1, nginx(b"GET", b"/index.php")),
    # The same cut into small reads, one of them interrupted (EINTR).
    "post-then-get-cut": seed(sizes=bytes([1, 3, 0, 17]))
    + request(1, nginx(b"POST", b"/form.php?a=1", FORM, URLENCODED), FORM)
    + request(1, nginx(b"GET", b"/index.php")),
    # FCGI_GET_VALUES, then tqserver's probe request.
    "get-values-probe": seed()
    + record(
        GET_VALUES,
        MANAGEMENT,
        pair(b"FCGI_MAX_CONNS", b"") + pair(b"FCGI_MAX_REQS", b"") + pair(b"FCGI_MPXS_CONNS", b""),
    )
    + request(1, [(b"REQUEST_METHOD", b"GET"), (b"SERVER_SOFTWARE", b"tqserver-probe")]),
    # The web server gives up while the body arrives.
    "abort-in-body": seed()
    + begin(1)
    + params(1, nginx(b"POST", b"/upload.php", b"x" * 100, b"text/plain"))
    + record(STDIN, 1, b"x" * 40)
    + record(ABORT, 1),
    # A warning, fastcgi_finish_request, a web server that stops reading
    # after 128 bytes, without FCGI_KEEP_CONN.
    "finish-log-cut-response": seed(flags=2 | 4 | 8, piece=3, limit=2)
    + request(
        1, nginx(b"POST", b"/slow.php", FORM, URLENCODED), FORM, keep_conn=False
    ),
}

if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
