#!/usr/bin/env bash
# Debian's Chromium for the browser tests (Playwright drives it with executable_path; no
# browser download from a CDN). Idempotent; needs root (apt-get) the first time.
#
#   scripts/browser.sh          install /usr/bin/chromium if missing, print its version
set -euo pipefail
if ! command -v chromium >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  # one apt at a time on this machine (scripts/podman.sh may be installing too: parallel tests)
  exec 8>/tmp/mlops-apt.lock && flock -w 1200 8
  log=$(mktemp)
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; } > "$log" 2>&1 \
    || { tail -20 "$log"; exit 1; }
fi
chromium --version
