#!/usr/bin/env bash
# Sets up the gRPC-Web test client (clients/web): its npm packages (exact versions from
# package-lock.json) and the JavaScript generated from proto/ by buf. Node 20 and npm must be
# installed; fails loudly if they are not.
set -euo pipefail
cd "$(dirname "$0")/../clients/web"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "ensure-web-client: node and npm are required (Node 20 or later)" >&2
  exit 1
fi
# Reinstalled only when the lock file is newer than what is installed.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent generate
