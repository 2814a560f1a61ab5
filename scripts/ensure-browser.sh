#!/usr/bin/env bash
# Makes sure the console's browser tests can run: Debian's chromium and chromedriver (packages
# chromium and chromium-driver), and a CJK font so the Chinese pages render as text in the
# screenshots. Installs what is missing with apt-get; fails loudly (exit 1) if it cannot.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# (grep -c reads everything: with pipefail, grep -q would fail the pipe by closing it early.)
[[ "$(fc-list 2>/dev/null | grep -ci wenquanyi)" -gt 0 ]] || missing+=(fonts-wqy-zenhei)
if ((${#missing[@]})); then
  echo "ensure-browser: installing ${missing[*]}" >&2
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
for bin in chromium chromedriver; do
  if ! command -v "$bin" >/dev/null 2>&1; then
    echo "ensure-browser: $bin is not installed and could not be (apt-get install chromium chromium-driver)" >&2
    exit 1
  fi
done
# Both must be the same build, or chromedriver refuses the session.
c="$(chromium --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)"
d="$(chromedriver --version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)"
if [[ "$c" != "$d" ]]; then
  echo "ensure-browser: chromium $c and chromedriver $d differ (apt-get install --only-upgrade chromium chromium-driver)" >&2
  exit 1
fi
echo "ensure-browser: chromium $c ready" >&2
