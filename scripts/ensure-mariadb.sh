#!/usr/bin/env bash
# Makes sure the test MariaDB (or MySQL) answers: starts the machine's server if it is installed
# but stopped, then waits for it. Fails loudly (exit 1) if it is still unreachable: the test
# suite runs every conformance suite on it and must never skip.
set -euo pipefail

url="${TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/mysql}"
host=127.0.0.1
port=3306
if [[ "$url" =~ @([^:/]+):([0-9]+) ]]; then
  host="${BASH_REMATCH[1]}"
  port="${BASH_REMATCH[2]}"
fi

ready() {
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

if ready; then
  exit 0
fi

if [ -x /etc/init.d/mariadb ]; then
  echo "ensure-mariadb: starting MariaDB" >&2
  /etc/init.d/mariadb start >&2 || true
elif [ -x /etc/init.d/mysql ]; then
  echo "ensure-mariadb: starting MySQL" >&2
  /etc/init.d/mysql start >&2 || true
fi

for _ in $(seq 1 60); do
  if ready; then
    exit 0
  fi
  sleep 0.5
done

echo "ensure-mariadb: MariaDB is unreachable at $host:$port (TEST_MYSQL_URL=$url)." >&2
echo "ensure-mariadb: the tests need it; install and start MariaDB 10.6+ (or MySQL 8), or point TEST_MYSQL_URL at one." >&2
exit 1
