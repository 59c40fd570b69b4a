#!/usr/bin/env bash
# Containers without a Docker engine: Podman builds the step image from docker/Dockerfile
# and serves a Docker-compatible API that Airflow's DockerOperator talks to.
#
#   scripts/podman.sh setup     apt-get install podman runc mmdebstrap (once; needs root)
#   scripts/podman.sh base      build the base image offline from Debian bookworm (mmdebstrap)
#   scripts/podman.sh build     build the step image (BASE_IMAGE defaults to that base)
#   scripts/podman.sh serve     start the API on unix://$MLOPS_PODMAN_DIR/podman.sock
#   scripts/podman.sh stop      stop the API service
#   scripts/podman.sh all       setup + base (if missing) + build + serve
#   scripts/podman.sh env       print the variables to point the DAGs at it
#
# Podman needs a containers.conf here (crun refuses hybrid cgroups; root cannot raise
# ulimits): written to $MLOPS_PODMAN_DIR/containers.conf and exported as CONTAINERS_CONF.
# HTTPS from containers is intercepted on this machine: the host's CA bundle is mounted
# read-only into builds (never baked into the image).
set -euo pipefail
cd "$(dirname "$0")/.."
state=${MLOPS_PODMAN_DIR:-/tmp/mlops-podman}
base=${MLOPS_BASE_IMAGE:-localhost/mlops-base:bookworm}
image=${MLOPS_IMAGE:-localhost/mlops-flights:latest}
ca=/etc/ssl/certs/ca-certificates.crt
mkdir -p "$state"
export CONTAINERS_CONF=$state/containers.conf
cat > "$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF

ca_mount=()
[ -f "$ca" ] && ca_mount=(-v "$ca:$ca:ro")

setup() {
  if command -v podman >/dev/null && command -v mmdebstrap >/dev/null && command -v runc >/dev/null; then
    return
  fi
  export DEBIAN_FRONTEND=noninteractive
  # one apt at a time on this machine (scripts/browser.sh may be installing too: parallel tests)
  exec 8>/tmp/mlops-apt.lock && flock -w 1200 8
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends podman runc mmdebstrap uidmap slirp4netns \
    fuse-overlayfs containernetworking-plugins > "$state/apt.log" 2>&1 || { tail -20 "$state/apt.log"; exit 1; }
  exec 8>&-
}

build_base() {
  if podman image exists "$base"; then echo "base image $base: present"; return; fi
  echo "building $base from Debian bookworm (mmdebstrap, ~3 min)"
  mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,git,passwd bookworm - \
    | podman import --quiet - "$base" > /dev/null
}

build_image() {
  local from=${BASE_IMAGE:-$base}
  local start=$SECONDS
  podman build --quiet --format docker --network host "${ca_mount[@]}" --build-arg "BASE_IMAGE=$from" \
    -f docker/Dockerfile -t "$image" . > "$state/build.log"
  echo "step image $image built from $from in $((SECONDS - start)) s"
}

serve() {
  if [ -S "$state/podman.sock" ] && [ -f "$state/service.pid" ] && kill -0 "$(cat "$state/service.pid")" 2>/dev/null; then
    # the service outlives the checkout that started it: one whose working directory was
    # deleted (a removed clone) starts no container ("conmon: Failed to get working
    # directory"), so it is replaced
    case "$(readlink "/proc/$(cat "$state/service.pid")/cwd")" in
      *" (deleted)") ;;
      *) return ;;
    esac
    echo "podman service $(cat "$state/service.pid") lost its working directory: restarting it"
    stop
  fi
  rm -f "$state/podman.sock"
  # from / : the service must not depend on the folder it was started from
  (cd / && exec nohup podman system service --time=0 "unix://$state/podman.sock" > "$state/service.log" 2>&1) &
  echo $! > "$state/service.pid"
  for _ in $(seq 1 50); do [ -S "$state/podman.sock" ] && break; sleep 0.2; done
  [ -S "$state/podman.sock" ] || { cat "$state/service.log"; exit 1; }
  echo "Docker-compatible API on unix://$state/podman.sock"
}

stop() {
  if [ -f "$state/service.pid" ]; then
    local pid
    pid=$(cat "$state/service.pid")
    kill "$pid" 2>/dev/null || true
    # gone before a new service takes the socket (the old one removes it as it exits)
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    rm -f "$state/service.pid"
  fi
}

env_lines() {
  cat <<ENV
export CONTAINERS_CONF=$CONTAINERS_CONF
export MLOPS_EXECUTION_MODE=docker
export MLOPS_IMAGE=$image
export MLOPS_DOCKER_URL=unix://$state/podman.sock
export MLOPS_DOCKER_NETWORK=host
ENV
}

case "${1:-all}" in
  setup) setup ;;
  base) setup; build_base ;;
  build) build_image ;;
  serve) serve ;;
  stop) stop ;;
  env) env_lines ;;
  all) setup; build_base; build_image; serve ;;
  *) echo "usage: $0 setup|base|build|serve|stop|env|all" >&2; exit 2 ;;
esac
