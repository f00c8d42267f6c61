#!/usr/bin/env bash
# Runs every missive-bench scenario against Synapse, Missive on SQLite and Missive on
# PostgreSQL, on this machine, in one run, and prints one table with the ratios.
# Usage: bench/run.sh [extra missive-bench flags, e.g. --rooms 50 --members 200]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh

run_bench() {
    local label=$1 url=$2 pid=$3
    shift 3
    echo "bench: running scenarios against $label"
    "$bench" --url "$url" --secret "$secret" --label "$label" --pid "$pid" "$@" >>"$results"
}

# --- Synapse (SQLite, rate limits off, shared-secret registration) ---
mkdir -p "$work/synapse"
(cd "$work/synapse" && "$venv/bin/python" -m synapse.app.homeserver --server-name bench.local \
    --config-path homeserver.yaml --generate-config --report-stats=no >/dev/null)
sed -i '/^registration_shared_secret:/d' "$work/synapse/homeserver.yaml"
printf '\n' >>"$work/synapse/homeserver.yaml"
cat >>"$work/synapse/homeserver.yaml" <<YAML
registration_shared_secret: "$secret"
# The many-users scenario registers 10,000 accounts: at the default 12 rounds Synapse would
# spend most of an hour in bcrypt. Registration time is reported for information only.
bcrypt_rounds: 4
suppress_key_server_warning: true
trusted_key_servers: []
presence:
  enabled: false
rc_message: { per_second: 100000, burst_count: 100000 }
rc_registration: { per_second: 100000, burst_count: 100000 }
rc_login:
  address: { per_second: 100000, burst_count: 100000 }
  account: { per_second: 100000, burst_count: 100000 }
  failed_attempts: { per_second: 100000, burst_count: 100000 }
rc_joins:
  local: { per_second: 100000, burst_count: 100000 }
  remote: { per_second: 100000, burst_count: 100000 }
rc_joins_per_room: { per_second: 100000, burst_count: 100000 }
rc_invites:
  per_room: { per_second: 100000, burst_count: 100000 }
  per_user: { per_second: 100000, burst_count: 100000 }
rc_3pid_validation: { per_second: 100000, burst_count: 100000 }
rc_key_requests: { per_second: 100000, burst_count: 100000 }
rc_room_creation: { per_second: 100000, burst_count: 100000 }
rc_presence:
  per_user: { per_second: 100000, burst_count: 100000 }
rc_delayed_event_mgmt: { per_second: 100000, burst_count: 100000 }
YAML
sed -i 's/port: 8008/port: 18208/' "$work/synapse/homeserver.yaml"
(cd "$work/synapse" && exec "$venv/bin/python" -m synapse.app.homeserver -c homeserver.yaml >synapse.out 2>&1) &
pids+=($!)
synapse_pid=$!
wait_up http://127.0.0.1:18208
run_bench "synapse" http://127.0.0.1:18208 "$synapse_pid" "$@"
kill "$synapse_pid"; wait "$synapse_pid" 2>/dev/null || true

# --- Missive on SQLite ---
start_missive() {
    local label=$1 port=$2
    shift 2
    # As an operator runs it: default configuration and log level, rate limits off. The
    # push scenario's gateway is on loopback, a private range a deployment allows for its
    # own gateway.
    env MISSIVE_LISTEN=127.0.0.1:$port MISSIVE_DATA_DIR="$work/$label" MISSIVE_RATE_LIMITS__ENABLED=false \
        MISSIVE_REGISTRATION_SHARED_SECRET=$secret \
        MISSIVE_PUSH__GATEWAY_ALLOWED_RANGES='["127.0.0.0/8"]' "$@" "$missive" >"$work/$label.out" 2>&1 &
    pids+=($!)
    missive_pid=$!
    wait_up "http://127.0.0.1:$port"
}
start_missive missive-sqlite 18108
run_bench missive-sqlite http://127.0.0.1:18108 "$missive_pid" "$@"
kill "$missive_pid"; wait "$missive_pid" 2>/dev/null || true

# --- Missive on PostgreSQL ---
db="missive_bench_$$"
if psql "$pg_base/postgres" -qc "CREATE DATABASE $db" 2>/dev/null; then
    start_missive missive-postgres 18109 MISSIVE_DATABASE_URL="$pg_base/$db"
    run_bench missive-postgres http://127.0.0.1:18109 "$missive_pid" "$@"
    kill "$missive_pid"; wait "$missive_pid" 2>/dev/null || true
    psql "$pg_base/postgres" -qc "DROP DATABASE $db" || true
else
    echo "bench: no PostgreSQL at $pg_base, skipping missive-postgres" >&2
fi

report

# Two servers of each kind federating: its own table (not when a subset of scenarios was
# asked: the federation script picks its own).
case " $* " in
*" --scenarios"*) ;;
*)
    echo
    "$root/bench/federation.sh" "$@"
    ;;
esac
