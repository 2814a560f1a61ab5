#!/usr/bin/env bash
# The standard benchmark set: Acquire + Release through the allocator's gRPC against the same
# statement pair straight to the database (raw-sql), at 1, 8 and 32 clients, on PostgreSQL and
# SQLite; then MakeCall end to end and Stats on 100,000 extensions. Release build; each point
# runs SECONDS (default 10). Prints our service next to the ceiling as a ratio.
#   bash bench/run.sh            # all
#   SECONDS_PER_POINT=5 bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
secs="${SECONDS_PER_POINT:-10}"
cargo build --release --quiet -p loadgen
lg="${CARGO_TARGET_DIR:-target}/release/loadgen"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
for db in postgres sqlite; do
  for clients in 1 8 32; do
    for mode in acquire-release raw-sql; do
      "$lg" --mode "$mode" --db "$db" --clients "$clients" --seconds "$secs" --json >> "$out"
    done
  done
done
"$lg" --mode calls --db postgres --clients 8 --seconds "$secs" --json >> "$out"
"$lg" --mode stats --db postgres --clients 8 --seconds "$secs" --json >> "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'db':<9}{'clients':>8}  {'service pairs/s':>16}{'raw-sql pairs/s':>16}{'ratio':>8}  {'svc p50':>9}{'svc p99':>9}{'raw p99':>9}  errors")
for db in ("postgres", "sqlite"):
    for c in (1, 8, 32):
        s = next(r for r in rows if r["mode"] == "acquire-release" and r["db"] == db and r["clients"] == c)
        q = next(r for r in rows if r["mode"] == "raw-sql" and r["db"] == db and r["clients"] == c)
        ratio = s["per_second"] / q["per_second"] if q["per_second"] else 0
        errs = {**s["errors"], **q["errors"]} or "none"
        print(f"{db:<9}{c:>8}  {s['per_second']:>16.0f}{q['per_second']:>16.0f}{ratio:>8.2f}  {s['p50_ms']:>7.2f}ms{s['p99_ms']:>7.2f}ms{q['p99_ms']:>7.2f}ms  {errs}")
for mode in ("calls", "stats"):
    r = next(r for r in rows if r["mode"] == mode)
    print(f"{mode:<9}{r['clients']:>8}  {r['per_second']:>10.0f} ops/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  max {r['max_ms']:.2f} ms  errors {r['errors'] or 'none'}")
PY
