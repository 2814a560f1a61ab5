#!/usr/bin/env bash
# Runs the whole stack on the embedded default (SQLite files under ./data, created if missing):
# the Infinity simulator, allocator-svc and call-gateway-svc as three processes. Ctrl-C stops
# all three; running it again reuses the data.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bins -p allocator-svc -p call-gateway-svc -p infinity-sim
bin="${CARGO_TARGET_DIR:-target}/debug"
mkdir -p data

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
}
trap stop INT TERM EXIT

# The callback URL names a tenant and its secret: set it per demo (see README, "Placing a call").
"$bin/infinity-sim" --port "${SIM_PORT:-8090}" --extensions 8001,8002,8003,8004,8005 &
pids+=($!)
"$bin/allocator-svc" &
pids+=($!)
"$bin/call-gateway-svc" &
pids+=($!)

cat <<TXT

  allocator gRPC   127.0.0.1:${ALLOCATOR__GRPC__PORT:-50051}   (metrics http://127.0.0.1:${ALLOCATOR__METRICS__PORT:-9464}/metrics)
  gateway gRPC     127.0.0.1:${GATEWAY__GRPC__PORT:-50052}   (http://127.0.0.1:${GATEWAY__HTTP__PORT:-8080}/metrics)
  Infinity sim     http://127.0.0.1:${SIM_PORT:-8090}/openapi/V2.0.6/
  dev API keys     admin: dev-admin-key   caller: dev-caller-key   peer: dev-peer-key
  Ctrl-C stops everything.

TXT
wait -n "${pids[@]}" || true
