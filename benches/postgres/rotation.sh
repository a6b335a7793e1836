#!/usr/bin/env bash
# What one refresh-token rotation costs on PostgreSQL, in CPU of the whole machine per
# rotation (PostgreSQL and pgbench, its client), for two ways of storing refresh tokens:
#
#   per_token  gatehouse's until migration 2026-12-06-000001: a row per refresh token. The
#              statements it sent: the SELECT that found the presented token with its
#              family and user, then RotateRefresh (lock the family row, mark the token
#              rotated, insert its successor), each committed on its own.
#   one_row    a row per family that holds the current token's hash: one UPDATE ...
#              RETURNING that checks the presented hash, moves it on and returns the
#              family and whether its user is disabled. gatehouse's common refresh since
#              5274720 (RotateRedeemable, which checks the user in the same statement).
#   one_row_lookup
#              the same row per family, in the two steps oxide-auth's refresh flow takes
#              (recover the grant, then issue): a SELECT of the family by its id (which
#              the token carries), then an UPDATE that moves the hash on only if it is
#              still the presented one. gatehouse's fallback (RotateInFamily), when the
#              request narrows the scope or a check of the one-statement rotation fails.
#
# Each pgbench client rotates its own chain of tokens (fam<client>, c<client>-<gen>), so
# no two rotate the same token, among 100,000 families with one live token each, analyzed,
# so that the planner sees tables the size of a small deployment's. Scratch database,
# dropped at the end; the schema is gatehouse's PostgreSQL migration, plus the one_row table
# this script adds.
#
#   bash benches/postgres/rotation.sh [clients=8] [seconds=8] [runs=3]
#
# Needs psql and pgbench, PostgreSQL at $PGHOST:$PGPORT (127.0.0.1:5432) as $PGUSER
# (postgres), and nothing else running: the CPU is read from /proc/stat.
set -euo pipefail
cd "$(dirname "$0")/../.."
clients=${1:-8}
seconds=${2:-8}
runs=${3:-3}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
db="gatehouse_rotation_$$"
work="$(mktemp -d)"
trap 'psql -qd postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null; rm -rf "$work"' EXIT

psql -qd postgres -c "CREATE DATABASE $db"
psql -qd "$db" -v ON_ERROR_STOP=1 -f migrations/postgresql/2026-11-23-000001_create_schema/up.sql
psql -qd "$db" -v ON_ERROR_STOP=1 <<'SQL'
INSERT INTO clients VALUES ('app', 'app', NULL, '', 'refresh_token', 'api', 'api', 'app', '',
    false, true, 0);
INSERT INTO users SELECT 'u' || i, 'user' || i, 'x', false, 0, 0 FROM generate_series(0, 255) i;
INSERT INTO token_families SELECT 'fam' || i, 'app', 'u' || (i % 256), 'password', 'api', 0,
    9999999999, NULL FROM generate_series(0, 99999) i;
-- token_families as it is, plus what a row per family needs: the current token's digest
-- and the idle limit and rotation time that are a token row's today.
CREATE TABLE families_one_row (LIKE token_families INCLUDING ALL);
ALTER TABLE families_one_row
    ADD FOREIGN KEY (client_id) REFERENCES clients (id) ON DELETE CASCADE,
    ADD FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE,
    ADD COLUMN current_hash TEXT NOT NULL,
    ADD COLUMN idle_expires_at BIGINT NOT NULL,
    ADD COLUMN rotated_at BIGINT;
SQL

# Every run starts from the first token of each chain.
reset() {
  psql -qd "$db" -v ON_ERROR_STOP=1 <<'SQL'
TRUNCATE refresh_tokens, families_one_row;
INSERT INTO refresh_tokens SELECT 'c' || i || '-0', 'fam' || i, 'app', 'api', 0, 9999999999, NULL
    FROM generate_series(0, 99999) i;
INSERT INTO families_one_row SELECT 'fam' || i, 'app', 'u' || (i % 256), 'password', 'api', 0,
    9999999999, NULL, 'c' || i || '-0', 9999999999, NULL FROM generate_series(0, 99999) i;
SQL
  psql -qd "$db" -c "VACUUM ANALYZE" >/dev/null
}

presented="concat('c', :client_id::text, '-', :gen::text)"
successor="concat('c', :client_id::text, '-', (:gen::int + 1)::text)"
family="concat('fam', :client_id::text)"
cat >"$work/per_token.sql" <<SQL
SELECT r.token_hash, r.family_id, r.client_id, r.scope, r.created_at, r.idle_expires_at, r.rotated_at, f.id, f.client_id, f.user_id, f.grant_type, f.scope, f.created_at, f.expires_at, f.revoked_at, u.disabled FROM ((refresh_tokens r INNER JOIN token_families f ON (f.id = r.family_id)) LEFT OUTER JOIN users u ON (f.user_id = u.id)) WHERE (r.token_hash = $presented);
WITH family AS (SELECT id FROM token_families WHERE id = $family AND revoked_at IS NULL FOR NO KEY UPDATE), rotated AS (UPDATE refresh_tokens SET rotated_at = 1 WHERE token_hash = $presented AND rotated_at IS NULL AND EXISTS (SELECT 1 FROM family) RETURNING token_hash), successor AS (INSERT INTO refresh_tokens (token_hash, family_id, client_id, scope, created_at, idle_expires_at) SELECT $successor, $family, 'app', 'api', 1, 9999999999 WHERE EXISTS (SELECT 1 FROM rotated)) SELECT count(*) FROM rotated;
\set gen :gen + 1
SQL
cat >"$work/one_row.sql" <<SQL
UPDATE families_one_row f SET current_hash = $successor, idle_expires_at = 9999999999, rotated_at = 1 WHERE f.id = $family AND f.current_hash = $presented AND f.revoked_at IS NULL RETURNING f.client_id, f.user_id, f.grant_type, f.scope, f.created_at, f.expires_at, f.idle_expires_at, (SELECT disabled FROM users u WHERE u.id = f.user_id);
\set gen :gen + 1
SQL
cat >"$work/one_row_lookup.sql" <<SQL
SELECT f.id, f.client_id, f.user_id, f.grant_type, f.scope, f.created_at, f.expires_at, f.revoked_at, f.current_hash, f.idle_expires_at, u.disabled FROM families_one_row f LEFT OUTER JOIN users u ON (f.user_id = u.id) WHERE f.id = $family;
UPDATE families_one_row SET current_hash = $successor, idle_expires_at = 9999999999, rotated_at = 1 WHERE id = $family AND current_hash = $presented AND revoked_at IS NULL;
\set gen :gen + 1
SQL

# user nice system idle iowait irq softirq steal, in USER_HZ (100 per second). Steal is the
# hypervisor's time, not work done here, and the load benchmark's process CPU leaves it out.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

printf '%-14s %4s %10s %12s %10s %14s\n' design run rotations "rotations/s" "busy cores" "CPU µs/rotation"
for run in $(seq 1 "$runs"); do
  for design in per_token one_row one_row_lookup; do
    reset
    before=$(busy_ticks)
    out=$(pgbench -n -M prepared -c "$clients" -j 2 -T "$seconds" -D gen=0 -f "$work/$design.sql" "$db" 2>&1)
    after=$(busy_ticks)
    done_=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
    if [ -z "$done_" ] || [ "$done_" -eq 0 ] || [ "${failed:-0}" -ne 0 ]; then
      echo "$design: pgbench failed" >&2
      echo "$out" >&2
      exit 1
    fi
    # Each transaction must have rotated a token: the chains moved on by as many in all.
    case $design in
      per_token) rotated=$(psql -Atqd "$db" -c "SELECT count(*) FROM refresh_tokens WHERE rotated_at IS NOT NULL") ;;
      one_row*) rotated=$(psql -Atqd "$db" -c "SELECT sum(split_part(current_hash, '-', 2)::bigint) FROM families_one_row") ;;
    esac
    if [ "$rotated" -ne "$done_" ]; then
      echo "$design: $done_ transactions but $rotated rotations" >&2
      exit 1
    fi
    ticks=$((after - before))
    awk -v d="$design" -v r="$run" -v n="$done_" -v t="$ticks" -v s="$seconds" \
      'BEGIN { printf "%-14s %4d %10d %12.0f %10.2f %14.1f\n", d, r, n, n / s, t / 100 / s, t * 10000 / n }'
  done
done
