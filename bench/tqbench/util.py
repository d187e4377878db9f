"""Small helpers: logging, polling with a deadline, sockets and HTTP GETs, files."""

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def unix_socket_open(path):
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(0.2)
            sock.connect(path)
            return True
    except OSError:
        return False


def wait_for(predicate, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def http_get(url, timeout=5):
    """(status, body) or (None, error text)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError as err:
        return None, str(err).encode()


def concurrent_gets(url, count, timeout=10):
    """Seconds until `count` simultaneous GETs of url have all answered."""
    threads = [threading.Thread(target=http_get, args=(url, timeout)) for _ in range(count)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started


def command_output(argv):
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return (done.stdout + done.stderr).strip()
    except OSError as err:
        return f"unavailable ({err})"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def round_order(configs, round_no):
    """The configurations of a round: all of them, alternating, the order
    rotated each round so no configuration always goes first."""
    return configs[round_no % len(configs):] + configs[:round_no % len(configs)]


def write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)

