#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, and integration tests against a real
# PostgreSQL (TEST_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres), a real
# MariaDB (TEST_MYSQL_URL, default mysql://root@127.0.0.1:3306/mysql), real SQLite files, a real NATS server, a Node gRPC-Web client (clients/web) and a real browser
# (Debian's chromium, for the console). Each test creates and drops its own database. Ends with
# one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
bash scripts/ensure-mariadb.sh
bash scripts/ensure-nats.sh
bash scripts/ensure-web-client.sh
bash scripts/ensure-browser.sh
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export TEST_MYSQL_URL="${TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/mysql}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
