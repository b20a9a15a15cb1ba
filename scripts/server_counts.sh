#!/usr/bin/env bash
# Per-message counts of one echo server under `msgi bench throughput`:
# system calls by type, context switches (perf stat tracepoints on the
# server's process), and its user and system CPU ticks (/proc/PID/stat).
# Counts, not times: valid on a loaded machine (docs/BENCHMARKS.md, "Where
# the CPU goes"). The server is started as `msgi bench` starts it.
#
# Usage: scripts/server_counts.sh msgi|reference [SECONDS]
# Env: MSGI (the binary; default target/release/msgi). Needs perf with
#      access to syscalls tracepoints (perf_event_paranoid <= 1 or root).
set -euo pipefail

KIND=${1:?msgi or reference}
SECS=${2:-5}
MSGI=${MSGI:-target/release/msgi}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

if [ "$KIND" = msgi ]; then
  RUST_LOG=warn "$MSGI" serve --listen 127.0.0.1:0 --announce --idle-timeout 0 \
    --max-connections 1000000 > "$OUT/addr" &
else
  RUST_LOG=warn "$MSGI" reference-server --listen 127.0.0.1:0 > "$OUT/addr" &
fi
SERVER=$!
for _ in $(seq 1 100); do grep -q LISTENING "$OUT/addr" && break; sleep 0.1; done
ADDR=$(sed -n 's/^LISTENING //p' "$OUT/addr")

perf stat -x, -o "$OUT/perf" \
  -e syscalls:sys_exit_recvfrom --filter 'ret < 0' \
  -e 'syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_readv' \
  -e 'syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_writev' \
  -e 'syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,context-switches' \
  -p "$SERVER" &
PERF=$!
sleep 0.3
read -r _ _ _ _ _ _ _ _ _ _ _ _ _ U0 S0 _ < "/proc/$SERVER/stat"
"$MSGI" bench throughput --addr "$ADDR" -c 4 -d 32 -s 1024 -t "$SECS" --rounds 1 --json > "$OUT/bench"
read -r _ _ _ _ _ _ _ _ _ _ _ _ _ U1 S1 _ < "/proc/$SERVER/stat"
kill -INT $PERF; wait $PERF || true
kill $SERVER; wait $SERVER 2>/dev/null || true

MSGS=$(grep -m1 '"messages"' "$OUT/bench" | tr -dc 0-9)
echo "$KIND: $MSGS messages answered in $SECS s"
grep -v '^#' "$OUT/perf" | awk -F, -v m="$MSGS" 'NF > 2 && $1 ~ /^[0-9]+$/ {
  name = $3; if (name ~ /sys_exit_recvfrom/) name = name " (EAGAIN)"
  printf "  %-40s %10d  %.4f per message\n", name, $1, $1 / m }'
awk -v m="$MSGS" -v u=$((U1 - U0)) -v s=$((S1 - S0)) 'BEGIN {
  printf "  user %.3f us, system %.3f us of CPU per message (10 ms ticks; a loaded machine inflates both)\n",
    u * 1e4 / m, s * 1e4 / m }'
