#!/usr/bin/env bash
# Debian's Prometheus for the scaled-out profile (scripts/profile.sh scrapes `mlops serve`
# with it) and its tests. Idempotent; needs root (apt-get) the first time. The package's
# own service is not used: the profile starts its own process on loopback.
#
#   scripts/prometheus.sh       install /usr/bin/prometheus if missing, print its version
set -euo pipefail
if ! command -v prometheus >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  # one apt at a time on this machine (scripts/podman.sh or browser.sh may be installing too)
  exec 8>/tmp/mlops-apt.lock && flock -w 1200 8
  if ! command -v prometheus >/dev/null; then
    log=$(mktemp)
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; } > "$log" 2>&1 \
      || { tail -20 "$log"; exit 1; }
    # no init system here; where there is one, the packaged service stays off (the profile runs its own)
    { command -v systemctl >/dev/null && systemctl disable --now prometheus; } > /dev/null 2>&1 || true
  fi
fi
prometheus --version 2>&1 | head -1
