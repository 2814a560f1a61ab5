#!/usr/bin/env bash
# Makes sure the test PostgreSQL answers: starts the machine's cluster if it is installed but
# stopped, then waits for it. Fails loudly (exit 1) if it is still unreachable: the test suite
# needs it and must never skip.
set -euo pipefail

url="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
host=127.0.0.1
port=5432
if [[ "$url" =~ @([^:/]+):([0-9]+) ]]; then
  host="${BASH_REMATCH[1]}"
  port="${BASH_REMATCH[2]}"
fi

ready() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$host" -p "$port"
  else
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
  fi
}

if ready; then
  exit 0
fi

if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  for version in $(ls /etc/postgresql); do
    echo "ensure-postgres: starting PostgreSQL cluster $version/main" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
fi

for _ in $(seq 1 60); do
  if ready; then
    exit 0
  fi
  sleep 0.5
done

echo "ensure-postgres: PostgreSQL is unreachable at $host:$port (TEST_DATABASE_URL=$url)." >&2
echo "ensure-postgres: the tests need it; install and start PostgreSQL, or point TEST_DATABASE_URL at one." >&2
exit 1
