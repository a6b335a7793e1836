#!/usr/bin/env bash
# Instructions the server executes per operation, counted by valgrind's callgrind.
#
#   benches/instructions/run.sh [--postgres ADMIN_URL] [--bin PATH] SCENARIO [COUNT]
#
# SCENARIO is healthz, client_credentials, refresh, flow (authorization code, remembered
# consent), introspection or password. The release binary (`cargo build --release`) runs
# under callgrind against a fresh database (SQLite, or with --postgres a throwaway
# database on that server, made and dropped with psql); 200 operations warm it up, then
# COUNT (default 2000) are counted. It prints the instructions per operation and keeps the
# profile for `callgrind_annotate --inclusive=yes`.
#
# Why: this host's throughput moves by up to ±20% between adjacent runs, which hides any
# change smaller than that; an instruction count repeats to within a fraction of a percent.
# It counts gatehouse's own user-space work only: not the kernel, not PostgreSQL, not
# waiting, and under valgrind aws-lc takes its AVX2 code path instead of AVX-512, so RSA
# weighs differently than on the real CPU. Compare counts of two builds; take throughput
# from `cargo bench --bench load`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin="$repo/target/release/gatehouse"
postgres=""
while [[ $# -gt 0 && $1 == --* ]]; do
    case $1 in
        --postgres) postgres=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
scenario=${1:?usage: run.sh [--postgres ADMIN_URL] [--bin PATH] SCENARIO [COUNT]}
count=${2:-2000}
for tool in valgrind callgrind_control python3; do
    command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install valgrind python3)" >&2; exit 1; }
done
[[ -x $bin ]] || { echo "no binary at $bin: cargo build --release" >&2; exit 1; }

work=$(mktemp -d)
database=""
server=""
cleanup() {
    [[ -n $server ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    [[ -n $database ]] && psql "$postgres" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null
    true
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
if [[ -n $postgres ]]; then
    database="gatehouse_instructions_$$"
    psql "$postgres" -qc "CREATE DATABASE $database" >/dev/null
    url="${postgres%/*}/$database"
else
    url="sqlite://$work/gatehouse.db"
fi
# The benchmark's own configuration, clients and secrets (see benches/load/server.rs).
secret="bench-client-secret-0123456789"
hash=$(echo "$secret" | "$bin" hash-secret --stdin)
sed -e "s|@PORT@|$port|g" -e "s|@DATABASE_URL@|$url|g" -e "s|@SECRET_HASH@|$hash|g" \
    -e "s|@SYSTEM_SECRET@|bench-system-secret-0123456789abcdef0123456789|g" \
    "$repo/benches/load/gatehouse.toml" > "$work/gatehouse.toml"
config=(--config "$work/gatehouse.toml")
"$bin" "${config[@]}" migrate >/dev/null 2>&1
echo "bench password 0123" | "$bin" "${config[@]}" users add bench --password-stdin >/dev/null

valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
    "$bin" "${config[@]}" serve >"$work/server.log" 2>&1 &
server=$!
python3 - "$port" <<'PY'
import http.client, sys, time
for _ in range(600):
    try:
        c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=5)
        c.request("GET", "/healthz")
        if c.getresponse().status == 200:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit("the server did not come up")
PY
python3 "$here/drive.py" "$port" "$scenario" 200 "$work"
callgrind_control --zero "$server" >/dev/null 2>&1
python3 "$here/drive.py" "$port" "$scenario" "$count" "$work"
callgrind_control --dump "$server" >/dev/null 2>&1
kill "$server"
wait "$server" 2>/dev/null || true
server=""
profile=$(ls "$work"/callgrind.out.* | head -1)
total=$(awk '/^summary:/ {print $2; exit}' "$profile")
kept="${TMPDIR:-/tmp}/gatehouse-instructions-$scenario${postgres:+-postgres}.out"
cp "$profile" "$kept"
echo "$scenario${postgres:+ (PostgreSQL)}: $((total / count)) instructions per operation over $count operations; profile: $kept"
rm -rf "$work"
