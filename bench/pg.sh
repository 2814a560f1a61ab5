# Sourced by the bench scripts: a private PostgreSQL cluster configured as production should be
# (autovacuum on with a 10 s naptime, synchronous commit on), in a temporary folder on its own
# port, so benchmarks never depend on or change the settings of the machine's shared server
# (which here runs with autovacuum off: no dead-row cleanup and no planner statistics).
#   pg_start [extra -c settings...]   sets PG_URL (its postgres database) and PG_DIR
#   pg_stop
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

pg_start() {
  [ -x "$PG_BIN/initdb" ] || { echo "bench: PostgreSQL server binaries (initdb) not found under /usr/lib/postgresql" >&2; return 1; }
  PG_DIR="$(mktemp -d)"
  chown postgres:postgres "$PG_DIR" 2>/dev/null || true
  local port opts=""
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  for o in "autovacuum=on" "autovacuum_naptime=10s" "max_connections=300" "shared_buffers=256MB" "$@"; do
    opts="$opts -c $o"
  done
  as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres --no-sync >/dev/null
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w start \
    -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1$opts" >/dev/null
  PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
  trap pg_stop EXIT
}

pg_stop() {
  if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
  PG_DIR=""
}
