#!/usr/bin/env bash
# Runs each fuzz target (the FastCGI decoder, the HTTP/1.1 request path, the
# embed runtime's worker) for SECONDS seconds (default 60), starting from the
# corpus it grew before (fuzz/corpus/<target>, not in git) and the seeds in
# git (fuzz/seeds/<target>, if any).
#
#   fuzz/run.sh 300
#
# Works on the stable toolchain: cargo-fuzz needs nightly-only flags
# (-Zsanitizer=address), which RUSTC_BOOTSTRAP=1 lets stable rustc accept.
# Installs cargo-fuzz first if it is missing. Exits non-zero if the fuzzer
# finds a crash; the reproducer is then in fuzz/artifacts/<target>/.
set -euo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: $0 SECONDS" >&2
    exit 2
fi

cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
for target in decode h1 worker; do
    cargo fuzz build "$target"
    # The first directory is where libFuzzer adds what it finds.
    mkdir -p "corpus/$target"
    corpus=("corpus/$target")
    if [ -d "seeds/$target" ]; then
        corpus+=("seeds/$target")
    fi
    # -max_total_time bounds the fuzzing itself; timeout bounds a hung run.
    timeout --kill-after=30 "$((seconds + 120))" \
        cargo fuzz run "$target" "${corpus[@]}" -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048
done
