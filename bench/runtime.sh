#!/usr/bin/env bash
# php.runtime: embed against php.runtime: cgi: bench/run's runtime part
# (`bench/run --only runtime`; docs/BENCHMARKS.md says what it measures).
# Keeps this script's old settings: ROUNDS (default 5), DURATION (seconds,
# default 4), PIN=1 for --pin (servers on CPU 0, load generators on CPU 1).
# Other arguments go to bench/run (for example --skip-build, --workers 8).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-4}"
args=(--only runtime --no-docs --rounds "${ROUNDS:-5}" --duration "${DURATION%s}")
if [ "${PIN:-0}" = 1 ]; then args+=(--pin); fi
exec bench/run "${args[@]}" "$@"
