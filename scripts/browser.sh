#!/usr/bin/env bash
# Debian's Chromium for the browser tests (Playwright drives it with executable_path; no
# browser download from a CDN). Idempotent; needs root (apt-get) the first time.
#
#   scripts/browser.sh          install /usr/bin/chromium if missing, print its version
set -euo pipefail
if ! command -v chromium >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp)
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; } > "$log" 2>&1 \
    || { tail -20 "$log"; exit 1; }
fi
chromium --version
