#!/usr/bin/env bash
# The Acquire + Release statement pair alone, inside PostgreSQL (pgbench -M prepared, no
# service, no gRPC), in four designs on the same pool (4 tenants x 64 extensions, as loadgen):
#   raw   the ceiling: pick and mark, then free (loadgen's raw-sql pair)
#   ours  the service's statements: the one-statement Acquire (request-id try-lock and look-up,
#         pick, extension update, lease-history insert) and the one-statement Release (end the
#         lease row, free the extension); copies of FAST_LRU_SQL and END_LEASE_SQL in
#         allocator-svc/src/store/postgres.rs, with pgbench variables for the parameters
#   once  the lease history written once, at Release: the live lease's fields sit on the
#         extension row (two more partial indexes: live request id, live lease id) and the
#         Release inserts the finished history row
#   fl    a separate free list: no index of `extensions` covers a column a lease changes (its
#         updates can be HOT); Acquire deletes the pick from `free_extensions`, Release
#         inserts it back
# Each design runs in a database of its own on a private cluster (bench/pg.sh), rounds
# alternating; afterwards no extension may be left in use, no database may hold more history
# rows than pairs, and the free list must hold the whole pool again, or the script fails.
#   bash bench/pair-variants.sh                       # 8 s points, 2 rounds, 1/8/32 clients
#   SECS=4 ROUNDS="1" CLIENTS="8" bash bench/pair-variants.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/pg.sh
pg_start
dir=bench/pair-variants
base="${PG_URL%/postgres}"
for db in base once fl; do
  psql -q "$PG_URL" -c "create database $db"
  for f in migrations/allocator/postgres/*.sql "$dir/pool.sql"; do
    psql -q -v ON_ERROR_STOP=1 "$base/$db" -f "$f" >/dev/null
  done
done
psql -q -v ON_ERROR_STOP=1 "$base/once" -f "$dir/once-schema.sql"
psql -q -v ON_ERROR_STOP=1 "$base/fl" -f "$dir/fl-schema.sql"
declare -A pairs=([base]=0 [once]=0 [fl]=0)
printf '%-6s %-8s %-6s %10s %8s\n' round clients design pairs/s "x raw"
for round in ${ROUNDS:-1 2}; do
  for c in ${CLIENTS:-1 8 32}; do
    raw=""
    for v in raw ours once fl; do
      db=base; [ "$v" = once ] && db=once; [ "$v" = fl ] && db=fl
      # A pair whose Acquire granted nothing releases nothing (its variables are empty).
      out="$(pgbench -n -M prepared -c "$c" -j "$(( c > 2 ? 2 : c ))" -T "${SECS:-8}" \
        -f "$dir/$v.sql" "$base/$db" 2>&1)" || { echo "$out" >&2; exit 1; }
      tps="$(sed -nE 's/^tps = ([0-9.]+).*/\1/p' <<<"$out")"
      n="$(sed -nE 's/.*actually processed: ([0-9]+).*/\1/p' <<<"$out")"
      [ -n "$tps" ] && [ -n "$n" ] || { echo "$out" >&2; exit 1; }
      [ "$v" = raw ] && raw="$tps" || pairs[$db]=$(( ${pairs[$db]} + n ))
      printf '%-6s %-8s %-6s %10.0f %8.2f\n' "$round" "$c" "$v" "$tps" "$(python3 -c "print($tps / $raw)")"
    done
  done
done
for db in base once fl; do
  got="$(psql -At "$base/$db" -c "select count(*) from leases")"
  busy="$(psql -At "$base/$db" -c "select count(*) from extensions where status <> 'available'")"
  free=256
  [ "$db" = fl ] && free="$(psql -At "$base/$db" -c "select count(*) from free_extensions")"
  if [ "$got" -gt "${pairs[$db]}" ] || [ "$busy" != 0 ] || [ "$free" != 256 ]; then
    echo "pair-variants: $db: $got history rows for ${pairs[$db]} pairs, $busy extensions left in use, $free of 256 on the free list" >&2
    exit 1
  fi
  # An Acquire statement whose snapshot fell behind the other clients can find nothing free
  # (the service runs it again; see docs/performance.md); its pair writes no history row.
  echo "$db: ${pairs[$db]} pairs, $(( ${pairs[$db]} - got )) of them granted nothing; every extension free"
done
