#!/usr/bin/env bash
# php.runtime: embed against php.runtime: cgi, in one run on this machine.
#
# Two tqserver instances serve the same site, one per runtime, each app with 4
# PHP processes. Measured, alternating between the two, medians of ROUNDS:
# - hello.php throughput (wrk -t2 -c20, DURATION each);
# - max_requests: 1 (every request needs a new worker): ab -c 1 requests/s;
# - spawn: the per-request latency with max_requests: 1 minus the latency of
#   the same request on a kept worker, median and p99 (fork or exec, PHP
#   start-up, the probe request);
# - burst: 10 concurrent 100 ms requests on a pool of 3 (max 10): the
#   slowest answer, minus 100 ms.
# PIN=1 pins the servers (and PHP) to CPU 0 and the load generator to CPU 1.
# Needs wrk and ab (apache2-utils).
# Usage: bench/runtime.sh   (after cargo build --release -p tqserver -p tq-php-runtime)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-4s}"
PIN="${PIN:-0}"
bin=target/release/tqserver
[ -x "$bin" ] && [ -x target/release/tqserver-php ] || {
  echo "build first: cargo build --release -p tqserver -p tq-php-runtime" >&2
  exit 1
}
server_cpu=(); load_cpu=()
if [ "$PIN" = 1 ]; then server_cpu=(taskset -c 0); load_cpu=(taskset -c 1); fi

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
chmod 755 "$work"

site() { # name runtime port
  local dir="$work/$1"
  mkdir -p "$dir/config" "$dir/workers/hello/config" "$dir/workers/hello/public" \
    "$dir/workers/once/config" "$dir/workers/once/public" \
    "$dir/workers/burst/config" "$dir/workers/burst/public"
  chmod -R 755 "$dir"
  cat > "$dir/config/server.yaml" <<EOF
server: {host: 127.0.0.1, port: $3}
admin: {listen: 127.0.0.1:$(($3 + 100))}
logging: {level: warn}
EOF
  echo '<?php echo "Hello, World!";' > "$dir/workers/hello/public/hello.php"
  echo '<?php echo "once";' > "$dir/workers/once/public/once.php"
  echo '<?php usleep(100000); echo "slow";' > "$dir/workers/burst/public/slow.php"
  cat > "$dir/workers/hello/config/worker.yaml" <<EOF
path: /hello
php: {runtime: $2, pool: {manager: static, max_workers: 4}}
EOF
  cat > "$dir/workers/once/config/worker.yaml" <<EOF
path: /once
php: {runtime: $2, pool: {manager: static, max_workers: 4, max_requests: 1}}
EOF
  cat > "$dir/workers/burst/config/worker.yaml" <<EOF
path: /burst
php: {runtime: $2, pool: {manager: dynamic, min_workers: 3, start_workers: 3, max_workers: 10, min_spare: 0, max_spare: 10}}
EOF
  "${server_cpu[@]}" "$bin" --config "$dir/config/server.yaml" > "$work/$1.log" 2>&1 &
}

site cgi cgi 18301
site embed embed 18302
for port in 18301 18302; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/hello/hello.php" >/dev/null && break; sleep 0.1; done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A hello once spawn50 spawn99 burst
for round in $(seq "$ROUNDS"); do
  for runtime in cgi embed; do
    port=$([ $runtime = cgi ] && echo 18301 || echo 18302)
    rps=$("${load_cpu[@]}" wrk -t2 -c20 -d"$DURATION" "http://127.0.0.1:$port/hello/hello.php" | awk '/Requests\/sec/ {print $2}')
    hello[$runtime]+="$rps "
    out=$("${load_cpu[@]}" ab -q -n 300 -c 1 "http://127.0.0.1:$port/once/once.php" 2>/dev/null)
    once[$runtime]+="$(awk '/Requests per second/ {print $4}' <<<"$out") "
    kept=$("${load_cpu[@]}" ab -q -n 300 -c 1 "http://127.0.0.1:$port/hello/hello.php" 2>/dev/null)
    k50=$(awk '$1=="50%" {print $2}' <<<"$kept")
    spawn50[$runtime]+="$(( $(awk '$1=="50%" {print $2}' <<<"$out") - k50 )) "
    spawn99[$runtime]+="$(( $(awk '$1=="99%" {print $2}' <<<"$out") - k50 )) "
    # The slowest of 10 concurrent 100 ms requests, minus 100 ms, once the
    # pool is back to 3 (idle_timeout 10 s by default). One ab process opens
    # all ten connections: forking ten curls costs more than the burst.
    for _ in $(seq 300); do
      [ "$(curl -sf "http://127.0.0.1:$((port + 100))/status/burst?json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total processes"])')" = 3 ] && break
      sleep 0.1
    done
    out=$("${load_cpu[@]}" ab -n 10 -c 10 "http://127.0.0.1:$port/burst/slow.php" 2>/dev/null)
    burst[$runtime]+="$(( $(awk '$1=="100%" {print $2}' <<<"$out") - 100 )) "
  done
  echo "round $round done" >&2
done

report() { # label key unit
  local c e
  c=$(tr ' ' '\n' <<<"$2" | grep . | median)
  e=$(tr ' ' '\n' <<<"$3" | grep . | median)
  printf '%-44s %10s %10s %8s\n' "$1" "$c" "$e" "$(awk -v c="$c" -v e="$e" 'BEGIN { if (c > 0) printf "%.2fx", e / c; else print "-" }')"
}
echo
echo "medians of $ROUNDS rounds; PIN=$PIN; $(nproc) CPUs"
printf '%-44s %10s %10s %8s\n' "measure" "cgi" "embed" "embed/cgi"
report "hello.php req/s (wrk -t2 -c20 $DURATION)" "${hello[cgi]}" "${hello[embed]}"
report "max_requests: 1 req/s (ab -c1 -n300)" "${once[cgi]}" "${once[embed]}"
report "spawn to first response, median ms" "${spawn50[cgi]}" "${spawn50[embed]}"
report "spawn to first response, p99 ms" "${spawn99[cgi]}" "${spawn99[embed]}"
report "burst 3 -> 10 workers, ms beyond 100" "${burst[cgi]}" "${burst[embed]}"
echo
echo "PSS per hello worker after the run, MiB (the zygote's own PSS is shown apart):"
for runtime in cgi embed; do
  port=$([ $runtime = cgi ] && echo 18401 || echo 18402)
  pids=$(curl -sf "http://127.0.0.1:$port/status/hello?json&full" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(" ".join(str(p["pid"]) for p in d.get("processes", [])))' 2>/dev/null || true)
  total=0; n=0
  for pid in $pids; do
    kb=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
    total=$((total + kb)); n=$((n + 1))
  done
  printf '%-6s %s workers, %s MiB each\n' "$runtime" "$n" "$(awk -v t=$total -v n=$n 'BEGIN { if (n) printf "%.1f", t / n / 1024; else print "-" }')"
done
