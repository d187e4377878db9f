"""bench/run's command line: options, preparing the machine (packages,
release build, file descriptor limit), and the two modes (run the suite,
or render saved results)."""

import argparse
import atexit
import json
import os
import resource
import signal
import subprocess
import sys

from .paths import FCGI_BENCH, REPO, TQSERVER, TQSERVER_PHP
from .report import render
from .runner import run
from .services import PIN_LOAD_CPU, PIN_SERVER_CPU, SERVICES, on_signal
from .util import log


def parse_args(doc, argv=None):
    """bench/run's options; doc is its docstring, whose first paragraph is
    --help's description."""
    p = argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 round of 2 s per measurement, 1 burst round")
    p.add_argument("--rounds", type=int, help="rounds per configuration (default 3)")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 5)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds per configuration first (default 1; wrk takes whole seconds)")
    p.add_argument("--workers", type=int, default=4, help="PHP processes per configuration (default 4)")
    p.add_argument("--only", help="comma-separated scenario ids, plus memory, runtime, burst and edge")
    p.add_argument("--connections", type=int, default=10000, help="idle connections for the memory part")
    p.add_argument("--burst-rounds", type=int, help="rounds of the burst part (default 3)")
    p.add_argument("--skip-deps", action="store_true", help="do not run scripts/deps.sh test")
    p.add_argument("--skip-build", action="store_true", help="do not run cargo build --release")
    p.add_argument("--docs", dest="docs", action="store_true", default=None,
                   help="write docs/BENCHMARKS.md and docs/benchmarks.svg (default unless --quick)")
    p.add_argument("--no-docs", dest="docs", action="store_false")
    p.add_argument("--pin", action="store_true",
                   help="pin the servers (tqserver and its PHP processes, nginx, php-fpm) to CPU 0 and the load "
                        "generators (wrk, ab, fcgi-bench, and this harness) to CPU 1 (taskset)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("--render", metavar="FILE", help="only render a saved results JSON")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else 1.0
    args.burst_rounds = args.burst_rounds or (1 if args.quick else 3)
    if args.docs is None:
        args.docs = not args.quick
    return args


def prepare(args):
    """Debian packages, the release build, and enough file descriptors."""
    if not args.skip_deps:
        deps = subprocess.run([os.path.join(REPO, "scripts", "deps.sh"), "test"])
        if deps.returncode != 0:
            sys.exit("bench/run: missing Debian packages (see above)")
    if not args.skip_build:
        log("cargo build --release -p tqserver -p tq-php-runtime -p fcgi-bench")
        build = subprocess.run(["cargo", "build", "--release", "-p", "tqserver", "-p", "tq-php-runtime",
                                "-p", "fcgi-bench"], cwd=REPO)
        if build.returncode != 0:
            sys.exit("bench/run: the build failed (use --skip-build to run the binaries already built)")
    for path in (TQSERVER, TQSERVER_PHP, FCGI_BENCH):
        if not os.access(path, os.X_OK):
            sys.exit(f"bench/run: {path} is missing; run without --skip-build")
    # 10,000 connections need file descriptors; children inherit this.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(hard, 65536) if os.getuid() == 0 else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pin(services, allowed=None):
    """--pin: servers on PIN_SERVER_CPU, load generators and this harness (its
    threads and /proc sampling are load too) on PIN_LOAD_CPU. Exits if this
    process may not use both."""
    allowed = os.sched_getaffinity(0) if allowed is None else allowed
    if not {PIN_SERVER_CPU, PIN_LOAD_CPU} <= allowed:
        sys.exit(f"bench/run: --pin needs CPUs {PIN_SERVER_CPU} and {PIN_LOAD_CPU}; "
                 f"this process may use {sorted(allowed)}")
    services.pin(PIN_SERVER_CPU, PIN_LOAD_CPU)
    os.sched_setaffinity(0, {PIN_LOAD_CPU})
    log(f"pinned: servers on CPU {PIN_SERVER_CPU}, load generators and the harness on CPU {PIN_LOAD_CPU}")


def main(doc):
    """bench/run: parse the options, then render saved results or run the suite."""
    args = parse_args(doc)
    if args.render:
        with open(args.render) as f:
            render(json.load(f), args.docs)
        return
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    atexit.register(SERVICES.stop_all)
    prepare(args)  # the build uses every CPU
    if args.pin:
        pin(SERVICES)
    run(args)
