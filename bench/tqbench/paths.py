"""Where the harness finds the binaries it measures and writes what it found."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS_DIR = os.path.join(REPO, "bench", "results")
DOCS_MD = os.path.join(REPO, "docs", "BENCHMARKS.md")
DOCS_SVG = os.path.join(REPO, "docs", "benchmarks.svg")
TARGETS_TOML = os.path.join(REPO, "bench", "targets.toml")
HOLD_CONNS = os.path.join(REPO, "bench", "hold_conns.py")
# Where `cargo build --release` puts them: $CARGO_TARGET_DIR if set (relative
# to the repository, where bench/run runs cargo), else target/.
TARGET_DIR = os.path.join(REPO, os.environ.get("CARGO_TARGET_DIR") or "target")
TQSERVER = os.path.join(TARGET_DIR, "release", "tqserver")
# php.runtime: embed's runtime; tqserver finds it beside itself.
TQSERVER_PHP = os.path.join(TARGET_DIR, "release", "tqserver-php")
FCGI_BENCH = os.path.join(TARGET_DIR, "release", "fcgi-bench")
