#!/usr/bin/env bash
# The compliance gate's cost on MakeCall, same run, same private PostgreSQL cluster: calls end
# to end at 8 clients without any rule, with caps and the cool-down on (every call takes the
# counting path), with a 1,000,000-entry do-not-call list, and with both. Release build; each
# point runs SECONDS_PER_POINT (default 10), REPEAT times (default 2), interleaved.
#   bash bench/compliance.sh
#   DNC_ENTRIES=100000 SECONDS_PER_POINT=5 bash bench/compliance.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/pg.sh
if [ -n "${BENCH_DATABASE_URL:-}" ]; then
  export TEST_DATABASE_URL="$BENCH_DATABASE_URL"
else
  pg_start "shared_preload_libraries=pg_stat_statements"
  export TEST_DATABASE_URL="$PG_URL"
fi
secs="${SECONDS_PER_POINT:-10}"
dnc="${DNC_ENTRIES:-1000000}"
repeat="${REPEAT:-2}"
clients="${CLIENTS:-8}"
cargo build --release --quiet -p loadgen
lg="${CARGO_TARGET_DIR:-target}/release/loadgen"
out="$(mktemp)"
trap 'rm -f "$out"; pg_stop' EXIT
for _ in $(seq "$repeat"); do
  for variant in none caps dnc both; do
    extra=()
    case "$variant" in
      caps) extra=(--caps) ;;
      dnc) extra=(--dnc-entries "$dnc") ;;
      both) extra=(--caps --dnc-entries "$dnc") ;;
    esac
    "$lg" --mode calls --db postgres --clients "$clients" --seconds "$secs" --json "${extra[@]}" \
      | python3 -c "import json,sys; r=json.load(sys.stdin); r['variant']='$variant'; print(json.dumps(r))" >> "$out"
  done
done
python3 - "$out" "$dnc" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
dnc = int(sys.argv[2])
names = {"none": "no rules", "caps": "caps + cool-down", "dnc": f"{dnc:,} do-not-call entries", "both": "both"}
base = [r for r in rows if r["variant"] == "none"]
print(f"{'variant':<34}{'calls/s':>9}{'vs none':>9}{'p50 ms':>9}{'p99 ms':>9}{'own ms':>8}{'gw commits':>12}{'gw stmts':>10}  errors")
for v in ("none", "caps", "dnc", "both"):
    for i, r in enumerate(x for x in rows if x["variant"] == v):
        ratio = r["per_second"] / base[i]["per_second"] if i < len(base) and base[i]["per_second"] else 0
        c = r.get("db_commits_per_call", {}).get("gateway", float("nan"))
        s = r.get("db_round_trips_per_call", {}).get("gateway", float("nan"))
        own = r.get("phases", {}).get("make_call_own_mean_ms", float("nan"))
        print(f"{names[v]:<34}{r['per_second']:>9.0f}{ratio:>9.2f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{own:>8.2f}{c:>12.2f}{s:>10.2f}  {r['errors'] or 'none'}")
PY
