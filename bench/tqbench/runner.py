"""One run of the suite: the state of a run (`Bench`), the parts that
measure (scenarios, memory, burst), and `run`, which starts the servers, runs
the parts and writes the results. Needs the binaries built and the Debian
packages installed (see `cli.prepare`)."""

import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from .configs import dynamic_pool, fpm_config, make_site, nginx_config, static_pool, tqserver_config
from .machine import find_php_fpm, machine_info, versions
from .measure import (LOAD_OUTPUT_ERRORS, children_cpu_seconds, children_of, cpu_seconds, open_fds,
                      parse_fcgi_bench, parse_wrk, php_processes, php_workers, rss_kb, summarize, wrk_command)
from .paths import FCGI_BENCH, HOLD_CONNS, REPO, RESULTS_DIR, TARGET_DIR
from .report import compute_ratios, render
from .edge import edge_part
from .runtimes import runtime_part
from .scenarios import CONFIGS, LISTENER_CONFIGS, SCENARIOS, TQ_CONFIGS
from .services import SERVICES, pinned, run_load, start_fpm, start_tqserver
from .util import (command_output, concurrent_gets, free_port, http_get, log, median, port_open, round_order,
                   unix_socket_open, wait_for, write)


# The tqserver instances the scenarios run through: service name (which is
# also the configuration id of its HTTP front) -> php.runtime.
TQ_INSTANCES = {"tqserver": "cgi", "tqserver-embed": "embed"}


def instance_for(config):
    """The tqserver instance behind a configuration: the embed one for its
    own configuration, the main one for the others (its HTTP front and its
    FastCGI listener)."""
    return config if config in TQ_INSTANCES else "tqserver"


class Bench:
    """The state of one run: settings, endpoints and what was measured."""

    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        self.notes = []
        self.commands = {}
        self.available = set(CONFIGS)
        self.spawn_ms = []
        self.tqs = {}  # TQ_INSTANCES name -> its Popen (None when it is down)
        self.tq_configs = {}  # TQ_INSTANCES name -> its server.yaml

    def note(self, text):
        log("note: " + text)
        self.notes.append(text)

    def command_for(self, config, scenario, duration):
        """The load generator's argv for one configuration and scenario, as
        it runs (on its CPU with --pin)."""
        return SERVICES.load_argv(self.load_command(config, scenario, duration))

    def load_command(self, config, scenario, duration):
        s = scenario
        if config in self.urls:
            # Pinned, wrk has one CPU: one thread.
            return wrk_command(self.urls[config] + s["path"], s["c"], duration, s["keepalive"],
                               cpus=1 if self.args.pin else None)
        script = os.path.join(self.public, s["path"].lstrip("/"))
        common = ["--script", script, "--document-root", self.public,
                  "--duration", f"{duration}s", "--warmup", "0.3s"]
        if config == "ceiling":
            return [FCGI_BENCH, "--spawn", str(self.args.workers), "--php-cgi", self.ceiling_php_cgi] + common
        if config == "fcgi-fpm":
            # One kept-alive connection per php-fpm child: a child serves one
            # connection for as long as it stays open.
            return [FCGI_BENCH, "--connect", self.fpm_sock, "-c", str(self.args.workers)] + common
        if config == "fcgi-tq":
            return [FCGI_BENCH, "--connect", self.listener_sock, "-c", str(s["c"])] + common
        raise KeyError(config)

    def cpu_groups(self):
        """Pids of each server part whose CPU time is accounted per request.
        Only the configuration under load does work; the others idle."""
        groups = {"tqserver": [], "PHP": [], "nginx": []}
        for proc in self.tqs.values():
            if proc and proc.poll() is None:
                groups["tqserver"].append(proc.pid)
                # php-cgi, or the zygote and the workers it forked.
                groups["PHP"] += php_processes(proc.pid)
        for name, proc in SERVICES.procs.items():
            if proc.poll() is not None or name in self.tqs:
                continue
            group = "nginx" if name.startswith("nginx") else "PHP" if name.startswith("php-fpm") else None
            if group:
                groups[group] += [proc.pid] + children_of(proc.pid)
        return groups

    def measure(self, config, scenario, duration, warmup=False):
        argv = self.command_for(config, scenario, duration)
        if not warmup:
            shown = [a.replace(TARGET_DIR + "/", "target/").replace(REPO + "/", "") for a in argv]
            self.commands.setdefault(f"{scenario['id']} {config}", shlex.join(shown))
        groups = self.cpu_groups()
        before = {g: {pid: cpu_seconds(pid) for pid in pids} for g, pids in groups.items()}
        load_before = children_cpu_seconds()
        code, out, err = run_load(argv, duration + 60)
        load_cpu = children_cpu_seconds() - load_before
        # Processes that exited meanwhile (recycled workers) are left out.
        spent = {g: sum(max(0.0, cpu_seconds(pid) - t) for pid, t in pids.items())
                 for g, pids in before.items()}
        try:
            if config in self.urls:  # wrk
                result = parse_wrk(out)
            else:
                result = parse_fcgi_bench(out)
                spawn_ms = result.pop("spawn_ms")
                if config == "ceiling":
                    self.spawn_ms.extend(spawn_ms)
        except LOAD_OUTPUT_ERRORS:
            log(f"{config} {scenario['id']}: load generator failed (exit {code}): {err.strip()[-500:]}")
            result = None
        if result and result["requests"]:
            # Microseconds of CPU per request, per part (the ceiling's
            # php-cgi are the load generator's children: counted there).
            spent["load generator"] = load_cpu
            result["cpu_us"] = {g: t * 1e6 / result["requests"] for g, t in spent.items()}
        if config in TQ_CONFIGS and not self.tqserver_healthy(instance_for(config), f"{config} {scenario['id']}"):
            if result:
                result["stalled"] = True
        return result

    def tqserver_healthy(self, name, after):
        """After load through a tqserver instance: does it still answer? If
        not, note it and start a fresh one so the rest of the run still
        measures."""
        proc = self.tqs.get(name)
        if not proc:
            return True
        runtime = TQ_INSTANCES[name]
        label = CONFIGS[name][0]
        processes = "php-cgi processes" if runtime == "cgi" else "forked workers"
        base = f"http://127.0.0.1:{self.ports[name]}"
        status, body = http_get(base + "/hello.php", timeout=5)
        if status == 200:
            # All workers still serving? N concurrent 100 ms requests take
            # about 100 ms with N workers, N x 100 ms with one.
            workers = self.args.workers
            limit = 0.1 * (workers / 2 + 1)
            elapsed = min(concurrent_gets(base + "/sleep100.php", workers) for _ in range(2))
            if elapsed <= limit:
                return True
            self.note(f"{label} lost workers after `{after}`: {workers} concurrent 100 ms requests took "
                      f"{elapsed * 1000:.0f} ms (about {max(1, round(workers * 0.1 / elapsed))} of {workers} "
                      f"workers serving; {len(php_workers(proc.pid, runtime))} {processes} alive); restarted it")
        else:
            alive = proc.poll() is None
            workers = len(php_workers(proc.pid, runtime)) if alive else 0
            children = "php-cgi children" if runtime == "cgi" else processes
            self.note(f"{label} stopped answering after `{after}` "
                      f"({'process alive, ' + str(workers) + ' ' + children if alive else 'process exited'}; "
                      f"GET /hello.php gave {status} {body[:120]!r}); restarted it")
        SERVICES.stop(name)
        self.tqs[name], why = start_tqserver(name, self.tq_configs[name], self.ports[name], self.tmp,
                                             self.args.workers, runtime)
        if not self.tqs[name]:
            self.note(f"{label} did not restart: {why}")
            self.available -= {"tqserver"} | LISTENER_CONFIGS if name == "tqserver" else {name}
        return False


# ---- the parts of the run -------------------------------------------------------

def sanity_checks(bench):
    """Drops configurations that do not serve the right thing, with a note."""
    for config, url in bench.urls.items():
        status, body = http_get(url + "/hello.php")
        if status != 200 or b"Hello, World!" not in body:
            if config in LISTENER_CONFIGS:
                continue  # handled by the listener probe
            bench.note(f"{CONFIGS[config][0]}: /hello.php gave {status} {body[:200]!r}; skipped")
            bench.available.discard(config)
            continue
        status, body = http_get(url + "/static10k.html")
        if status != 200 or len(body) != 10240:
            bench.note(f"{CONFIGS[config][0]}: /static10k.html gave {status}, {len(body)} bytes")


def note_log_volume(bench, path, label="tqserver"):
    """Per-request logging would skew the comparison (nginx and php-fpm log
    nothing per request here): say how much a tqserver wrote, and what."""
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return
    if len(lines) < 100:
        return
    # "2026-...Z  WARN message key=value ..." -> "WARN message"
    kinds = {}
    for line in lines:
        words = line.split()[1:]
        text = " ".join(w for w in words if "=" not in w)
        kinds[text] = kinds.get(text, 0) + 1
    top = sorted(kinds.items(), key=lambda kv: -kv[1])[:3]
    bench.note(f"{label} (logging.level warn) wrote {len(lines)} log lines during the load runs; most: "
               + "; ".join(f"{n} x `{text[:100]}`" for text, n in top))


def run_scenarios(bench, selected):
    args = bench.args
    results = []
    for scenario in SCENARIOS:
        if selected and scenario["id"] not in selected:
            continue
        configs = [c for c in scenario["configs"] if c in bench.available]
        log(f"scenario {scenario['id']}: {', '.join(configs)}")
        rounds = {c: [] for c in configs}
        # A short unmeasured run of each first: opcache, caches, pools.
        for config in configs:
            bench.measure(config, scenario, args.warmup, warmup=True)
        for round_no in range(args.rounds):
            for config in round_order(configs, round_no):
                result = bench.measure(config, scenario, args.duration)
                rounds[config].append(result)
                if result:
                    log(f"  round {round_no + 1} {config:14} {result['rps']:>10.1f} req/s  "
                        f"p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  "
                        f"errors {result['errors']}")
        summary = {}
        for config, values in rounds.items():
            # fcgi-bench keeps one request in flight per PHP process there.
            concurrency = args.workers if config in ("ceiling", "fcgi-fpm") else scenario["c"]
            summary[config] = summarize(values, concurrency)
        results.append({k: scenario[k] for k in ("id", "label", "path", "c", "keepalive")}
                       | {"configs": summary})
    return results


def hold_connections(port, count, pid_list):
    """Opens `count` idle keep-alive connections to port; returns what it saw
    and the summed RSS of pid_list() while they were open."""
    proc = subprocess.Popen(
        SERVICES.load_argv([sys.executable, HOLD_CONNS, "127.0.0.1", str(port), "/idle.txt", str(count)]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    SERVICES.transient.add(proc)
    try:
        line = proc.stdout.readline().split()
        opened, failed = int(line[1]), int(line[3])
        time.sleep(1.0)  # let the server settle
        pids = pid_list()
        held_kb = sum(rss_kb(p) for p in pids)
        fds = sum(open_fds(p) for p in pids)
        proc.stdin.close()
        still_open = int(proc.stdout.readline().split()[1])
        proc.wait(timeout=30)
        return {"opened": opened, "failed": failed, "first_error": line[5],
                "still_open_after": still_open, "rss_kb": held_kb, "server_fds": fds}
    finally:
        SERVICES.transient.discard(proc)
        if proc.poll() is None:
            proc.kill()


def memory_part(bench, main_port, nginx_proc, count):
    """tqserver's own RSS (not its php-cgi) idle and with `count` idle
    keep-alive connections, on a fresh tqserver; nginx beside it."""
    log(f"memory: fresh tqserver, then {count} idle keep-alive connections")
    proc, why = start_tqserver("tqserver-memory", bench.tq_configs["tqserver"], main_port, bench.tmp,
                               bench.args.workers)
    if not proc:
        bench.note(f"memory part skipped: {why}")
        return None
    time.sleep(1.0)
    idle_kb = rss_kb(proc.pid)
    held = hold_connections(main_port, count, lambda: [proc.pid])
    time.sleep(1.0)
    after_kb = rss_kb(proc.pid)
    SERVICES.stop("tqserver-memory")
    result = {"connections": count, "tqserver": {
        "idle_rss_kb": idle_kb, "held_rss_kb": held["rss_kb"], "after_close_rss_kb": after_kb,
        "per_connection_bytes": round((held["rss_kb"] - idle_kb) * 1024 / max(1, held["opened"])),
        **{k: v for k, v in held.items() if k != "rss_kb"}}}
    if held["opened"] < count:
        bench.note(f"memory: tqserver accepted {held['opened']} of {count} connections "
                   f"(first error {held['first_error']})")
    if held["still_open_after"] < held["opened"]:
        bench.note(f"memory: tqserver closed {held['opened'] - held['still_open_after']} "
                   f"idle connections while they were held")
    if nginx_proc:
        def nginx_pids():
            return [nginx_proc.pid] + children_of(nginx_proc.pid)
        idle = sum(rss_kb(p) for p in nginx_pids())
        held = hold_connections(bench.ports["nginx-fpm"], count, nginx_pids)
        result["nginx"] = {"idle_rss_kb": idle, "held_rss_kb": held["rss_kb"],
                           "per_connection_bytes": round((held["rss_kb"] - idle) * 1024 / max(1, held["opened"])),
                           **{k: v for k, v in held.items() if k != "rss_kb"}}
    return result


def burst_once(url, manager_pid, concurrency, sleep_ms, target):
    """Fires `concurrency` slow requests at once; returns timings in ms."""
    barrier = threading.Barrier(concurrency + 1)
    replies = [None] * concurrency

    def client(i):
        barrier.wait()
        replies[i] = http_get(f"{url}?ms={sleep_ms}", timeout=30)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    samples = []
    t0 = time.time()
    barrier.wait()
    # Sample the number of worker processes every few ms until all replied.
    reached = None
    while any(t.is_alive() for t in threads):
        n = len(children_of(manager_pid))
        now = time.time()
        samples.append((round((now - t0) * 1000, 1), n))
        if reached is None and n >= target:
            reached = (now - t0) * 1000
        time.sleep(0.002)
    done = (time.time() - t0) * 1000
    starts = {}
    errors = 0
    for status, body in replies:
        if status != 200:
            errors += 1
            continue
        pid, started = body.decode().split()
        starts[pid] = min(float(started), starts.get(pid, float("inf")))
    serving = sorted(starts.values())
    return {
        "ms_to_target_processes": round(reached, 1) if reached is not None else None,
        "ms_to_target_serving": round((serving[target - 1] - t0) * 1000, 1) if len(serving) >= target else None,
        "distinct_workers": len(serving),
        "ms_all_done": round(done, 1),
        "errors": errors,
        "max_processes": max((n for _, n in samples), default=0),
        "samples": len(samples),
        "sample_interval_ms": round(done / max(1, len(samples)), 2),
    }


def burst_part(bench, rounds):
    """tqserver dynamic 3..10 vs php-fpm pm=dynamic start 3 max 10: 20
    concurrent 1 s requests; time until 10 processes exist and until 10
    distinct workers run requests."""
    concurrency, sleep_ms, target = 20, 1000, 10
    port = free_port()
    config = tqserver_config(bench.tmp, "tq-burst", bench.public, port, bench.php_cgi,
                             dynamic_pool(), None)
    fpm_conf, _ = fpm_config(bench.tmp, "fpm-burst",
                             "pm = dynamic\npm.max_children = 10\npm.start_servers = 3\n"
                             "pm.min_spare_servers = 3\npm.max_spare_servers = 3\n")
    out = {"concurrency": concurrency, "sleep_ms": sleep_ms, "target_workers": target,
           "tqserver": [], "php-fpm": [],
           "tqserver_pool": "dynamic, min_workers 3, start_workers 3, max_workers 10",
           "php_fpm_pool": "pm=dynamic, start_servers 3, min_spare 3, max_spare 3, max_children 10"}
    for round_no in range(rounds):
        log(f"burst round {round_no + 1}: tqserver dynamic 3..10")
        proc, why = start_tqserver("tqserver-burst", config, port, bench.tmp, 3)
        if proc:
            time.sleep(0.5)
            out["tqserver"].append(burst_once(f"http://127.0.0.1:{port}/burst.php", proc.pid,
                                              concurrency, sleep_ms, target))
            SERVICES.stop("tqserver-burst")
        else:
            bench.note(f"burst: tqserver did not start: {why}")
        log(f"burst round {round_no + 1}: php-fpm pm=dynamic 3..10 behind nginx")
        if not bench.nginx_ok:
            bench.note("burst: php-fpm not measured (nginx did not start)")
            continue
        fpm = start_fpm("fpm-burst", bench.php_fpm, fpm_conf, bench.fpm_burst_sock, bench.tmp, 3)
        if fpm:
            time.sleep(0.5)
            out["php-fpm"].append(burst_once(f"http://127.0.0.1:{bench.ports['nginx-burst']}/burst.php",
                                             fpm.pid, concurrency, sleep_ms, target))
            SERVICES.stop("fpm-burst")
        else:
            bench.note("burst: php-fpm (dynamic) did not start")
        for name in ("tqserver", "php-fpm"):
            if out[name]:
                log(f"  {name}: {out[name][-1]}")
    for name in ("tqserver", "php-fpm"):
        keys = ("ms_to_target_processes", "ms_to_target_serving", "ms_all_done", "errors")
        out[name + "_median"] = {k: median(r[k] for r in out[name]) for k in keys} if out[name] else None
    return out


def ceiling_wrapper(php_cgi, cpu):
    """A script that runs php-cgi on `cpu`: exec all the way, so php-cgi
    keeps the pid fcgi-bench started (its kill and parent-death signal
    reach it) and the socket at fd 0."""
    return "#!/bin/sh\nexec " + shlex.join(pinned([php_cgi], cpu)) + ' "$@"\n'


# ---- the whole run ------------------------------------------------------------

def run(args):
    """Starts every server, runs the selected parts, stops everything, and
    writes bench/results/<time>.json and .md (and the docs if asked)."""
    php_cgi = os.path.realpath(shutil.which("php-cgi") or sys.exit("bench/run: php-cgi not found"))
    php_version = re.search(r"PHP (\d+\.\d+\.\d+)", command_output([php_cgi, "-v"])).group(1)
    php_fpm = find_php_fpm(php_version)
    selected = set(args.only.split(",")) if args.only else None

    tmp = tempfile.mkdtemp(prefix="tqbench-")
    os.chmod(tmp, 0o755)  # php-fpm and tqserver's workers run as www-data when root
    bench = Bench(args, tmp)
    try:
        bench.php_cgi, bench.php_fpm = php_cgi, php_fpm
        bench.ceiling_php_cgi = php_cgi
        if args.pin:
            # fcgi-bench (a load generator) starts the ceiling's php-cgi,
            # which would inherit its CPU: a wrapper puts them on the servers'.
            bench.ceiling_php_cgi = os.path.join(tmp, "php-cgi-pinned")
            write(bench.ceiling_php_cgi, ceiling_wrapper(php_cgi, SERVICES.server_cpu), 0o755)
        bench.public = make_site(tmp)
        ports = {name: free_port() for name in ("tqserver", "tqserver-embed", "nginx-fpm", "nginx-fpm-ka",
                                                "nginx-burst", "nginx-tq", "nginx-tq-noka")}
        bench.ports = ports
        bench.listener_sock = os.path.join(tmp, "tq-listener.sock")
        static_fpm = f"pm = static\npm.max_children = {args.workers}\n"
        fpm_conf, bench.fpm_sock = fpm_config(tmp, "fpm", static_fpm)
        fpm_ka_conf, fpm_ka_sock = fpm_config(tmp, "fpm-ka", static_fpm)
        bench.fpm_burst_sock = os.path.join(tmp, "fpm-burst", "php-fpm.sock")
        socks = {"fpm": bench.fpm_sock, "fpm-ka": fpm_ka_sock, "fpm-burst": bench.fpm_burst_sock}
        nginx_conf = nginx_config(tmp, bench.public, ports, socks, bench.listener_sock, args.workers)
        bench.urls = {c: f"http://127.0.0.1:{ports[k]}" for c, k in (
            ("tqserver", "tqserver"), ("tqserver-embed", "tqserver-embed"), ("nginx-fpm", "nginx-fpm"), ("nginx-fpm-ka", "nginx-fpm-ka"),
            ("nginx-tq", "nginx-tq"), ("nginx-tq-noka", "nginx-tq-noka"), ("nginx", "nginx-fpm"))}

        log(f"temp dir {tmp}; starting php-fpm, tqserver, nginx")
        if not php_fpm or not start_fpm("php-fpm", php_fpm, fpm_conf, bench.fpm_sock, tmp, args.workers):
            bench.note("php-fpm did not start; nginx+php-fpm configurations skipped")
            bench.available -= {"nginx-fpm", "fcgi-fpm"}
        if not php_fpm or not start_fpm("php-fpm-ka", php_fpm, fpm_ka_conf, fpm_ka_sock, tmp, args.workers):
            bench.note("php-fpm (for keepalive) did not start; nginx+php-fpm keepalive skipped")
            bench.available -= {"nginx-fpm-ka"}

        # tqserver with the FastCGI listener; without it if the config is refused.
        bench.tq_configs["tqserver"] = tqserver_config(tmp, "tq", bench.public, ports["tqserver"], php_cgi,
                                                       static_pool(args.workers), bench.listener_sock)
        tq, why = start_tqserver("tqserver", bench.tq_configs["tqserver"], ports["tqserver"], tmp, args.workers)
        if not tq and "fastcgi" in (why or ""):
            bench.note(f"(c) skipped: tqserver refused `fastcgi.listen` ({why[:300]})")
            bench.tq_configs["tqserver"] = tqserver_config(tmp, "tq", bench.public, ports["tqserver"], php_cgi,
                                                           static_pool(args.workers), None)
            tq, why = start_tqserver("tqserver", bench.tq_configs["tqserver"], ports["tqserver"], tmp,
                                     args.workers)
        if not tq:
            bench.note(f"tqserver did not start: {why}")
            bench.available -= {"tqserver"} | LISTENER_CONFIGS
        elif not LISTENER_CONFIGS.isdisjoint(bench.available):
            if not wait_for(lambda: unix_socket_open(bench.listener_sock), 3):
                bench.note("(c) skipped: tqserver accepted `fastcgi.listen` but its FastCGI socket never opened "
                           "(listener not built yet?)")
                bench.available -= LISTENER_CONFIGS
        tq_idle_kb = rss_kb(tq.pid) if tq else None
        bench.tqs["tqserver"] = tq

        # The same app and pool on the embed runtime, on a port of its own.
        bench.tq_configs["tqserver-embed"] = tqserver_config(
            tmp, "tq-embed", bench.public, ports["tqserver-embed"], None, static_pool(args.workers), None,
            runtime="embed")
        embed, why = start_tqserver("tqserver-embed", bench.tq_configs["tqserver-embed"],
                                    ports["tqserver-embed"], tmp, args.workers, "embed")
        if not embed:
            bench.note(f"tqserver embed did not start: {why}")
            bench.available.discard("tqserver-embed")
        bench.tqs["tqserver-embed"] = embed

        nginx = SERVICES.start("nginx", ["nginx", "-e", os.path.join(tmp, "nginx", "error.log"),
                                         "-p", os.path.join(tmp, "nginx"), "-c", nginx_conf],
                               os.path.join(tmp, "nginx.log"))
        if not wait_for(lambda: port_open(ports["nginx-fpm"]) or nginx.poll() is not None, 10) \
                or nginx.poll() is not None:
            bench.note("nginx did not start; nginx configurations skipped")
            bench.available -= {"nginx-fpm", "nginx-fpm-ka", "nginx-tq", "nginx-tq-noka", "nginx"}
            nginx = None
        bench.nginx_ok = nginx is not None
        sanity_checks(bench)
        if not LISTENER_CONFIGS.isdisjoint(bench.available):
            status, body = http_get(bench.urls["nginx-tq"] + "/hello.php")
            if status != 200 or b"Hello, World!" not in body:
                bench.note(f"(c) skipped: nginx -> tqserver listener gave {status} {body[:200]!r}")
                bench.available -= LISTENER_CONFIGS

        scenarios = run_scenarios(bench, selected)
        note_log_volume(bench, os.path.join(tmp, "tqserver.log"))
        note_log_volume(bench, os.path.join(tmp, "tqserver-embed.log"), "tqserver embed")
        tq = bench.tqs["tqserver"]
        tq_after_kb = rss_kb(tq.pid) if tq and tq.poll() is None else None
        if tq and tq.poll() is not None:
            bench.note(f"tqserver exited during the run with status {tq.returncode}; see its log")
        embed = bench.tqs["tqserver-embed"]
        if embed and embed.poll() is not None:
            bench.note(f"tqserver embed exited during the run with status {embed.returncode}; see its log")
        SERVICES.stop("tqserver-embed")  # the parts below do not use it

        memory = None
        if not selected or "memory" in selected:
            SERVICES.stop("tqserver")  # a fresh one, on the same port
            memory = memory_part(bench, ports["tqserver"], nginx, args.connections)
            if memory:
                memory["tqserver"]["main_instance_idle_rss_kb"] = tq_idle_kb
                memory["tqserver"]["main_instance_after_load_rss_kb"] = tq_after_kb
        runtime = None
        if not selected or "runtime" in selected:
            SERVICES.stop("tqserver")
            runtime = runtime_part(bench, args.rounds)
        edge = None
        if not selected or "edge" in selected:
            SERVICES.stop("tqserver")
            edge = edge_part(bench, args.rounds)
        burst = None
        if not selected or "burst" in selected:
            SERVICES.stop("tqserver")
            SERVICES.stop("php-fpm")
            SERVICES.stop("php-fpm-ka")
            burst = burst_part(bench, args.burst_rounds)
    finally:
        SERVICES.stop_all()
        config_files = {}
        for rel in ("tq/config/server.yaml", "tq/workers/bench/config/worker.yaml",
                    "tq-embed/workers/bench/config/worker.yaml",
                    "nginx/nginx.conf", "fpm/php-fpm.conf", "fpm-ka/php-fpm.conf",
                    "tq-burst/workers/bench/config/worker.yaml", "fpm-burst/php-fpm.conf",
                    "rt-cgi/config/server.yaml", "rt-cgi/workers/once/config/worker.yaml",
                    "rt-embed/workers/once/config/worker.yaml", "rt-embed/workers/spawn/config/worker.yaml",
                    "rt-embed/workers/burst/config/worker.yaml",
                    "tq-edge/config/server.yaml", "tq-edge/workers/bench/config/worker.yaml",
                    "nginx-edge/nginx.conf"):
            path = os.path.join(tmp, rel)
            if os.path.exists(path):
                with open(path) as f:
                    config_files[rel] = f.read().replace(tmp, "$TMP")
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "") \
        + ("-pin" if args.pin else "")
    results = {
        "meta": {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine_info(),
            "versions": versions(php_cgi, php_fpm),
            "settings": {"rounds": args.rounds, "duration": args.duration, "warmup": args.warmup,
                         "workers": args.workers, "quick": args.quick, "connections": args.connections,
                         "pinned": {"servers_cpu": SERVICES.server_cpu, "load_cpu": SERVICES.load_cpu}
                         if args.pin else None},
            "notes": bench.notes,
            "commands": {k: c.replace(tmp, "$TMP") for k, c in bench.commands.items()},
            "config_files": config_files,
        },
        "scenarios": scenarios,
        "ratios": compute_ratios(scenarios),
        "memory": memory,
        "burst": burst,
        "runtime": runtime,
        "edge": edge,
        "spawn_ms": bench.spawn_ms,
    }
    os.makedirs(RESULTS_DIR, exist_ok=True)
    json_path = os.path.join(RESULTS_DIR, stamp + ".json")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1)
    table = render(results, args.docs)
    with open(os.path.join(RESULTS_DIR, stamp + ".md"), "w") as f:
        f.write(table + "\n")
    log(f"results: {os.path.relpath(json_path, REPO)}")

