#!/usr/bin/env bash
# Makes sure NATS is ready for the tests: the `nats-server` binary (the NATS fault test runs its
# own server with JetStream on a private port; installed from Debian when missing), and the
# machine's shared server at NATS_URL (default 127.0.0.1:4222) answering, started from the
# binary with JetStream if nothing listens there. Fails loudly (exit 1) if either is missing.
set -euo pipefail

if ! command -v nats-server >/dev/null 2>&1; then
  echo "ensure-nats: installing nats-server" >&2
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
  fi
fi
if ! command -v nats-server >/dev/null 2>&1; then
  echo "ensure-nats: nats-server is not installed and could not be (apt-get install nats-server)" >&2
  exit 1
fi

url="${NATS_URL:-nats://127.0.0.1:4222}"
hostport="${url#nats://}"
host="${hostport%%:*}"
port="${hostport##*:}"
ready() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

if ! ready; then
  echo "ensure-nats: nothing answers at $host:$port; starting nats-server -js there" >&2
  mkdir -p /tmp/cco-nats
  nohup nats-server -js -a "$host" -p "$port" -sd /tmp/cco-nats >/tmp/cco-nats/server.log 2>&1 &
  for _ in $(seq 1 50); do
    ready && break
    sleep 0.2
  done
fi
if ! ready; then
  echo "ensure-nats: NATS is unreachable at $host:$port" >&2
  exit 1
fi
