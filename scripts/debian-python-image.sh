#!/usr/bin/env bash
# Makes a Python 3.11 base image from Debian's own packages, for machines that cannot pull
# python:3.11-slim (an air-gapped build host, or one whose only reachable registry is Debian's).
# The result stands in for PYTHON_IMAGE in the Dockerfiles: `python` and `pip` on PATH, pip allowed
# to install into the system interpreter, nothing else.
#
#   scripts/debian-python-image.sh [IMAGE_NAME]      (default: private-fine-tuning-python:3.11-bookworm)
#
# Needs root (debootstrap), debootstrap and docker. Set DEBIAN_MIRROR for a local Debian mirror.
set -euo pipefail
name=${1:-private-fine-tuning-python:3.11-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$name" >/dev/null 2>&1; then
  echo "$name: already there"
  exit 0
fi
root=$(mktemp -d /tmp/pft-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm into $root (about 90 s)"
debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates bookworm "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -20 "$root.log"; exit 1; }
rm -f "$root.log"
ln -sf python3 "$root/usr/bin/python"
ln -sf pip3 "$root/usr/bin/pip"
# PEP 668: Debian marks its interpreter as externally managed; an image's interpreter is ours to manage.
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$name" >/dev/null
echo "$name: $(docker run --rm --network none "$name" python --version)"
