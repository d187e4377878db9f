#!/usr/bin/env python3
"""Benchmarks of `type: http` apps (issue 17), against the targets:

- change saved -> new code serving: Go (go build) <= 1.0 s median, Node <= 0.5 s
- proxy to a Go hello handler: tqserver / nginx proxy_pass with upstream
  keep-alive >= 1.0 (wrk, requests/s)
- failed requests during 20 swaps under load: 0

Usage: bench/http_apps.py [--tqserver target/release/tqserver] [--swaps 10]
         [--duration 10] [--connections 20,100]
Needs go, node, nginx and wrk. Prints each figure and the command that made it.
"""

import argparse
import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except OSError:
        return 0, ""
    finally:
        conn.close()


def wait_for(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def make_site(directory):
    """A site with workers/go-hello and workers/node-hello, enabled."""
    os.makedirs(f"{directory}/config")
    os.makedirs(f"{directory}/workers")
    for name in ("go-hello", "node-hello"):
        shutil.copytree(f"{ROOT}/workers/{name}", f"{directory}/workers/{name}",
                        ignore=shutil.ignore_patterns("bin"))
        path = f"{directory}/workers/{name}/config/worker.yaml"
        text = open(path).read().replace("enabled: false", "enabled: true")
        # One process, as nginx gets in nginx_versus: the same app CPU on
        # both sides of the comparison.
        text = re.sub(r"(?m)^instances: \d+", "instances: 1", text)
        open(path, "w").write(text)
    port, admin = free_port(), free_port()
    with open(f"{directory}/config/server.yaml", "w") as f:
        f.write(f"server:\n  host: 127.0.0.1\n  port: {port}\n"
                f"admin:\n  listen: 127.0.0.1:{admin}\nlogging:\n  level: warn\n")
    subprocess.run(["chmod", "-R", "a+rX", directory], check=True)
    return port


def swap_latency(port, directory, app, source, old, swaps):
    """Median seconds from a saved change to the new text being served."""
    path = f"{directory}/workers/{app}/{source}"
    text = open(path).read()
    route = "/go/hello" if app == "go-hello" else "/node/hello"
    times = []
    for n in range(1, swaps + 1):
        marker = f"v{n}-{app}"
        with open(path, "w") as f:
            f.write(text.replace(old, marker + " " + old))
        saved = time.monotonic()
        wait_for(f"{app} version {n}", lambda: marker in get(port, route)[1], timeout=30)
        times.append(time.monotonic() - saved)
        time.sleep(0.3)  # the old instances finish draining
    return statistics.median(times), times


def swaps_under_load(port, directory, swaps):
    """Failed requests of 4 keep-alive clients while node-hello swaps."""
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while not stop.is_set():
            try:
                conn.request("GET", "/node/hello")
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            with lock:
                counts["ok" if ok else "failed"] += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        swap_latency(port, directory, "node-hello", "server.js", "hello from", swaps)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return counts


def wrk(url, connections, duration):
    command = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+(\S+)", out).group(1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p99, int(errors.group(1)) if errors else 0, " ".join(command)


def nginx_versus(directory, tqserver_port, connections, duration):
    """wrk on /go/hello through tqserver and through nginx proxy_pass (one
    go-hello process each, upstream keepalive)."""
    app_port = free_port()
    env = {"PATH": os.environ["PATH"], "WORKER_PORT": str(app_port), "WORKER_NAME": "go-hello",
           "WORKER_ROUTE": "/go", "WORKER_MODE": "production"}
    app = subprocess.Popen([f"{directory}/workers/go-hello/bin/app"], env=env,
                           stderr=subprocess.DEVNULL)
    nginx_port = free_port()
    conf = f"{directory}/nginx.conf"
    with open(conf, "w") as f:
        f.write(f"""worker_processes auto;
pid {directory}/nginx.pid;
error_log {directory}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream app {{ server 127.0.0.1:{app_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{nginx_port};
    location /go/ {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
""")
    nginx = subprocess.Popen(["nginx", "-c", conf, "-g", "daemon off;"])
    try:
        wait_for("the go app", lambda: get(app_port, "/health")[0] == 200)
        wait_for("nginx", lambda: get(nginx_port, "/go/hello")[0] == 200)
        rows = []
        for c in connections:
            wrk(f"http://127.0.0.1:{tqserver_port}/go/hello", c, 2)  # warm up
            tq = wrk(f"http://127.0.0.1:{tqserver_port}/go/hello", c, duration)
            wrk(f"http://127.0.0.1:{nginx_port}/go/hello", c, 2)
            ng = wrk(f"http://127.0.0.1:{nginx_port}/go/hello", c, duration)
            rows.append((c, tq, ng))
        return rows
    finally:
        nginx.terminate()
        app.terminate()
        nginx.wait()
        app.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tqserver", default=f"{ROOT}/target/release/tqserver")
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--load-swaps", type=int, default=20)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", default="20,100")
    parser.add_argument("--skip-proxy", action="store_true")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="tqbench-http-")
    os.chmod(directory, 0o755)
    port = make_site(directory)
    log = open(f"{directory}/tqserver.log", "w")
    server = subprocess.Popen([args.tqserver, "--config", f"{directory}/config/server.yaml"],
                              stdout=log, stderr=log)
    try:
        wait_for("tqserver", lambda: get(port, "/go/hello")[0] == 200, timeout=120)
        go, go_all = swap_latency(port, directory, "go-hello", "main.go", "hello from", args.swaps)
        print(f"change -> new code serving, Go (go build): median {go:.3f} s "
              f"(target <= 1.0 s) over {args.swaps}: {[round(t, 3) for t in go_all]}")
        node, node_all = swap_latency(port, directory, "node-hello", "server.js", "hello from",
                                      args.swaps)
        print(f"change -> new code serving, Node: median {node:.3f} s "
              f"(target <= 0.5 s) over {args.swaps}: {[round(t, 3) for t in node_all]}")
        counts = swaps_under_load(port, directory, args.load_swaps)
        print(f"failed requests during {args.load_swaps} swaps under load (4 keep-alive "
              f"clients): {counts['failed']} of {counts['ok'] + counts['failed']} (target 0)")
        if not args.skip_proxy:
            connections = [int(c) for c in args.connections.split(",")]
            for c, tq, ng in nginx_versus(directory, port, connections, args.duration):
                print(f"proxy to Go hello, c={c}: tqserver {tq[0]:.0f} req/s (p99 {tq[1]}, "
                      f"non-2xx {tq[2]}), nginx proxy_pass keepalive {ng[0]:.0f} req/s "
                      f"(p99 {ng[1]}, non-2xx {ng[2]}): {tq[0] / ng[0]:.2f}x (target >= 1.0)")
                print(f"  commands: {tq[3]}  |  {ng[3]}")
    finally:
        server.terminate()
        server.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
