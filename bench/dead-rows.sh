#!/usr/bin/env bash
# Dead-row growth in the pool table during a long Acquire + Release run (8 clients, 4 tenants x
# 64 extensions), once with autovacuum off (as this machine's shared server runs) and once on
# with a 10 s naptime (as production should run), each in a private PostgreSQL cluster (initdb
# in a temporary folder, its own port; the shared server's settings are never touched).
#   bash bench/dead-rows.sh                 # 300 s per setting
#   SECONDS_PER_RUN=60 bash bench/dead-rows.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${SECONDS_PER_RUN:-300}"
every="${SAMPLE_EVERY:-30}"
cargo build --release --quiet -p loadgen
lg="$(pwd)/${CARGO_TARGET_DIR:-target}/release/loadgen"
. bench/pg.sh

run() {
  local av="$1" dir url db port
  pg_start "autovacuum=$av"
  dir="$PG_DIR"
  url="$PG_URL"
  port="${url##*:}"; port="${port%%/*}"
  TEST_DATABASE_URL="$url" "$lg" --mode acquire-release --clients 8 --seconds "$secs" --json > "$dir/report.json" &
  local pid=$! t=0
  echo "autovacuum=$av"
  printf '%6s %10s %10s %12s %12s %10s %12s %12s\n' time pairs/s ext_dead ext_hot_upd ext_vacuums ext_kB lease_dead lease_hot_upd
  local last=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep "$every"; t=$((t + every))
    db="$(psql "$url" -Atc "select datname from pg_database where datname not in ('postgres','template0','template1') order by oid desc limit 1" 2>/dev/null || true)"
    [ -n "$db" ] || continue
    (psql "postgres://postgres@127.0.0.1:$port/$db" -At -F ' ' -c "
      select (select n_dead_tup from pg_stat_user_tables where relname = 'extensions'),
             (select n_tup_hot_upd from pg_stat_user_tables where relname = 'extensions'),
             (select autovacuum_count from pg_stat_user_tables where relname = 'extensions'),
             pg_total_relation_size('extensions') / 1024,
             (select n_dead_tup from pg_stat_user_tables where relname = 'leases'),
             (select n_tup_hot_upd from pg_stat_user_tables where relname = 'leases'),
             (select count(*) from leases)" 2>/dev/null || true) |
      while read -r dead hot vac kb ldead lhot leases; do
        printf '%6s %10s %10s %12s %12s %10s %12s %12s\n' "${t}s" "$(( (leases - last) / every ))" "$dead" "$hot" "$vac" "$kb" "$ldead" "$lhot"
        echo "$leases" > "$dir/last"
      done
    [ -f "$dir/last" ] && last="$(cat "$dir/last")"
  done
  wait "$pid" || true
  python3 -c "import json,sys; r=json.loads(open('$dir/report.json').read().strip().splitlines()[-1]); print(f\"  whole run: {r['per_second']:.0f} pairs/s, p99 {r['p99_ms']:.2f} ms, errors {r['errors'] or 'none'}\")" || true
  pg_stop
}

# RUNS="on" bash bench/dead-rows.sh runs one setting only.
for av in ${RUNS:-off on}; do
  run "$av"
done
