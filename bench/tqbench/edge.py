"""The edge part: tqserver on the open internet (TLS, HTTP/2, compression)
against nginx (TLS, http2, gzip) + php-fpm, in the same run. One tqserver
(its own TLS port and plain port, `php.runtime: embed`, <workers> workers)
and one nginx with php-fpm (pm=static, <workers> children, upstream
keep-alive) serve the same files with the same self-signed certificate
(ECDSA P-256); the rounds alternate between them and the figures are medians
of the rounds:

- HTTPS hello.php over HTTP/1.1 (wrk, c=20) and over HTTP/2 (h2load, 20
  connections of 10 streams);
- HTTPS 10 KB static file over HTTP/2 (h2load, the same);
- new TLS connections per second: ab -c 20, a new connection (full TLS
  handshake) per request for a 3-byte file;
- CPU per response of a 100 KB PHP page, compressed (tqserver: br, zstd,
  gzip; nginx: gzip at its default level), minus the same page sent
  uncompressed: the server process's own CPU (not PHP's), from /proc;
- memory of <connections> idle TLS keep-alive connections (each has made one
  request), tqserver's RSS growth against nginx's.

The functions that only compute are unit-tested; `edge_part` runs it."""

import os
import re
import shlex
import subprocess
import sys
import time

from .configs import fpm_config
from .measure import LOAD_OUTPUT_ERRORS, children_of, cpu_seconds, parse_ab, parse_wrk, rss_kb, wrk_command
from .paths import REPO
from .services import SERVICES, run_load, start_fpm, start_tqserver
from .util import http_get, log, median, port_open, round_order, wait_for, write, free_port

SERVERS = ("tqserver", "nginx")
# (id, unit, what a higher value is: "better" or "worse")
MEASURES = {
    "https_hello_h1_rps": ("req/s", "HTTPS hello.php, HTTP/1.1, c=20"),
    "https_hello_h2_rps": ("req/s", "HTTPS hello.php, HTTP/2, 20 connections x 10 streams"),
    "https_static10k_h2_rps": ("req/s", "HTTPS 10 KB static file, HTTP/2, 20 connections x 10 streams"),
    "tls_new_conns_per_s": ("conn/s", "new TLS connections per second (ab -c 20, one request each)"),
}
ENCODINGS = {"tqserver": ("br", "zstd", "gzip"), "nginx": ("gzip",)}
H2_CONNECTIONS, H2_STREAMS = 20, 10
# Enough that CPU time, counted in 10 ms clock ticks, is read to within 1 %.
# The compression CPU figure: this many keep-alive connections for so long.
CPU_CONNECTIONS = 4
CPU_SECONDS = 3


def parse_h2load(out):
    """h2load's report: rate, requests done, errors (failed plus errored plus
    non-2xx responses)."""
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    errors = int(req.group(5)) + int(req.group(6)) + (int(codes.group(3)) + int(codes.group(4)) if codes else 0)
    return {"rps": rps, "requests": int(req.group(3)), "errors": errors}


def medians(rounds):
    """{server: {measure: median}} from {server: [round dicts]}."""
    out = {}
    for server, figures in rounds.items():
        keys = sorted({k for f in figures for k in f})
        out[server] = {k: median(f[k] for f in figures if f.get(k) is not None)
                       if any(f.get(k) is not None for f in figures) else None for k in keys}
    return out


def ratios(meds):
    """tqserver / nginx for each throughput measure both have."""
    tq, ng = meds.get("tqserver") or {}, meds.get("nginx") or {}
    return {m: round(tq[m] / ng[m], 3) for m in MEASURES if tq.get(m) and ng.get(m)}


def compression_cost(cpu_us):
    """CPU per response spent compressing: each encoding's µs per response
    minus the uncompressed ("identity") one's; {encoding: µs}."""
    base = cpu_us.get("identity")
    if base is None:
        return {}
    return {enc: round(us - base, 1) for enc, us in cpu_us.items() if enc != "identity" and us is not None}


# ---- running it ---------------------------------------------------------------

def make_cert(tmp):
    """A self-signed ECDSA certificate for 127.0.0.1 and localhost."""
    cert, key = os.path.join(tmp, "edge-cert.pem"), os.path.join(tmp, "edge-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    os.chmod(key, 0o644)
    return cert, key


def page100k():
    """A 100 KB HTML page built by PHP (compressible like a real one)."""
    return ('<?php\nheader("Content-Type: text/html; charset=utf-8");\necho "<html><body><ul>\\n";\n'
            'for ($i = 0; $i < 1400; $i++) {\n'
            '    echo "<li class=\\"item\\"><a href=\\"/item/$i\\">Item number $i</a> in the list</li>\\n";\n'
            '}\necho "</ul></body></html>\\n";\n')


def edge_site(bench, public, cert, key, port, tls_port):
    site = os.path.join(bench.tmp, "tq-edge")
    os.makedirs(os.path.join(site, "config"), exist_ok=True)
    os.makedirs(os.path.join(site, "workers", "bench", "config"), exist_ok=True)
    write(os.path.join(site, "config", "server.yaml"), f"""# Generated by bench/run (edge part).
server:
  host: 127.0.0.1
  port: {port}
  grace_period: 2s
  tls:
    port: {tls_port}
    cert: {cert}
    key: {key}
workers:
  directory: workers
php:
  socket_dir: {bench.tmp}/tq-sockets
logging:
  level: warn
admin:
  enabled: false
""")
    write(os.path.join(site, "workers", "bench", "config", "worker.yaml"), f"""# Generated by bench/run (edge part).
path: /
document_root: {public}
php:
  runtime: embed
  pool:
    manager: static
    max_workers: {bench.args.workers}
    max_requests: 0
""")
    return os.path.join(site, "config", "server.yaml")


def nginx_edge_config(bench, public, cert, key, port, tls_port, fpm_sock):
    folder = os.path.join(bench.tmp, "nginx-edge")
    os.makedirs(folder, exist_ok=True)
    keepalive = max(1, bench.args.workers // (os.cpu_count() or 1))
    conf = f"""# Generated by bench/run (edge part).
daemon off;
worker_processes auto;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    types {{ text/html html; text/plain txt; }}
    default_type application/octet-stream;
    keepalive_requests 1000000;
    client_body_temp_path {folder}/body;
    fastcgi_temp_path {folder}/fastcgi;
    proxy_temp_path {folder}/proxy;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_session_cache off;
    ssl_session_tickets off;
    gzip on;
    gzip_types text/plain text/css application/json application/javascript;
    upstream fpm {{ server unix:{fpm_sock}; keepalive {keepalive}; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        listen 127.0.0.1:{tls_port} ssl http2 backlog=4096;
        root {public};
        location / {{ try_files $uri $uri/ =404; }}
        location ~ \\.php$ {{
            try_files $uri =404;
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_param HTTPS $https if_not_empty;
            fastcgi_pass fpm;
            fastcgi_keep_conn on;
        }}
    }}
}}
"""
    path = os.path.join(folder, "nginx.conf")
    write(path, conf)
    return path, folder


class Edge:
    def __init__(self, bench):
        self.bench = bench
        self.ports = {s: (free_port(), free_port()) for s in SERVERS}  # (plain, tls)
        self.procs = {}

    def url(self, server, path, tls=True):
        plain, tls_port = self.ports[server]
        return f"https://127.0.0.1:{tls_port}{path}" if tls else f"http://127.0.0.1:{plain}{path}"

    def server_pids(self, server):
        """The processes whose CPU is the server's own (not PHP's)."""
        proc = self.procs.get(server)
        if not proc or proc.poll() is not None:
            return []
        if server == "tqserver":
            return [proc.pid]
        return [proc.pid] + children_of(proc.pid)

    def start(self, public, cert, key):
        bench = self.bench
        config = edge_site(bench, public, cert, key, *self.ports["tqserver"])
        bench.tq_configs["tqserver-edge"] = config
        proc, why = start_tqserver("tqserver-edge", config, self.ports["tqserver"][0], bench.tmp,
                                   bench.args.workers, "embed")
        if proc:
            self.procs["tqserver"] = proc
        else:
            bench.note(f"edge part: tqserver did not start: {why}")
        fpm_conf, fpm_sock = fpm_config(bench.tmp, "fpm-edge",
                                        f"pm = static\npm.max_children = {bench.args.workers}\n")
        php_fpm = bench.php_fpm
        if php_fpm and start_fpm("php-fpm-edge", php_fpm, fpm_conf, fpm_sock, bench.tmp, bench.args.workers):
            conf, folder = nginx_edge_config(bench, public, cert, key, *self.ports["nginx"], fpm_sock)
            nginx = SERVICES.start("nginx-edge", ["nginx", "-e", os.path.join(folder, "error.log"),
                                                  "-p", folder, "-c", conf],
                                   os.path.join(bench.tmp, "nginx-edge.log"))
            if wait_for(lambda: port_open(self.ports["nginx"][1]) or nginx.poll() is not None, 10) \
                    and nginx.poll() is None:
                self.procs["nginx"] = nginx
            else:
                bench.note("edge part: nginx (TLS) did not start")
        else:
            bench.note("edge part: php-fpm did not start; nginx skipped")
        return list(self.procs)

    def stop(self):
        SERVICES.stop("tqserver-edge")
        SERVICES.stop("nginx-edge")
        SERVICES.stop("php-fpm-edge")


def run_tool(bench, label, argv, parse, timeout=120):
    argv = SERVICES.load_argv(argv)
    if label:
        bench.commands.setdefault(label, shlex.join(argv))
    code, out, err = run_load(argv, timeout)
    try:
        return parse(out)
    except LOAD_OUTPUT_ERRORS:
        log(f"edge part: {argv[0]} failed (exit {code}): {(out + err).strip()[-400:]}")
        return None


def h2load(bench, label, url, seconds):
    argv = ["h2load", "-c", str(H2_CONNECTIONS), "-m", str(H2_STREAMS), "-t", "1",
            "-D", str(max(1, round(seconds))), url]
    return run_tool(bench, label, argv, parse_h2load, timeout=seconds + 60)


def cpu_per_response(bench, edge, server, encoding):
    """µs of the server's own CPU per response of the 100 KB page with
    Accept-Encoding: encoding (over plain HTTP: TLS is measured apart), or
    None when the response is not encoded as asked."""
    url = edge.url(server, "/page100k.php", tls=False)
    probe = subprocess.run(["curl", "-s", "-o", "/dev/null", "-D", "-", "-H", f"Accept-Encoding: {encoding}", url],
                           capture_output=True, text=True)
    got = re.search(r"^content-encoding:\s*(\S+)", probe.stdout, re.I | re.M)
    if encoding != "identity" and (not got or got.group(1).lower() != encoding):
        bench.note(f"edge part: {server} did not answer the 100 KB page with Content-Encoding {encoding}")
        return None
    pids = edge.server_pids(server)
    before = sum(cpu_seconds(p) for p in pids)
    # wrk: HTTP/1.1 with keep-alive, on which both servers end a compressed
    # response of unknown length with a last chunk. (ab speaks HTTP/1.0,
    # where nginx ends it by closing, and ab waited for the last responses
    # until its timeout.)
    argv = wrk_command(url, CPU_CONNECTIONS, CPU_SECONDS, True)
    argv = SERVICES.load_argv(argv[:-1] + ["-H", f"Accept-Encoding: {encoding}", url])
    bench.commands.setdefault(f"edge cpu {encoding}", shlex.join(argv))
    code, out, err = run_load(argv, CPU_SECONDS + 60)
    after = sum(cpu_seconds(p) for p in edge.server_pids(server))
    try:
        done = parse_wrk(out)["requests"]
    except LOAD_OUTPUT_ERRORS:
        log(f"edge part: wrk failed (exit {code}): {(out + err).strip()[-300:]}")
        return None
    return round((after - before) * 1e6 / max(1, done), 1)


def measure_round(bench, edge, server, warmup=False):
    args = bench.args
    seconds = args.warmup if warmup else args.duration

    def label(what):
        return None if warmup else f"edge {what} {server}"

    out = {}
    wrk = run_tool(bench, label("https hello h1"),
                   wrk_command(edge.url(server, "/hello.php"), 20, seconds, True, cpus=1 if args.pin else None),
                   parse_wrk, timeout=seconds + 60)
    out["https_hello_h1_rps"] = wrk["rps"] if wrk else None
    h2 = h2load(bench, label("https hello h2"), edge.url(server, "/hello.php"), seconds)
    out["https_hello_h2_rps"] = h2["rps"] if h2 else None
    st = h2load(bench, label("https static10k h2"), edge.url(server, "/static10k.html"), seconds)
    out["https_static10k_h2_rps"] = st["rps"] if st else None
    ab = run_tool(bench, label("tls new connections"),
                  ["ab", "-q", "-c", "20", "-t", str(max(1, round(seconds))), "-n", "50000",
                   edge.url(server, "/idle.txt")], parse_ab, timeout=seconds + 60)
    out["tls_new_conns_per_s"] = ab["rps"] if ab else None
    out["errors"] = sum(r["errors"] for r in (wrk, h2, st, ab) if r)
    if not warmup:
        for enc in ("identity",) + ENCODINGS[server]:
            out[f"cpu_us_{enc}"] = cpu_per_response(bench, edge, server, enc)
    return out


def idle_tls_memory(bench, edge, server, count):
    """RSS growth of the server while `count` idle TLS keep-alive
    connections are held (bench/hold_conns.py --tls)."""
    pids = edge.server_pids(server)
    if not pids:
        return None
    idle = sum(rss_kb(p) for p in pids)
    hold = os.path.join(REPO, "bench", "hold_conns.py")
    proc = subprocess.Popen([sys.executable, hold, "--tls", "127.0.0.1", str(edge.ports[server][1]),
                             "/idle.txt", str(count)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    opened = int(m.group(1)) if (m := re.search(r"open (\d+)", line)) else 0
    time.sleep(1.0)
    held = sum(rss_kb(p) for p in edge.server_pids(server))
    proc.stdin.close()
    proc.wait(timeout=60)
    return {"connections": count, "opened": opened, "idle_rss_kb": idle, "held_rss_kb": held,
            "growth_mb": round((held - idle) / 1024, 1),
            "per_connection_bytes": round((held - idle) * 1024 / max(1, opened))}


def edge_part(bench, rounds):
    """The results dict the report renders, or None if tqserver's TLS front
    did not start."""
    log("edge part: tqserver (TLS, HTTP/2, compression) against nginx (TLS, http2, gzip) + php-fpm")
    public = os.path.join(bench.tmp, "public-edge")
    os.makedirs(public, exist_ok=True)
    for name in ("hello.php", "static10k.html", "idle.txt"):
        with open(os.path.join(bench.public, name)) as src:
            write(os.path.join(public, name), src.read())
    write(os.path.join(public, "page100k.php"), page100k())
    cert, key = make_cert(bench.tmp)
    edge = Edge(bench)
    try:
        started = edge.start(public, cert, key)
        if "tqserver" not in started:
            return None
        for server in started:
            measure_round(bench, edge, server, warmup=True)
        figures = {s: [] for s in started}
        for round_no in range(rounds):
            for server in round_order(started, round_no):
                result = measure_round(bench, edge, server)
                figures[server].append(result)
                log(f"  edge round {round_no + 1} {server:8} " + "  ".join(
                    f"{k} {v}" for k, v in result.items()))
        meds = medians(figures)
        memory = {s: idle_tls_memory(bench, edge, s, bench.args.connections) for s in started}
    finally:
        edge.stop()
    return {
        "workers": bench.args.workers,
        "h2": {"connections": H2_CONNECTIONS, "streams": H2_STREAMS},
        "rounds": figures,
        "median": meds,
        "ratio": ratios(meds),
        "compression_us": {s: compression_cost({k[len("cpu_us_"):]: v for k, v in (meds.get(s) or {}).items()
                                                if k.startswith("cpu_us_")}) for s in started},
        "memory": memory,
    }


def edge_table(part):
    """The edge part as a markdown table."""
    if not part:
        return "(the edge part did not run)"
    meds, ratio = part.get("median") or {}, part.get("ratio") or {}
    tq, ng = meds.get("tqserver") or {}, meds.get("nginx") or {}

    def num(v, unit=""):
        return "-" if v is None else f"{v:,.1f}{unit}"

    lines = ["| measure | tqserver | nginx + php-fpm | tqserver / nginx |", "|---|---:|---:|---:|"]
    for m, (unit, what) in MEASURES.items():
        r = ratio.get(m)
        lines.append(f"| {what} | {num(tq.get(m))} {unit} | {num(ng.get(m))} {unit} | "
                     f"{'-' if r is None else f'{r:.2f}x'} |")
    cost = part.get("compression_us") or {}
    for server, label in (("tqserver", "tqserver"), ("nginx", "nginx")):
        for enc, us in sorted((cost.get(server) or {}).items()):
            lines.append(f"| compressing the 100 KB PHP page, {enc}: {label}'s CPU per response | "
                         f"{num(us, ' µs') if server == 'tqserver' else ''} | "
                         f"{num(us, ' µs') if server == 'nginx' else ''} | |")
    for server, mem in (part.get("memory") or {}).items():
        if mem:
            lines.append(f"| {mem['opened']:,} idle TLS keep-alive connections: {server}'s RSS growth | "
                         f"{num(mem['growth_mb'], ' MB') if server == 'tqserver' else ''} | "
                         f"{num(mem['growth_mb'], ' MB') if server == 'nginx' else ''} | |")
    return "\n".join(lines)
