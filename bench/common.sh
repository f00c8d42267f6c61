# Shared by the bench scripts, sourced from the checkout's root: a work folder cleaned on
# exit, Synapse installed from PyPI, Missive and missive-bench built in release mode, and
# the table printed at the end.
root=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/missive-target}"
venv="${MISSIVE_BENCH_VENV:-$HOME/.cache/missive-bench-venv}"
work=$(mktemp -d)
results="$work/results.jsonl"
pg_base="${MISSIVE_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
secret=bench-secret
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

wait_up() {
    for _ in $(seq 1 120); do
        curl -sf "$1/_matrix/client/versions" >/dev/null && return 0
        sleep 0.5
    done
    echo "bench: server at $1 did not come up" >&2
    exit 1
}

echo "bench: installing Synapse into $venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade matrix-synapse >/dev/null
synapse_version=$("$venv/bin/python" -c 'import synapse; print(synapse.__version__)')

echo "bench: building Missive (release)"
cargo build --release --locked -p missive -p missive-bench >/dev/null
bench="$CARGO_TARGET_DIR/release/missive-bench"
missive="$CARGO_TARGET_DIR/release/missive"

# Prints the machine, then the figures gathered in $results as one table.
report() {
    echo
    echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); Synapse $synapse_version; $(date -u +%Y-%m-%d)"
    python3 "$root/bench/report.py" "$results"
}
