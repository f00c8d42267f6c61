#!/usr/bin/env bash
# The federation scenario: two servers of one kind federating over TLS on loopback (two
# Synapse, two Missive on SQLite, two Missive on PostgreSQL), in one run, one table.
# Each pair trusts a CA generated here; the servers are named localhost:<TLS port>.
# Usage: bench/federation.sh [extra missive-bench flags, e.g. --members 200]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh

# A state PKI of one CA; every server gets a certificate for localhost from it.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=Missive bench CA" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
    -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$work/san.ext"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
    -extfile "$work/san.ext" -out "$work/tls.crt" 2>/dev/null

run_pair() {
    local label=$1 url_a=$2 pid_a=$3 url_b=$4 pid_b=$5
    shift 5
    echo "bench: federation scenario on $label"
    "$bench" --url "$url_a" --secret "$secret" --peer-url "$url_b" --peer-secret "$secret" --label "$label" \
        --pid "$pid_a" --peer-pid "$pid_b" --scenarios federation "$@" >>"$results"
}

# --- Two Synapse (SQLite, rate limits off, shared-secret registration) ---
start_synapse() {
    local name=$1 client_port=$2 tls_port=$3 dir="$work/$1"
    mkdir -p "$dir"
    local limit="{ per_second: 100000, burst_count: 100000 }"
    cat >"$dir/homeserver.yaml" <<YAML
server_name: "localhost:$tls_port"
pid_file: $dir/homeserver.pid
listeners:
  - { port: $client_port, bind_addresses: ['127.0.0.1'], type: http, tls: false, resources: [{ names: [client], compress: false }] }
  - { port: $tls_port, bind_addresses: ['127.0.0.1'], type: http, tls: true, resources: [{ names: [federation], compress: false }] }
tls_certificate_path: $work/tls.crt
tls_private_key_path: $work/tls.key
federation_verify_certificates: true
federation_custom_ca_list: [$work/ca.pem]
ip_range_whitelist: ['127.0.0.0/8', '::1/128']
trusted_key_servers: []
suppress_key_server_warning: true
database: { name: sqlite3, args: { database: $dir/homeserver.db } }
media_store_path: $dir/media
signing_key_path: $dir/signing.key
report_stats: false
macaroon_secret_key: bench-macaroon
form_secret: bench-form
registration_shared_secret: "$secret"
bcrypt_rounds: 4
presence: { enabled: false }
rc_message: $limit
rc_registration: $limit
rc_login: { address: $limit, account: $limit, failed_attempts: $limit }
rc_joins: { local: $limit, remote: $limit }
rc_joins_per_room: $limit
rc_invites: { per_room: $limit, per_user: $limit }
rc_key_requests: $limit
rc_room_creation: $limit
rc_federation: { window_size: 1000, sleep_limit: 100000, sleep_delay: 0, reject_limit: 100000, concurrent: 100000 }
YAML
    "$venv/bin/python" -m synapse.app.homeserver --generate-keys -c "$dir/homeserver.yaml" >/dev/null
    (cd "$dir" && exec "$venv/bin/python" -m synapse.app.homeserver -c homeserver.yaml >synapse.out 2>&1) &
    pids+=($!)
    server_pid=$!
    wait_up "http://127.0.0.1:$client_port"
}
start_synapse synapse-a 18301 18302; synapse_a=$server_pid
start_synapse synapse-b 18303 18304; synapse_b=$server_pid
run_pair synapse http://127.0.0.1:18301 "$synapse_a" http://127.0.0.1:18303 "$synapse_b" "$@"
kill "$synapse_a" "$synapse_b"; wait "$synapse_a" "$synapse_b" 2>/dev/null || true

# --- Two Missive, default configuration and log level but rate limits ---
start_missive() {
    local name=$1 client_port=$2 tls_port=$3
    shift 3
    env MISSIVE_SERVER_NAME="localhost:$tls_port" MISSIVE_LISTEN="127.0.0.1:$client_port" \
        MISSIVE_FEDERATION_LISTEN="127.0.0.1:$tls_port" MISSIVE_TLS_CERT="$work/tls.crt" MISSIVE_TLS_KEY="$work/tls.key" \
        MISSIVE_FEDERATION__TRUSTED_CA_FILES="[\"$work/ca.pem\"]" MISSIVE_FEDERATION__ALLOW_PRIVATE_DESTINATIONS=true \
        MISSIVE_DATA_DIR="$work/$name" MISSIVE_RATE_LIMITS__ENABLED=false MISSIVE_REGISTRATION_SHARED_SECRET=$secret \
        "$@" "$missive" >"$work/$name.out" 2>&1 &
    pids+=($!)
    server_pid=$!
    wait_up "http://127.0.0.1:$client_port"
}
start_missive sqlite-a 18311 18312; missive_a=$server_pid
start_missive sqlite-b 18313 18314; missive_b=$server_pid
run_pair missive-sqlite http://127.0.0.1:18311 "$missive_a" http://127.0.0.1:18313 "$missive_b" "$@"
kill "$missive_a" "$missive_b"; wait "$missive_a" "$missive_b" 2>/dev/null || true

db_a="missive_fed_a_$$" db_b="missive_fed_b_$$"
if psql "$pg_base/postgres" -qc "CREATE DATABASE $db_a" 2>/dev/null && psql "$pg_base/postgres" -qc "CREATE DATABASE $db_b"; then
    start_missive postgres-a 18321 18322 MISSIVE_DATABASE_URL="$pg_base/$db_a"; missive_a=$server_pid
    start_missive postgres-b 18323 18324 MISSIVE_DATABASE_URL="$pg_base/$db_b"; missive_b=$server_pid
    run_pair missive-postgres http://127.0.0.1:18321 "$missive_a" http://127.0.0.1:18323 "$missive_b" "$@"
    kill "$missive_a" "$missive_b"; wait "$missive_a" "$missive_b" 2>/dev/null || true
    psql "$pg_base/postgres" -qc "DROP DATABASE $db_a" || true
    psql "$pg_base/postgres" -qc "DROP DATABASE $db_b" || true
else
    echo "bench: no PostgreSQL at $pg_base, skipping missive-postgres" >&2
fi

report
