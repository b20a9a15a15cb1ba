#!/usr/bin/env bash
# Acknowledged delivery across real server restarts (docs/RELIABILITY.md):
# a client sends COUNT numbered one-way frames with acknowledged delivery
# while `msgi serve --ack` is killed with SIGKILL and SIGINT in turn,
# RESTARTS times, and restarted on the same port. The server appends every
# number handed to its application to a file; at the end every number must
# be there (0 lost) and the client must have had every frame acknowledged.
# A restarted process starts with an empty store, so frames handed on and
# not yet acknowledged before a stop are handed on again: the duplicates
# are counted and printed (at least once across restarts; exactly once
# across reconnects to a running server is pinned by
# crates/msgi/tests/delivery.rs).
#
# Usage: scripts/ack_restarts.sh [COUNT] [RESTARTS]
# Env: MSGI (the binary; default: built with cargo), PORT (default 7811),
#      PAUSE (seconds between stops, default 1).
set -euo pipefail

COUNT=${1:-200000}
RESTARTS=${2:-6}
PORT=${PORT:-7811}
PAUSE=${PAUSE:-1}
ADDR="127.0.0.1:$PORT"

if [[ -z "${MSGI:-}" ]]; then
    cargo build --release -q -p msgi-cli
    MSGI="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/msgi"
fi
WORK=$(mktemp -d)
RECORD="$WORK/handed"
SERVER=""
SENDER=""
cleanup() {
    [[ -n "$SERVER" ]] && kill -KILL "$SERVER" 2>/dev/null || true
    [[ -n "$SENDER" ]] && kill -KILL "$SENDER" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

start_server() {
    "$MSGI" serve --listen "$ADDR" --ack --record "$RECORD" --idle-timeout 0 \
        2>>"$WORK/server.log" &
    SERVER=$!
    # Listening once a connection is accepted (bounded: 10 s).
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "server did not start; log:" >&2
    cat "$WORK/server.log" >&2
    exit 1
}

start_server
"$MSGI" send --addr "$ADDR" --client-id numbered --ack --count "$COUNT" --wait 120 \
    >"$WORK/sender.out" 2>"$WORK/sender.log" &
SENDER=$!

for i in $(seq "$RESTARTS"); do
    sleep "$PAUSE"
    if (( i % 2 == 1 )); then signal=KILL; else signal=INT; fi
    kill "-$signal" "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    echo "stop $i: SIG$signal after $(wc -l <"$RECORD") frames handed on"
    start_server
done

if ! wait "$SENDER"; then
    SENDER=""
    echo "FAIL: the sender failed:" >&2
    cat "$WORK/sender.log" >&2
    exit 1
fi
SENDER=""
echo "sender: $(cat "$WORK/sender.out")"
kill -INT "$SERVER"
wait "$SERVER" 2>/dev/null || true
SERVER=""

handed=$(wc -l <"$RECORD")
distinct=$(sort -n -u "$RECORD" | wc -l)
missing=$(seq 0 $((COUNT - 1)) | sort | comm -23 - <(sort -u "$RECORD") | wc -l)
echo "handed on: $handed, distinct: $distinct, missing: $missing, duplicates: $((handed - distinct))"
acked=$(sed -n 's/.*acknowledged \([0-9]*\).*/\1/p' "$WORK/sender.out")
if [[ "$missing" -ne 0 || "$acked" -ne "$COUNT" ]]; then
    echo "FAIL: $missing lost, $acked of $COUNT acknowledged" >&2
    exit 1
fi
echo "OK: 0 lost, every frame acknowledged"
