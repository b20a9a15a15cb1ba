#!/bin/sh
# Instructions per operation of every case of benches/instructions.rs, under callgrind:
# (total at 11,000 iterations - total at 1,000) / 10,000. Deterministic: valid on a
# loaded machine. Usage: crates/msgi-container/benches/instructions.sh [CASE...]
set -eu
cd "$(dirname "$0")/../../.."
bin=$(cargo bench -p msgi-container --bench instructions --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*instructions[^"]*\)".*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "no bench binary (build failed?)" >&2; exit 1; }
ir() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
        sed -n 's/.*Collected : *\([0-9]*\).*/\1/p'
}
if [ $# -eq 0 ]; then set -- $("$bin" list); fi
for case in "$@"; do
    a=$(ir "$case" 1000)
    b=$(ir "$case" 11000)
    printf '%-34s %8d\n' "$case" $(( (b - a) / 10000 ))
done
