#!/usr/bin/env bash
# A/B of two Missive builds on this machine, Missive alone: runs missive-bench against
# binary A then binary B, alternating, N rounds, each server started fresh as an operator
# runs it (default configuration and log level, rate limits off), and prints every run's
# figures side by side. Build the two binaries in separate target dirs: cargo may take one
# checkout's build as fresh for another in a shared one.
# Usage: bench/ab.sh A_BINARY B_BINARY [rounds] [sqlite|postgres|both] [missive-bench flags...]
# e.g.   bench/ab.sh /tmp/base/missive target/release/missive 2 sqlite --scenarios sector_day --sector-secs 40
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 rounds=${3:-2} backends=${4:-sqlite}
shift 4 || shift $#
bench="${MISSIVE_BENCH_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/missive-target}/release/missive-bench}"
pg_base="${MISSIVE_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
secret=bench-secret
work=$(mktemp -d)
results="$work/results.jsonl"
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

run_one() {
    local label=$1 binary=$2 backend=$3
    shift 3
    local port=18108 extra=()
    if [ "$backend" = postgres ]; then
        port=18109
        local db="missive_ab_$$_${RANDOM}"
        psql "$pg_base/postgres" -qc "CREATE DATABASE $db"
        extra=(MISSIVE_DATABASE_URL="$pg_base/$db")
    fi
    rm -rf "$work/data"
    env MISSIVE_LISTEN=127.0.0.1:$port MISSIVE_DATA_DIR="$work/data" MISSIVE_RATE_LIMITS__ENABLED=false \
        MISSIVE_REGISTRATION_SHARED_SECRET=$secret "${extra[@]}" "$binary" >"$work/$label.out" 2>&1 &
    server=$!
    for _ in $(seq 1 120); do
        curl -sf "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null && break
        sleep 0.5
    done
    "$bench" --url "http://127.0.0.1:$port" --secret "$secret" --label "$label-$backend" --pid "$server" "$@" >>"$results"
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=
    if [ "$backend" = postgres ]; then
        psql "$pg_base/postgres" -qc "DROP DATABASE ${extra[0]##*/}" || true
    fi
}

case $backends in
both) list=(sqlite postgres) ;;
*) list=("$backends") ;;
esac
for round in $(seq 1 "$rounds"); do
    for backend in "${list[@]}"; do
        echo "ab: round $round, $backend: A" >&2
        run_one "A$round" "$a" "$backend" "$@"
        echo "ab: round $round, $backend: B" >&2
        run_one "B$round" "$b" "$backend" "$@"
    done
done
python3 bench/report.py --side-by-side "$results"
