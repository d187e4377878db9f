"""Measuring: the load generators' command lines and what they print (wrk,
fcgi-bench), a configuration's rounds summarised as medians, and what /proc
says about a process (CPU time, RSS, open files, children).

The parsers raise one of LOAD_OUTPUT_ERRORS on output they do not recognise
(a load generator that failed or was killed); the caller records a failed
round."""

import json
import os
import re
import resource

from .scenarios import CPU_GROUPS
from .util import median

# ---- /proc ------------------------------------------------------------------


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pss_kb(pid):
    """Proportional set size: shared pages divided among the processes that
    map them (forked workers sharing OPcache count their share); 0 if gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def stat_fields(data):
    """The fields of a /proc/<pid>/stat line after "(comm)", which may itself
    hold spaces and parentheses: [state, ppid, pgrp, ...]. Field n of proc(5)
    is at index n - 3."""
    return data[data.rindex(b")") + 2:].split()


def stat_ppid(data):
    return int(stat_fields(data)[1])


def stat_cpu_ticks(data):
    """utime + stime (fields 14 and 15), in clock ticks."""
    fields = stat_fields(data)
    return int(fields[11]) + int(fields[12])


def parents():
    """{pid: parent pid} of every process (scans /proc: no children file on
    this kernel)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        out[int(name)] = stat_ppid(data)
    return out


def children_of(ppid, tree=None):
    """Pids whose parent is ppid (in `tree`, a parents() taken before, or now)."""
    tree = parents() if tree is None else tree
    return [pid for pid, parent in tree.items() if parent == ppid]


def php_processes(tqserver_pid, tree=None):
    """A tqserver's PHP processes: its children (php-cgi, or an embed pool's
    zygote) and theirs (the zygote's forked workers)."""
    tree = parents() if tree is None else tree
    children = children_of(tqserver_pid, tree)
    return children + [pid for child in children for pid in children_of(child, tree)]


def php_workers(tqserver_pid, runtime, tree=None):
    """A tqserver's PHP workers: its php-cgi children, or with runtime
    "embed" its zygotes' children."""
    tree = parents() if tree is None else tree
    children = children_of(tqserver_pid, tree)
    if runtime != "embed":
        return children
    return [pid for zygote in children for pid in children_of(zygote, tree)]


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User plus system CPU time a process has used so far."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0.0
    return stat_cpu_ticks(data) / CLK_TCK


def children_cpu_seconds():
    """CPU time of this harness's finished children (the load generators)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---- load generators --------------------------------------------------------

# What parse_wrk and parse_fcgi_bench raise on output they cannot read.
LOAD_OUTPUT_ERRORS = (AttributeError, KeyError, ValueError, IndexError)

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(text):
    """A wrk duration ("31.00us", "1.70ms", "1.20s", "2.00m") in milliseconds."""
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * UNITS_MS[unit]


def wrk_command(url, concurrency, duration, keepalive, cpus=None):
    """wrk with a thread per CPU it has (cpus, else the machine's), at most
    one per connection."""
    threads = min(cpus or os.cpu_count() or 1, concurrency)
    argv = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{max(1, round(duration))}s",
            "--latency", "--timeout", "10s"]
    if not keepalive:
        argv += ["-H", "Connection: close"]
    return argv + [url]


def parse_wrk(out):
    """wrk --latency's report: rate, p50 and p99, requests, errors (socket
    errors plus non-2xx/3xx responses)."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    dist = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(n) for n in sockets.groups()) if sockets else 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": to_ms(dist["50"]),
        "p99_ms": to_ms(dist["99"]),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "errors": socket_errors + (int(non_2xx.group(1)) if non_2xx else 0),
    }


def parse_fcgi_bench(out):
    """fcgi-bench's JSON line (its last line of output); errors are transport
    errors, timeouts and non-2xx responses together."""
    data = json.loads(out.strip().splitlines()[-1])
    return {
        "rps": data["rps"],
        "p50_ms": data["latency_ms"]["p50"],
        "p99_ms": data["latency_ms"]["p99"],
        "requests": data["requests"],
        "errors": data["errors"] + data["timeouts"] + data["non_2xx"],
        "spawn_ms": data.get("spawn_ms", []),
    }


def ab_command(url, concurrency, csv_path, requests=None, seconds=None):
    """ab (ApacheBench, one thread) for `requests` requests or `seconds`
    seconds, writing its percentiles to csv_path (-e). Used where a run is
    counted in requests, not seconds: spawning, the burst."""
    argv = ["ab", "-q", "-c", str(concurrency), "-e", csv_path]
    if seconds is not None:
        argv += ["-t", str(max(1, round(seconds)))]  # implies -n 50000
    if requests is not None:
        argv += ["-n", str(requests)]
    return argv + [url]


def parse_ab(out):
    """ab's report: rate, requests, errors (failed requests plus non-2xx
    responses)."""
    non_2xx = re.search(r"^Non-2xx responses:\s+(\d+)", out, re.M)
    return {
        "rps": float(re.search(r"^Requests per second:\s+([\d.]+)", out, re.M).group(1)),
        "requests": int(re.search(r"^Complete requests:\s+(\d+)", out, re.M).group(1)),
        "errors": int(re.search(r"^Failed requests:\s+(\d+)", out, re.M).group(1))
        + (int(non_2xx.group(1)) if non_2xx else 0),
    }


def parse_ab_percentiles(csv, requests):
    """ab -e's file: {percent: ms} for 0..100, in microsecond resolution
    (its printed table has whole milliseconds). ab reads the row for percent
    p at index int(0.5 + requests * p / 100) of its sorted times, past the
    end of them for the top rows when there are fewer than 50 requests (the
    row holds garbage); those rows are left out. Row 100 is always the
    slowest request."""
    rows = {}
    for line in csv.strip().splitlines()[1:]:
        percent, ms = line.split(",")
        percent = int(percent)
        if percent == 100 or int(0.5 + requests * percent / 100) < requests:
            rows[percent] = float(ms)
    if 100 not in rows or 50 not in rows:
        raise ValueError("ab -e: no 50% or 100% row")
    return rows


# ---- rounds -----------------------------------------------------------------


def summarize(values, concurrency):
    """One configuration's rounds in a scenario (None for a round whose load
    generator failed), with the medians of the rounds that measured."""
    ok = [v for v in values if v]
    return {
        "rounds": values,
        "median": {
            "rps": median(v["rps"] for v in ok),
            "p50_ms": median(v["p50_ms"] for v in ok),
            "p99_ms": median(v["p99_ms"] for v in ok),
            "errors": sum(v["errors"] for v in ok),
            "stalled_rounds": sum(1 for v in ok if v.get("stalled")),
            "cpu_us": {g: median(v["cpu_us"].get(g) for v in ok if "cpu_us" in v)
                       for g in CPU_GROUPS} if any("cpu_us" in v for v in ok) else None,
        } if ok else None,
        "concurrency": concurrency,
    }
