#!/usr/bin/env bash
# Push recovery across real server restarts and cut connections
# (docs/RELIABILITY.md, "Server to client"): a pusher (`msgi send --push-to`)
# pushes COUNT numbered frames, one request at a time, through
# `msgi serve --ack --recover-pushes` to a client that reconnects
# (`msgi send --receive`), while the server is killed with SIGKILL and
# SIGINT in turn, RESTARTS times, and restarted on the same port; then,
# with the last server living on, the client's session is cut CUTS times
# (the admin view's disconnect).
#
# A server keeps pushes in memory: a stopped process loses those its client
# had not acknowledged, and the next one answers the client `fresh`. So:
# - every push the last server (the one that lived on) took must arrive
#   (0 lost across reconnects to a live server), none twice;
# - a push lost was taken by a server that is gone, and the client was told
#   `fresh` once per server process, or its request was lost with the
#   pusher's connection (`unknown`: reported to the pusher) or refused to
#   it (asked again by the pusher).
# The tally is printed; the script fails if a rule above is broken.
#
# Usage: scripts/push_restarts.sh [COUNT] [RESTARTS] [CUTS]
# Env: MSGI (the binary; default: built with cargo), PORT (default 7812),
#      ADMIN_PORT (default 7813), PAUSE (seconds between steps, default 1).
set -euo pipefail

COUNT=${1:-200000}
RESTARTS=${2:-6}
CUTS=${3:-3}
PORT=${PORT:-7812}
ADMIN_PORT=${ADMIN_PORT:-7813}
PAUSE=${PAUSE:-1}
ADDR="127.0.0.1:$PORT"
ADMIN="127.0.0.1:$ADMIN_PORT"

if [[ -z "${MSGI:-}" ]]; then
    cargo build --release -q -p msgi-cli
    MSGI="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/msgi"
fi
WORK=$(mktemp -d)
SERVER=""
PUSHER=""
RECEIVER=""
cleanup() {
    for pid in "$SERVER" "$PUSHER" "$RECEIVER"; do
        [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
echo "push-restarts-$$" >"$WORK/token"
: >"$WORK/pids"

start_server() {
    "$MSGI" serve --listen "$ADDR" --ack --recover-pushes --idle-timeout 0 \
        --admin "$ADMIN" --admin-token-file "$WORK/token" \
        >/dev/null 2>>"$WORK/server.log" &
    SERVER=$!
    echo "$SERVER" >>"$WORK/pids"
    # Listening once a connection is accepted (bounded: 10 s).
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "server did not start; log:" >&2
    cat "$WORK/server.log" >&2
    exit 1
}

# The receiver's session, cut by the admin view (the server lives on).
cut_receiver() {
    local id
    id=$(curl -sf "http://$ADMIN/connz?limit=1024" |
        python3 -c 'import json,sys; print(next(c["id"] for c in json.load(sys.stdin)["connections"] if c["client_id"] == "rita"))')
    curl -sf -X POST -H "Authorization: Bearer $(cat "$WORK/token")" \
        "http://$ADMIN/connz/$id/disconnect" >/dev/null
}

start_server
"$MSGI" send --addr "$ADDR" --client-id rita --receive "$COUNT" --wait 5 \
    >"$WORK/received" 2>"$WORK/receiver.log" &
RECEIVER=$!
"$MSGI" send --addr "$ADDR" --client-id pusher --push-to rita --count "$COUNT" --wait 60 \
    >"$WORK/pushed" 2>"$WORK/pusher.log" &
PUSHER=$!

for i in $(seq "$RESTARTS"); do
    sleep "$PAUSE"
    if (( i % 2 == 1 )); then signal=KILL; else signal=INT; fi
    kill "-$signal" "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    echo "stop $i: SIG$signal after $(wc -l <"$WORK/received") pushes received"
    start_server
done
for i in $(seq "$CUTS"); do
    sleep "$PAUSE"
    cut_receiver
    echo "cut $i: after $(wc -l <"$WORK/received") pushes received"
done

if ! wait "$PUSHER"; then
    PUSHER=""
    echo "FAIL: the pusher failed:" >&2
    cat "$WORK/pusher.log" >&2
    exit 1
fi
PUSHER=""
# It stops once every push came, or 5 s after the last (some were lost).
wait "$RECEIVER" || true
RECEIVER=""
kill -INT "$SERVER"
wait "$SERVER" 2>/dev/null || true
SERVER=""

echo "pusher: $(tail -n 1 "$WORK/pushed")"
echo "receiver: $(tail -n 1 "$WORK/received")"
last_pid=$(tail -n 1 "$WORK/pids")
processes=$(wc -l <"$WORK/pids")
python3 - "$WORK/pushed" "$WORK/received" "$last_pid" "$processes" "$COUNT" <<'EOF'
import sys
pushed_file, received_file, last_pid, processes, count = sys.argv[1:]
taken, unknown = {}, set()
for line in open(pushed_file):
    w = line.split()
    if w[0] == "pushed":
        taken[int(w[1])] = w[3]
    elif w[0] == "unknown":
        unknown.add(int(w[1]))
lines = open(received_file).read().split("\n")
summary = [l for l in lines if l.startswith("received ")][0].split()
received = [int(l) for l in lines if l and not l.startswith("received ")]
fresh = int(summary[summary.index("fresh") + 1])
missed = int(summary[summary.index("missed") + 1])
distinct = set(received)
duplicates = len(received) - len(distinct)
in_order = all(a < b for a, b in zip(received, received[1:]))
phantom = distinct - set(taken) - unknown
lost_live = sorted(n for n, pid in taken.items() if pid == last_pid and n not in distinct)
lost_crash = sorted(n for n, pid in taken.items() if pid != last_pid and n not in distinct)
unknown_arrived = len(unknown & distinct)
accounted = len(taken) + len(unknown)
print(f"pushes {count}: taken {len(taken)} (by the live server {sum(1 for p in taken.values() if p == last_pid)}), "
      f"unknown to the pusher {len(unknown)} (of which arrived {unknown_arrived}); "
      f"received {len(received)}, duplicates {duplicates}, in order {in_order}; "
      f"lost by the live server {len(lost_live)}, lost in crashes {len(lost_crash)} "
      f"(reported: fresh {fresh} for {processes} server processes); missed {missed}")
ok = (duplicates == 0 and in_order and not phantom and not lost_live
      and accounted == int(count) and fresh == int(processes))
if not ok:
    print(f"FAIL: phantom {sorted(phantom)[:10]}, lost by the live server {lost_live[:10]}, "
          f"accounted {accounted} of {count}, fresh {fresh} of {processes}", file=sys.stderr)
    sys.exit(1)
print("OK: 0 lost and 0 duplicates across reconnects to the live server; every loss in a crash reported")
EOF
