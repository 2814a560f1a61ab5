#!/usr/bin/env bash
# The standard benchmark set: Acquire + Release through the allocator's gRPC (two unary calls;
# and as two messages on one lease channel per client), through the in-process service without
# gRPC (direct: what the RPC layers cost is the difference), and the ceiling's statement pair
# straight to the database (raw-sql), at 1, 8 and 32 clients, on PostgreSQL,
# MariaDB and SQLite; then MakeCall end to end (PostgreSQL and MariaDB) and Stats on 100,000
# extensions. Release build; each point
# runs SECONDS_PER_POINT (default 10). Prints our service next to the ceiling as a ratio.
# PostgreSQL is a private cluster configured as production should be (bench/pg.sh: autovacuum
# on); BENCH_DATABASE_URL=postgres://... uses an existing server instead. MariaDB is the
# machine's server (TEST_MYSQL_URL, default mysql://root@127.0.0.1:3306/mysql), checked first.
#   bash bench/run.sh            # all
#   SECONDS_PER_POINT=5 bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/pg.sh
if [ -n "${BENCH_DATABASE_URL:-}" ]; then
  export TEST_DATABASE_URL="$BENCH_DATABASE_URL"
else
  # pg_stat_statements: loadgen's calls mode reports statements per call from it.
  pg_start "shared_preload_libraries=pg_stat_statements"
  export TEST_DATABASE_URL="$PG_URL"
fi
bash scripts/ensure-mariadb.sh
export TEST_MYSQL_URL="${TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/mysql}"
secs="${SECONDS_PER_POINT:-10}"
cargo build --release --quiet -p loadgen
lg="${CARGO_TARGET_DIR:-target}/release/loadgen"
out="$(mktemp)"
trap 'rm -f "$out"; pg_stop' EXIT
for db in postgres mariadb sqlite; do
  for clients in 1 8 32; do
    for mode in acquire-release lease-channel direct raw-sql; do
      "$lg" --mode "$mode" --db "$db" --clients "$clients" --seconds "$secs" --json >> "$out"
    done
  done
done
"$lg" --mode calls --db postgres --clients 8 --seconds "$secs" --json >> "$out"
"$lg" --mode calls --db postgres --clients 32 --seconds "$secs" --json >> "$out"
"$lg" --mode calls --db mariadb --clients 8 --seconds "$secs" --json >> "$out"
"$lg" --mode stats --db postgres --clients 8 --seconds "$secs" --json >> "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
# pairs/s of each way, then each as a ratio of raw-sql (unary, channel, direct), then latency.
print(f"{'db':<9}{'clients':>8}{'unary':>7}{'channel':>8}{'direct':>7}{'raw-sql':>8}  {'u/raw':>6}{'c/raw':>6}{'d/raw':>6}"
      f"  {'unary p50/p99':>14}{'channel p50/p99':>16}{'raw p50/p99':>13}  errors")
for db in ("postgres", "mariadb", "sqlite"):
    for c in (1, 8, 32):
        u, ch, d, q = (next(r for r in rows if r["mode"] == m and r["db"] == db and r["clients"] == c)
                       for m in ("acquire-release", "lease-channel", "direct", "raw-sql"))
        ratios = "".join(f"{(x['per_second'] / q['per_second'] if q['per_second'] else 0):>6.2f}" for x in (u, ch, d))
        lat = lambda x, w: f"{x['p50_ms']:.2f}/{x['p99_ms']:.2f}".rjust(w)
        errs = {**u["errors"], **ch["errors"], **d["errors"], **q["errors"]} or "none"
        print(f"{db:<9}{c:>8}{u['per_second']:>7.0f}{ch['per_second']:>8.0f}{d['per_second']:>7.0f}{q['per_second']:>8.0f}  {ratios}"
              f"  {lat(u, 14)}{lat(ch, 16)}{lat(q, 13)}  {errs}")
for r in rows:
    if r["mode"] in ("calls", "stats"):
        print(f"{r['mode']:<9}{r['db']:<9}{r['clients']:>4}  {r['per_second']:>10.0f} ops/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  max {r['max_ms']:.2f} ms  errors {r['errors'] or 'none'}")
for r in rows:
    if r["mode"] == "calls":
        parts = "  ".join(f"{k} {v:.2f}" for k, v in r.get("phases", {}).items())
        commits = "  ".join(f"{k} {v:.2f}" for k, v in r.get("db_commits_per_call", {}).items())
        trips = "  ".join(f"{k} {v:.2f}" for k, v in r.get("db_round_trips_per_call", {}).items())
        print(f"calls {r['db']} {r['clients']} clients: {parts}")
        print(f"    commits per call: {commits or 'n/a'}    statements per call: {trips or 'n/a'}")
for r in rows:
    if r["mode"] == "acquire-release" and r.get("phases"):
        ph = "  ".join(f"{k} {v:.2f}" for k, v in r["phases"].items())
        print(f"acquire-release {r['db']} {r['clients']} clients: {ph}")
PY
