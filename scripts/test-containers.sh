#!/usr/bin/env bash
# `make test-containers`: build the ten images and run the whole pipeline from them with
# `pft run --engine docker` on a 4-CPU / 8 GiB node (tests/pipeline/test_containers.py).
#
# Uses the Docker engine that answers `docker info`; otherwise, as root, installs Debian's docker.io
# if needed, starts dockerd itself and stops it at the end. The images are built against a package
# mirror on 127.0.0.1 filled by this machine's pip (scripts/local-mirror.sh), so the builds need no
# access to, or certificates for, the public index; the Python base is PFT_PYTHON_IMAGE if set, else
# the Dockerfile's pinned image if it can be pulled, else one made from Debian's packages
# (scripts/debian-python-image.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
work=$(mktemp -d /tmp/pft-containers.XXXXXX)
started_dockerd="" mirror_pid=""

cleanup() {
  [ -n "$mirror_pid" ] && kill "$mirror_pid" 2>/dev/null || true
  if [ -n "$started_dockerd" ]; then
    echo "stopping the dockerd this script started"
    kill "$started_dockerd" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 1; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "no Docker engine answers, and only root may start one here" >&2
    exit 3
  fi
  if ! command -v dockerd >/dev/null; then
    echo "installing Debian's docker.io"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >"$work/apt.log" 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >"$work/apt.log" 2>&1; } \
      || { tail -5 "$work/apt.log"; exit 3; }
  fi
  echo "starting dockerd"
  dockerd --storage-driver overlay2 >"$work/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -20 "$work/dockerd.log"; exit 3; }
fi

pinned=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
python_image=${PFT_PYTHON_IMAGE:-}
if [ -z "$python_image" ]; then
  if docker image inspect "$pinned" >/dev/null 2>&1 || timeout 120 docker pull -q "$pinned" >/dev/null 2>&1; then
    python_image=$pinned
  else
    echo "$pinned cannot be pulled here: making a Python base from Debian's packages"
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    python_image=private-fine-tuning-python:3.11-bookworm
    scripts/debian-python-image.sh "$python_image"
  fi
fi

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "filling a package mirror on http://127.0.0.1:$port/simple"
mirror_pid=$(PYTHON="$python" scripts/local-mirror.sh "$work/mirror" "$port")
start=$SECONDS
DOCKER_BUILDKIT=0 scripts/build-images.sh --python-image "$python_image" \
  --index-url "http://127.0.0.1:$port/simple" --network host
echo "images built in $((SECONDS - start)) s"
kill "$mirror_pid" 2>/dev/null || true
mirror_pid=""

PFT_CONTAINER_TESTS=1 "$python" -m pytest -p no:cacheprovider -m containers tests/pipeline/test_containers.py "$@"
