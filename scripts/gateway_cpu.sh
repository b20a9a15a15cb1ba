#!/usr/bin/env bash
# CPU per request of each process of a gateway hop, beside the same server
# measured directly (docs/BENCHMARKS.md, "Gateway hop"). On a machine
# whose cores the bench client, the upstream server and the gateway share,
# the throughput ratio follows from these figures (rate <= cores / sum of
# CPU per request), so they say what a ratio can be before a quiet run.
#
#   scripts/gateway_cpu.sh [MSGI] [SECONDS] [-- gateway flags]
#
# The gateway flags default to `--connections 4`. GW_ENV / SERVE_ENV: one
# VAR=value for the gateway's / server's environment (e.g.
# GW_ENV=TOKIO_WORKER_THREADS=1).
#
# Prints, per run, the messages, the rate, and the CPU per message (user +
# system, from /proc/<pid>/stat and the bench's rusage) of the bench
# client, the server and (through the gateway) the gateway. Runs direct and
# gateway alternately, twice each.
set -euo pipefail
M=${1:-target/release/msgi}
T=${2:-5}
shift $(( $# >= 2 ? 2 : $# ))
[[ ${1:-} == -- ]] && shift
GW_FLAGS=("$@")
HZ=$(getconf CLK_TCK)

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start() { # start ENV NAME ARGS... : runs msgi, waits for LISTENING, sets PID/ADDR
  local out; out=$(mktemp)
  local env=$1; shift
  env $env "$M" "$@" --announce >"$out" 2>/dev/null &
  PID=$!
  for _ in $(seq 100); do
    if grep -q LISTENING "$out"; then break; fi
    sleep 0.1
  done
  ADDR=$(awk '/LISTENING/ {print $2; exit}' "$out")
  [[ -n $ADDR ]] || { echo "no LISTENING from $*" >&2; exit 1; }
}

start "${SERVE_ENV:-X=}" serve --listen 127.0.0.1:0
SERVE=$PID SERVE_ADDR=$ADDR
start "${GW_ENV:-X=}" gateway --listen 127.0.0.1:0 --upstream "$SERVE_ADDR" "${GW_FLAGS[@]:---connections 4}"
GW=$PID GW_ADDR=$ADDR
trap 'kill $GW $SERVE 2>/dev/null || true' EXIT
sleep 0.5

run() { # run LABEL ADDR
  local s0 g0 s1 g1 json msgs rate cpu
  s0=$(ticks "$SERVE"); g0=$(ticks "$GW")
  json=$(/usr/bin/time -f '%U %S' -o /tmp/gw_bench_time.$$ \
    "$M" bench throughput --addr "$2" -s 1024 -t "$T" --rounds 1 --json)
  s1=$(ticks "$SERVE"); g1=$(ticks "$GW")
  msgs=$(grep -o '"messages": *[0-9]*' <<<"$json" | head -1 | grep -o '[0-9]*$')
  rate=$(grep -o '"msgs_per_sec": *[0-9.]*' <<<"$json" | head -1 | grep -o '[0-9.]*$')
  cpu=$(awk '{print $1 + $2}' /tmp/gw_bench_time.$$)
  awk -v l="$1" -v m="$msgs" -v r="$rate" -v c="$cpu" -v s=$((s1 - s0)) -v g=$((g1 - g0)) \
      -v hz="$HZ" 'BEGIN {
    us = 1e6 / m; cl = c * us; sv = s / hz * us; gw = g / hz * us;
    printf "%-8s %9d msgs %9.0f msg/s  client %5.2f  server %5.2f  gateway %5.2f  sum %5.2f us/msg  (cores busy %.2f)\n",
      l, m, r, cl, sv, gw, cl + sv + gw, r * (cl + sv + gw) / 1e6 }'
}

for _ in 1 2; do
  run direct "$SERVE_ADDR"
  run gateway "$GW_ADDR"
done
rm -f /tmp/gw_bench_time.$$
