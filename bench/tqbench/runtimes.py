"""The runtime part: `php.runtime: cgi` against `php.runtime: embed`, in the
same run. Two tqserver instances serve the same apps (configs.RUNTIME_APPS),
one per runtime; the rounds alternate between them, and the figures are
medians of the rounds:

- `max_requests: 1` throughput: ab -c <workers> on a pool of <workers> that
  replaces each worker after one request, so the rate is the rate at which
  the pool can start workers;
- spawn to first response: on a pool of one worker replaced after each
  request, ab -c 1's latency (each request waits for the new worker: fork or
  exec, PHP's start-up, the probe request) minus the median latency of the
  same request on a kept worker; median and p99;
- burst: 10 concurrent requests of a 100 ms script on a dynamic pool of 3
  that may grow to 10: the slowest, minus 100 ms;
- PSS per worker of the kept pool after the rounds (and the zygote's apart).

The functions that only compute (a round's figures, the medians) are
unit-tested; `runtime_part` runs it."""

import json
import os
import shlex

from .configs import RUNTIME_APPS, runtime_site
from .measure import LOAD_OUTPUT_ERRORS, ab_command, parents, parse_ab, parse_ab_percentiles, pss_kb
from .services import SERVICES, run_load, start_tqserver
from .util import free_port, http_get, log, median, round_order, wait_for

RUNTIMES = ("cgi", "embed")
# Requests of the latency runs (kept worker, spawn); more than 50, so that ab
# has a p99 row (measure.parse_ab_percentiles).
LATENCY_REQUESTS = 200
BURST_CONCURRENCY, BURST_SLEEP_MS, BURST_FROM, BURST_TO = 10, 100, 3, 10
# Each round's figures, and what the report calls them.
MEASURES = ("once_rps", "kept_p50_ms", "spawn_p50_ms", "spawn_p99_ms", "burst_ms", "errors")


def round_figures(once, kept, spawn, burst, sleep_ms=BURST_SLEEP_MS):
    """One round of one runtime, from its ab runs: each a dict with parse_ab's
    fields plus "ms" (parse_ab_percentiles' rows), or None if it failed.
    Spawn figures are the spawn pool's latency minus the kept worker's median
    latency; the burst's is its slowest request minus the script's sleep."""
    kept_p50 = kept["ms"][50] if kept else None
    return {
        "once_rps": once["rps"] if once else None,
        "kept_p50_ms": kept_p50,
        "spawn_p50_ms": round(spawn["ms"][50] - kept_p50, 3) if spawn and kept else None,
        "spawn_p99_ms": round(spawn["ms"][99] - kept_p50, 3) if spawn and kept and 99 in spawn["ms"] else None,
        "burst_ms": round(burst["ms"][100] - sleep_ms, 3) if burst else None,
        "errors": sum(run["errors"] for run in (once, kept, spawn, burst) if run),
    }


def medians(rounds):
    """{runtime: {measure: median over its rounds}} (errors summed), from
    {runtime: [round_figures, ...]}; None for a runtime without rounds."""
    out = {}
    for runtime, figures in rounds.items():
        if not figures:
            out[runtime] = None
            continue
        out[runtime] = {m: median(f[m] for f in figures) for m in MEASURES if m != "errors"}
        out[runtime]["errors"] = sum(f["errors"] for f in figures)
    return out


def pss_figures(worker_kb, zygote_kb=None):
    """PSS per worker (KiB), their mean, and the zygote's (embed only)."""
    return {"worker_pss_kb": worker_kb,
            "mean_pss_kb": round(sum(worker_kb) / len(worker_kb)) if worker_kb else None,
            "zygote_pss_kb": zygote_kb}


# ---- running it ---------------------------------------------------------------

class Instance:
    """One runtime's tqserver: ports, and its Popen while it runs."""

    def __init__(self, bench, runtime):
        self.bench, self.runtime = bench, runtime
        self.name = f"tqserver-rt-{runtime}"
        self.port, self.admin_port = free_port(), free_port()
        self.config = runtime_site(bench.tmp, runtime, self.port, self.admin_port, bench.php_cgi,
                                   bench.args.workers)
        self.proc = None

    def url(self, app):
        script = next(s for a, s, _, _ in RUNTIME_APPS if a == app)
        return f"http://127.0.0.1:{self.port}/{app}/{script}"

    def start(self):
        # hello and once, spawn's one, burst's first three.
        expected = 2 * self.bench.args.workers + 1 + BURST_FROM
        self.proc, why = start_tqserver(self.name, self.config, self.port, self.bench.tmp, expected,
                                        self.runtime, probe=f"/hello/{RUNTIME_APPS[0][1]}")
        if not self.proc:
            self.bench.note(f"runtime part: tqserver ({self.runtime}) did not start: {why}")
        return self.proc is not None

    def running(self):
        """Running; restarted (with a note) if it exited."""
        if self.proc and self.proc.poll() is None:
            return True
        if self.proc:
            self.bench.note(f"runtime part: tqserver ({self.runtime}) exited with status "
                            f"{self.proc.returncode}; restarted it")
            SERVICES.stop(self.name)
        return self.start()

    def pss(self, app):
        """pss_figures of the app's workers (pids from its status page; an
        embed pool's zygote is their parent), or None."""
        status = self.status(app) if self.running() else None
        pids = [p["pid"] for p in (status or {}).get("processes") or []]
        if not pids:
            return None
        zygote = parents().get(pids[0])
        return pss_figures([pss_kb(pid) for pid in pids],
                           pss_kb(zygote) if zygote and zygote != self.proc.pid else None)

    def status(self, app):
        """The app's pool status (JSON, full), or None."""
        code, body = http_get(f"http://127.0.0.1:{self.admin_port}/status/{app}?json&full")
        return json.loads(body) if code == 200 else None


def run_ab(bench, label, url, concurrency, requests=None, seconds=None):
    """Runs ab (as the load generator runs) with its percentiles file;
    parse_ab's fields plus "ms", or None (logged) if it failed. The command
    is recorded under `label` unless that is None (a warm-up)."""
    csv_path = os.path.join(bench.tmp, "ab.csv")
    argv = SERVICES.load_argv(ab_command(url, concurrency, csv_path, requests=requests, seconds=seconds))
    if label:
        bench.commands.setdefault(label, shlex.join(argv))
    code, out, err = run_load(argv, 120)
    try:
        result = parse_ab(out)
        with open(csv_path) as f:
            result["ms"] = parse_ab_percentiles(f.read(), result["requests"])
    except (OSError, *LOAD_OUTPUT_ERRORS):
        log(f"runtime part: ab failed (exit {code}): {(out + err).strip()[-500:]}")
        return None
    finally:
        if os.path.exists(csv_path):
            os.unlink(csv_path)
    return result


def measure_round(bench, instance, warmup=False):
    """One round of one runtime's figures (round_figures), or None when its
    server is down; a warm-up round only runs the requests."""
    args = bench.args
    if not instance.running():
        return None
    rt = instance.runtime

    def label(what):
        return None if warmup else f"runtime {what} {rt}"

    seconds = args.warmup if warmup else args.duration
    latency_requests = 20 if warmup else LATENCY_REQUESTS
    once = run_ab(bench, label("max_requests: 1"), instance.url("once"), args.workers, seconds=seconds)
    kept = run_ab(bench, label("kept worker"), instance.url("hello"), 1, requests=latency_requests)
    spawn = run_ab(bench, label("spawn"), instance.url("spawn"), 1, requests=latency_requests)
    # The burst pool back at its minimum (idle workers stop after 1 s).
    if not wait_for(lambda: (instance.status("burst") or {}).get("total processes") == BURST_FROM, 30, 0.1):
        bench.note(f"runtime part: the {rt} burst pool did not shrink back to {BURST_FROM} workers "
                   "within 30 s; burst measured from there")
    burst = run_ab(bench, label("burst"), instance.url("burst"), BURST_CONCURRENCY, requests=BURST_CONCURRENCY)
    return round_figures(once, kept, spawn, burst)


def runtime_part(bench, rounds):
    """php.runtime cgi against embed; the results dict the report renders,
    or None if neither runtime's server started."""
    instances = {rt: Instance(bench, rt) for rt in RUNTIMES}
    log("runtime part: tqserver with php.runtime cgi and with embed")
    started = [rt for rt, inst in instances.items() if inst.start()]
    if not started:
        return None
    for rt in started:  # PHP's caches, the zygote's first fork
        measure_round(bench, instances[rt], warmup=True)
    figures = {rt: [] for rt in RUNTIMES}
    for round_no in range(rounds):
        for rt in round_order(started, round_no):
            result = measure_round(bench, instances[rt])
            if result:
                figures[rt].append(result)
                log(f"  runtime round {round_no + 1} {rt:5} " + "  ".join(
                    f"{m} {result[m]}" for m in MEASURES))
    pss = {}
    for rt in started:
        pss[rt] = instances[rt].pss("hello")
        SERVICES.stop(instances[rt].name)
    return {
        "workers": bench.args.workers,
        "latency_requests": LATENCY_REQUESTS,
        "burst": {"concurrency": BURST_CONCURRENCY, "sleep_ms": BURST_SLEEP_MS, "from": BURST_FROM,
                  "to": BURST_TO},
        "pools": {app: pool.format(workers=bench.args.workers) for app, _, _, pool in RUNTIME_APPS},
        "rounds": figures,
        "median": medians(figures),
        "pss": pss,
    }
