"""Where the harness finds the binaries it measures and writes what it found."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS_DIR = os.path.join(REPO, "bench", "results")
DOCS_MD = os.path.join(REPO, "docs", "BENCHMARKS.md")
DOCS_SVG = os.path.join(REPO, "docs", "benchmarks.svg")
TARGETS_TOML = os.path.join(REPO, "bench", "targets.toml")
HOLD_CONNS = os.path.join(REPO, "bench", "hold_conns.py")
TQSERVER = os.path.join(REPO, "target", "release", "tqserver")
FCGI_BENCH = os.path.join(REPO, "target", "release", "fcgi-bench")
