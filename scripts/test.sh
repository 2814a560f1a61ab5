#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, and integration tests against a real
# PostgreSQL (TEST_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres) and real
# SQLite files. Each test creates and drops its own database.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
exec cargo test --workspace --locked "$@"
