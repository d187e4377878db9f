"""Reporting: the tables printed after a run, docs/BENCHMARKS.md and
docs/benchmarks.svg, all from a results dict (as saved in bench/results/*.json;
`bench/run --render FILE` re-renders one)."""

import html
import os
import statistics

from .paths import DOCS_MD, DOCS_SVG, REPO
from .scenarios import CONFIGS, CPU_GROUPS
from .targets import evaluate as evaluate_targets
from .targets import rps_of
from .edge import edge_table
from .util import log


def ratio(a, b):
    return round(a / b, 2) if a and b else None


RATIO_NAMES = ["tqserver / nginx+php-fpm", "tqserver / nginx+php-fpm keepalive",
               "embed / tqserver", "embed / nginx+php-fpm",
               "listener / nginx+php-fpm", "listener / nginx+php-fpm keepalive",
               "tqserver / ceiling", "tqserver / nginx"]


def compute_ratios(scenarios):
    out = {}
    for s in scenarios:
        tq = rps_of(s, "tqserver")
        embed = rps_of(s, "tqserver-embed")
        out[s["id"]] = {k: v for k, v in {
            "tqserver / nginx+php-fpm": ratio(tq, rps_of(s, "nginx-fpm")),
            "tqserver / nginx+php-fpm keepalive": ratio(tq, rps_of(s, "nginx-fpm-ka")),
            # tqserver embed (php.runtime: embed) over tqserver (php-cgi).
            "embed / tqserver": ratio(embed, tq),
            "embed / nginx+php-fpm": ratio(embed, rps_of(s, "nginx-fpm")),
            "listener / nginx+php-fpm": ratio(rps_of(s, "nginx-tq"), rps_of(s, "nginx-fpm")),
            "listener / nginx+php-fpm keepalive": ratio(rps_of(s, "nginx-tq"), rps_of(s, "nginx-fpm-ka")),
            "tqserver / ceiling": ratio(tq, rps_of(s, "ceiling")),
            "tqserver / nginx": ratio(tq, rps_of(s, "nginx")),
        }.items() if v is not None}
    return out


def fmt(value, digits=1):
    if value is None:
        return "-"
    if isinstance(value, float) and digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def pinning(results):
    """With --pin, {"servers_cpu": n, "load_cpu": n}; else None."""
    return results.get("meta", {}).get("settings", {}).get("pinned")


def pinning_line(pin):
    return (f"Pinned (`--pin`): the servers (tqserver and its PHP processes, nginx, php-fpm) on CPU "
            f"{pin['servers_cpu']}, the load generators (wrk, ab, fcgi-bench) on CPU {pin['load_cpu']}.")


def markdown_tables(results):
    pin = pinning(results)
    lines = [pinning_line(pin), ""] if pin else []
    lines += ["| scenario | configuration | connections | req/s | p50 ms | p99 ms | errors |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for s in results["scenarios"]:
        for config, entry in s["configs"].items():
            m = entry["median"]
            if not m:
                lines.append(f"| {s['label']} | {CONFIGS[config][0]} | {entry['concurrency']} | failed | | | |")
                continue
            lines.append(f"| {s['label']} | {CONFIGS[config][0]} | {entry['concurrency']} | "
                         f"{fmt(m['rps'], 0)} | {fmt(m['p50_ms'], 2)} | {fmt(m['p99_ms'], 2)} | {m['errors']}"
                         + (f" (tqserver stalled after {m['stalled_rounds']} round(s))" if m.get("stalled_rounds") else "")
                         + " |")
    names = [n for n in RATIO_NAMES if any(n in r for r in results["ratios"].values())]
    lines += ["", "Ratios of median requests/s:", "",
              "| scenario | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for s in results["scenarios"]:
        ratios = results["ratios"].get(s["id"], {})
        cells = [f"{ratios[n]:.2f}" if n in ratios else "" for n in names]
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_table(results):
    """Where each configuration's CPU goes, per request (hello.php scenarios)."""
    cpus = results.get("meta", {}).get("machine", {}).get("nproc") or os.cpu_count() or 1
    # Pinned, the servers have one CPU: their parts bound the rate.
    pin = pinning(results)
    bound_of = "servers on 1 CPU" if pin else f"{cpus} CPUs"
    lines = ["| scenario | configuration | " + " | ".join(CPU_GROUPS) + f" | total | req/s bound ({bound_of}) |",
             "|---|---|" + "---:|" * (len(CPU_GROUPS) + 2)]
    for s in results["scenarios"]:
        if not s["id"].startswith("hello"):
            continue
        for config, entry in s["configs"].items():
            cpu = (entry["median"] or {}).get("cpu_us")
            if not cpu:
                continue
            total = sum(v for v in cpu.values() if v)
            cells = [fmt(cpu.get(g), 1) if cpu.get(g) else "" for g in CPU_GROUPS]
            if pin:
                # The ceiling's php-cgi count with fcgi-bench, its parent.
                servers = sum(v for g, v in cpu.items() if v and g != "load generator")
                bound = f"{1e6 / servers:,.0f}" if servers and config != "ceiling" else ""
            else:
                bound = f"{cpus * 1e6 / total:,.0f}" if total else ""
            lines.append(f"| {s['label']} | {CONFIGS[config][0]} | " + " | ".join(cells)
                         + f" | {fmt(total, 1)} | {bound} |")
    if len(lines) == 2:
        return "Not measured in this run."
    return "\n".join(lines)


def memory_table(mem):
    if not mem:
        return "Not measured in this run."
    lines = [f"| server | idle RSS | RSS holding {mem['connections']:,} idle keep-alive connections | "
             "per connection | connections held | still open after |", "|---|---:|---:|---:|---:|---:|"]
    for name in ("tqserver", "nginx"):
        m = mem.get(name)
        if m:
            lines.append(f"| {name}{' (all processes)' if name == 'nginx' else ' (its own process, not php-cgi)'} | "
                         f"{m['idle_rss_kb'] / 1024:.1f} MB | {m['held_rss_kb'] / 1024:.1f} MB | "
                         f"{m['per_connection_bytes']:,} B | {m['opened']:,} | {m['still_open_after']:,} |")
    return "\n".join(lines)


def burst_table(burst, spawn_ms):
    lines = []
    if burst:
        lines += [f"{burst['concurrency']} concurrent requests of a {burst['sleep_ms']} ms script hit a pool "
                  f"of 3 that may grow to {burst['target_workers']} (medians of {len(burst['tqserver'])} rounds):", "",
                  "| manager | pool | to 10 processes (ms) | to 10 workers running requests (ms) | all 20 done (ms) | errors |",
                  "|---|---|---:|---:|---:|---:|"]
        for name, pool in (("tqserver", burst["tqserver_pool"]), ("php-fpm", burst["php_fpm_pool"])):
            m = burst.get(name + "_median")
            if m:
                most = max(r["max_processes"] for r in burst[name])
                served = max(r["distinct_workers"] for r in burst[name])
                to_procs = fmt(m["ms_to_target_processes"], 0) if m["ms_to_target_processes"] is not None \
                    else f"not reached (at most {most})"
                to_serving = fmt(m["ms_to_target_serving"], 0) if m["ms_to_target_serving"] is not None \
                    else f"not reached ({served} served)"
                lines.append(f"| {name} | {pool} | {to_procs} | {to_serving} | "
                             f"{fmt(m['ms_all_done'], 0)} | {fmt(m['errors'], 0)} |")
        lines.append("")
    if spawn_ms:
        lines.append(f"php-cgi spawn time (fcgi-bench: process start to the end of its first response, "
                     f"{len(spawn_ms)} spawns): median {statistics.median(spawn_ms):.1f} ms, "
                     f"min {min(spawn_ms):.1f} ms, max {max(spawn_ms):.1f} ms.")
    return "\n".join(lines) if lines else "Not measured in this run."


RUNTIME_ROWS = (
    # (measure, row text, digits)
    ("once_rps", "`max_requests: 1` throughput, req/s (ab -c {workers} for the run's duration, "
                 "{workers} workers, each replaced after one request)", 0),
    ("kept_p50_ms", "a request on a kept worker, median ms (ab -c 1)", 2),
    ("spawn_p50_ms", "spawn to first response, median ms (ab -c 1 on one worker replaced after each "
                     "request, minus the kept worker's median)", 1),
    ("spawn_p99_ms", "spawn to first response, p99 ms", 1),
    ("burst_ms", "burst {from} -> {to} workers: slowest of {concurrency} concurrent {sleep_ms} ms requests, "
                 "minus {sleep_ms} ms", 1),
)


def runtime_table(part):
    """php.runtime cgi against embed: the runtime part's medians."""
    if not part:
        return "Not measured in this run."
    med = part["median"]
    cgi, embed = med.get("cgi") or {}, med.get("embed") or {}
    rounds = max(len(r) for r in part["rounds"].values())
    lines = [f"Two tqserver instances serve the same apps, one per runtime; medians of {rounds} round(s):", "",
             "| measure | php-cgi (`cgi`) | `embed` | embed / cgi |", "|---|---:|---:|---:|"]
    names = {"workers": part["workers"], **part["burst"]}
    for key, text, digits in RUNTIME_ROWS:
        c, e = cgi.get(key), embed.get(key)
        lines.append(f"| {text.format(**names)} | {fmt(c, digits)} | {fmt(e, digits)} | "
                     f"{f'{e / c:.2f}x' if c and e is not None else ''} |")
    pss = part.get("pss") or {}
    c, e = (pss.get("cgi") or {}).get("mean_pss_kb"), (pss.get("embed") or {}).get("mean_pss_kb")
    lines.append(f"| PSS per worker, MiB (the kept pool's {part['workers']}, after the rounds) | "
                 f"{fmt(c and c / 1024)} | {fmt(e and e / 1024)} | {f'{e / c:.2f}x' if c and e else ''} |")
    zygote = (pss.get("embed") or {}).get("zygote_pss_kb")
    lines.append(f"| the zygote's PSS, MiB | | {fmt(zygote and zygote / 1024)} | |")
    lines.append(f"| errors (all ab runs) | {cgi.get('errors', '-')} | {embed.get('errors', '-')} | |")
    return "\n".join(lines)


def targets_table(rows):
    if not rows:
        return "No target could be evaluated in this run."
    out = ["| target | measured | met |", "|---|---|---|"]
    for name, measured, met in rows:
        out.append(f"| {name} | {measured} | {'yes' if met else ('-' if met is None else '**no**')} |")
    return "\n".join(out)


PALETTE = {
    "tqserver": "#1f77b4", "tqserver-embed": "#9467bd", "nginx-fpm": "#d62728", "nginx-fpm-ka": "#ff7f0e", "nginx-tq": "#2ca02c",
    "nginx-tq-noka": "#98df8a", "nginx": "#d62728", "ceiling": "#7f7f7f", "fcgi-fpm": "#c49c94",
    "fcgi-tq": "#17becf",
}


def render_svg(results):
    """Horizontal bars of median req/s: one panel per scenario, own scale each."""
    width, label_w, right = 900, 250, 190
    bar_h, gap = 18, 4
    meta = results["meta"]
    parts, y = [], 58
    title = f"tqserver benchmarks: median requests/s ({meta['machine']['nproc']} CPUs, " \
            f"{meta['settings']['workers']} PHP processes each)"
    pin = pinning(results)
    subtitle = f"{meta['date']}, {meta['settings']['rounds']} round(s) x {meta['settings']['duration']} s" + \
        (f" - pinned: servers on CPU {pin['servers_cpu']}, load on CPU {pin['load_cpu']}" if pin else "") + \
        (" - quick smoke run on a busy machine: noisy" if meta["settings"].get("quick") else "")
    parts.append(f'<text x="10" y="24" font-size="16" font-weight="bold">{html.escape(title)}</text>')
    parts.append(f'<text x="10" y="44" font-size="12" fill="#666">{html.escape(subtitle)}</text>')
    for s in results["scenarios"]:
        entries = [(c, e["median"]["rps"], e["median"]["p99_ms"]) for c, e in s["configs"].items()
                   if e["median"]]
        if not entries:
            continue
        top = max(v for _, v, _ in entries) or 1
        parts.append(f'<text x="10" y="{y + 14}" font-size="13" font-weight="bold">{html.escape(s["label"])}</text>')
        y += 22
        for config, value, p99 in entries:
            w = max(1, (width - label_w - right) * value / top)
            parts.append(f'<text x="{label_w - 8}" y="{y + 13}" font-size="12" text-anchor="end">'
                         f'{html.escape(CONFIGS[config][0])}</text>')
            parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                         f'fill="{PALETTE.get(config, "#444")}"/>')
            parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 13}" font-size="12">{value:,.0f}'
                         f'<tspan fill="#666"> p99 {p99:,.1f} ms</tspan></text>')
            y += bar_h + gap
        y += 12
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y + 10}" '
            f'viewBox="0 0 {width} {y + 10}" font-family="sans-serif">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(parts) + "\n</svg>\n")


def render_doc(results):
    meta = results["meta"]
    m, v, st = meta["machine"], meta["versions"], meta["settings"]
    quick = st.get("quick")
    pin = pinning(results)
    if pin:
        sharing = (f"the servers (tqserver and its PHP processes, nginx, php-fpm) pinned to CPU {pin['servers_cpu']}\n"
                   f"and the load generators (wrk, ab, fcgi-bench, and the harness) to CPU {pin['load_cpu']} "
                   f"(`--pin`; the ceiling's\nphp-cgi, which fcgi-bench starts, through a taskset wrapper to CPU "
                   f"{pin['servers_cpu']}; wrk runs one thread).")
        cpu_text = (f"The servers' parts share CPU {pin['servers_cpu']}, so their total (without the load "
                    "generator's) bounds\nthe rate: the last column is one CPU-second divided by it.")
    else:
        sharing = ("load generator and servers share the\nmachine's CPUs (`bench/run --pin` would put the "
                   "servers on CPU 0 and the load generators on CPU 1).")
        cpu_text = ("Every part shares the same {n} CPUs, so the total bounds the rate: the last\n"
                    "column is {n} CPU-seconds divided by the total.").format(n=m["nproc"])
    configs = "\n".join(f"- **{label}** (`{cid}`): {desc}." for cid, (label, desc) in CONFIGS.items())
    notes = "\n".join(f"- {n}" for n in meta["notes"]) or "- none"
    commands = "\n".join(f"# {k}\n{c}" for k, c in meta["commands"].items())
    files = "\n\n".join(f"`{name}`:\n\n```\n{text.strip()}\n```" for name, text in meta["config_files"].items())
    warning = ("\n> **This is a `--quick` smoke run** (1 round, short durations) made while the machine was "
               "busy; its numbers are noisy and only show that the harness works. Run `bench/run` on a "
               "quiet machine for real figures.\n") if quick else ""
    return f"""# Benchmarks

Generated by `bench/run` on {meta['date']}; regenerate with `bench/run` (or
`bench/run --render bench/results/<file>.json` to re-render saved results).
{warning}
![median requests/s per scenario and configuration](benchmarks.svg)

## Machine and software

| | |
|---|---|
| CPU | {m['cpu']}, {m['nproc']} CPUs |
| memory | {m['memory_gb']} GB |
| OS, kernel | {m['os']}, Linux {m['kernel']} |
| php-cgi | {v['php_cgi']} |
| php-fpm | {v['php_fpm']} |
| nginx | {v['nginx']} |
| wrk | {v['wrk']} |
| tqserver | {v['tqserver']} |
| rustc | {v['rustc']} |

Run settings: {st['rounds']} round(s) of {st['duration']} s per configuration, run alternately
(order rotated each round) after a {st['warmup']} s unmeasured warm-up; medians reported;
{st['workers']} PHP processes in every configuration; {sharing}

## What is compared

{configs}

The same php-cgi binary and php.ini (Debian's `cgi` and `fpm` php.ini are identical, opcache on)
serve every PHP request. Nothing logs per request: nginx runs with `access_log off`, php-fpm has
no access log, and tqserver writes no access log unless one is configured. HTTP load comes from
wrk (keep-alive on; for "keep-alive off" wrk sends `Connection: close` and reconnects for every
request, which ab would do too but ab's single thread is slower than the servers it measures);
FastCGI load comes from `fcgi-bench` (crates/fcgi-bench). For the ceiling, fcgi-bench starts the
php-cgi processes itself and keeps one request in flight on each, so its concurrency is the
number of processes.

tqserver embed serves the same app with the same pool on `php.runtime: embed` (docs/RUNTIME.md):
tqserver-php, on Debian's libphp8.2-embed and its `embed` php.ini (identical to the `cgi` one, opcache
on), starts PHP once in a zygote and forks the workers from it. It is a second tqserver, on a port of
its own; its zygote and workers count as PHP in the CPU table.

php-fpm with upstream keep-alive: a php-fpm child serves one FastCGI connection for as long as
nginx keeps it open, idle or not, and a new connection waits in the socket backlog meanwhile.
nginx caches up to `keepalive` idle connections per worker process; the harness sets that to
the pool size divided by nginx's workers, and gives this configuration a php-fpm of its own
(the same size), so its cached connections cannot starve the others. The long p99 of that
configuration is this effect: requests that opened a new connection wait until nginx drops a
cached one. With {st['workers']} PHP processes, the 100 ms script can run at most
{st['workers'] * 10} times a second in any configuration; that scenario shows how each queues.

## Results

{markdown_tables(results)}

## Where the CPU goes

CPU time (user + system, from /proc) each part spent per request, median of the rounds, in
microseconds. {cpu_text} The load generator's column includes wrk's (or
fcgi-bench's) own work; for the ceiling it also holds the php-cgi processes fcgi-bench starts.

{cpu_table(results)}

## Targets (from the benchmark issue)

{targets_table(evaluate_targets(results))}

## Memory

{memory_table(results.get('memory'))}

## Scaling from 3 to 10 workers

{burst_table(results.get('burst'), results.get('spawn_ms'))}

## php.runtime: cgi against embed

{runtime_table(results.get('runtime'))}

Each round runs, on each runtime in turn: `max_requests: 1` throughput (ab with one connection per
worker for the run's duration; each request needs a new worker, so the rate is how fast the pool
starts them); 200 requests one at a time on a kept worker, then on a pool of one worker replaced
after every request (each of those waits for the new worker: exec and PHP's start-up for php-cgi, a
fork from the zygote for embed, then the pool's probe request), whose latency minus the kept
worker's median is the spawn time; and, once a dynamic pool of 3 has shrunk back to 3, 10
concurrent requests of a 100 ms script (ab -n 10 -c 10), of which the slowest minus 100 ms is the
time to grow to 10. ab's percentiles come from its `-e` file (microseconds; its printed table has
whole milliseconds). PSS (`/proc/PID/smaps_rollup`) counts shared pages divided among the
processes that map them, so forked workers that share the zygote's OPcache count their share.

## On the open internet: TLS, HTTP/2, compression (the edge part)

{edge_table(results.get('edge'))}

tqserver (`server.tls`, `php.runtime: embed`) and nginx (`listen ... ssl http2`, gzip at its default
level) + php-fpm (pm=static, upstream keep-alive) serve the same files with the same self-signed
ECDSA P-256 certificate and the same number of PHP processes, alternating round by round; medians.
HTTP/1.1 with wrk (c=20), HTTP/2 with h2load (20 connections of 10 streams), new TLS connections
with ab (a full handshake per request, no session resumption on either side). Compression: the
server process's own CPU (from /proc, not PHP's) per response of a 100 KB PHP page over plain HTTP,
minus the same page uncompressed. Idle TLS connections: bench/hold_conns.py --tls holds them after
one request each; the server's RSS growth.

## Notes from this run

{notes}

## Exact commands

Load generators, as run (ports and temp paths change per run):

```
{commands}
```

<details><summary>Generated server configurations</summary>

{files}

</details>
"""


def render(results, write_docs):
    results["ratios"] = compute_ratios(results["scenarios"])
    table = markdown_tables(results)
    print(table)
    print()
    print(targets_table(evaluate_targets(results)))
    print()
    print(cpu_table(results))
    print()
    print(memory_table(results.get("memory")))
    print()
    print(burst_table(results.get("burst"), results.get("spawn_ms")))
    print()
    print(runtime_table(results.get("runtime")))
    print()
    print(edge_table(results.get("edge")))
    if write_docs:
        os.makedirs(os.path.dirname(DOCS_MD), exist_ok=True)
        with open(DOCS_SVG, "w") as f:
            f.write(render_svg(results))
        with open(DOCS_MD, "w") as f:
            f.write(render_doc(results))
        log(f"wrote {os.path.relpath(DOCS_MD, REPO)} and {os.path.relpath(DOCS_SVG, REPO)}")
    return table
