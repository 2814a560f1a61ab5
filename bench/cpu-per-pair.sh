#!/usr/bin/env bash
# CPU per Acquire + Release pair, split between the database server and the load generator's
# process (which runs the clients and, except in raw-sql, the allocator): where a CPU-bound
# machine's time goes, per way of calling. Each point runs twice, N pairs and 16 pairs, and the
# difference is divided by N - 16, so set-up (migrations, the pool's import, connections) drops
# out. Database CPU is the server's processes' user + system time from /proc (the private
# cluster of bench/pg.sh; mariadbd or mysqld); SQLite runs inside the load generator. The last
# column counts the load generator's context switches per pair (voluntary + involuntary, from
# time(1)): each is a thread that went to sleep or was put off the core, so it counts the
# wake-ups between the client's, the connections' and the server's tasks.
#   bash bench/cpu-per-pair.sh                     # 8 clients, 6,000 pairs, 3 databases
#   CLIENTS="1 8" PAIRS=4000 DBS=postgres bash bench/cpu-per-pair.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/pg.sh
pg_start
export TEST_DATABASE_URL="$PG_URL"
bash scripts/ensure-mariadb.sh
export TEST_MYSQL_URL="${TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/mysql}"
cargo build --release --quiet -p loadgen
lg="${CARGO_TARGET_DIR:-target}/release/loadgen"
pairs="${PAIRS:-6000}"
tck="$(getconf CLK_TCK)"
# The server's processes: the private cluster's postmaster and its children (backends and
# background processes; not the machine's own PostgreSQL), or mariadbd / mysqld.
server_pids() {
  case "$1" in
    postgres) local pm; pm="$(head -1 "$PG_DIR/data/postmaster.pid")"; echo "$pm"; pgrep -P "$pm" || true ;;
    mariadb) pgrep -x 'mariadbd|mysqld' ;;
  esac
}
# Seconds of CPU used so far by those processes: utime + stime (all of a process's threads)
# + cutime + cstime (its children that have exited: PostgreSQL's backends, one process per
# connection, end up in the postmaster's when they exit).
server_cpu() {
  local t=0 pid line
  for pid in $(server_pids "$1"); do
    read -r line < "/proc/$pid/stat" 2>/dev/null || continue
    set -- "$1" ${line##*) }
    t=$(( t + ${13} + ${14} + ${15} + ${16} ))
  done
  python3 -c "print($t / $tck)"
}
run() { # db mode clients count -> "loadgen_cpu server_cpu switches"; fails if --check does
  local s0 s1 t
  s0="$(server_cpu "$1")"
  t="$( { /usr/bin/time -f '%U %S %w %c' "$lg" --mode "$2" --db "$1" --clients "$3" --count "$4" \
          --check > /dev/null; } 2>&1 | tail -1)" || { echo "cpu-per-pair: $*: loadgen failed" >&2; return 1; }
  s1="$(server_cpu "$1")"
  python3 -c "u, s, w, c = map(float, '$t'.split()); print(u + s, $s1 - $s0, w + c)"
}
printf '%-9s %-8s %-16s %12s %12s %12s %10s\n' db clients mode "server ms" "loadgen ms" "total ms" switches
for db in ${DBS:-postgres mariadb sqlite}; do
  for c in ${CLIENTS:-8}; do
    for mode in acquire-release lease-channel direct raw-sql; do
      small="$(run "$db" "$mode" "$c" 16)" || exit 1
      big="$(run "$db" "$mode" "$c" "$pairs")" || exit 1
      read -r l0 s0 w0 <<<"$small"
      read -r l1 s1 w1 <<<"$big"
      python3 -c "
n = $pairs - 16
s, l, w = ($s1 - $s0) * 1000 / n, ($l1 - $l0) * 1000 / n, ($w1 - $w0) / n
print(f'{\"$db\":<9} {$c:<8} {\"$mode\":<16} {s:12.3f} {l:12.3f} {s + l:12.3f} {w:10.1f}')"
    done
  done
done
