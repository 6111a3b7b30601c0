#!/usr/bin/env bash
# Builds the shared base image and the nine component images of the cpu overlay with a plain
# `docker build`, the same images Skaffold builds, for users without Skaffold and for
# `make test-containers`; --with-vllm also builds the gpu overlay's vLLM sidecar image (multi-GB).
#
#   scripts/build-images.sh [options]
#     --python-image IMAGE     Python 3.11 base (default: the digest pinned in Dockerfile)
#     --index-url URL          package index or mirror (PEP 503), for every pip install
#     --torch-index-url URL    where torch comes from (default: PyTorch's CPU wheels, or --index-url if given)
#     --ca-bundle FILE         CA bundle pip should trust (a mirror behind a company CA)
#     --network MODE           network of the build containers (e.g. host, to reach a mirror on 127.0.0.1)
#     --tag TAG                image tag (default: latest)
#     --with-vllm              also build model-inference-vllm-server (gpu overlay; vLLM and CUDA torch)
#
# Works with the legacy builder (DOCKER_BUILDKIT=0) as well as with BuildKit.
set -euo pipefail
cd "$(dirname "$0")/.."
args=() tag=latest ca="" with_vllm=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python-image) args+=(--build-arg "PYTHON_IMAGE=$2"); shift 2 ;;
    --index-url) args+=(--build-arg "PIP_INDEX_URL=$2"); index=$2; shift 2 ;;
    --torch-index-url) torch_index=$2; shift 2 ;;
    --ca-bundle) ca=$2; shift 2 ;;
    --network) args+=(--network "$2"); shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --with-vllm) with_vllm=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
torch_index=${torch_index:-${index:-}}
[ -n "$torch_index" ] && args+=(--build-arg "TORCH_INDEX_URL=$torch_index")
if [ -n "$ca" ]; then
  [ -f "$ca" ] || { echo "--ca-bundle $ca: no such file" >&2; exit 2; }
  cp "$ca" ca-bundle.pem
  trap 'rm -f ca-bundle.pem' EXIT
fi

build() {  # build IMAGE DOCKERFILE [extra args]
  local image=$1 dockerfile=$2 start=$SECONDS
  shift 2
  echo "== building $image:$tag from $dockerfile"
  if ! docker build -q -t "$image:$tag" -f "$dockerfile" "$@" . >"/tmp/build-$image.log" 2>&1; then
    tail -30 "/tmp/build-$image.log" >&2
    echo "building $image failed; full log: /tmp/build-$image.log" >&2
    exit 1
  fi
  echo "   $image:$tag built in $((SECONDS - start)) s"
}

build private-fine-tuning-base Dockerfile "${args[@]}"
for dockerfile in components/*/Dockerfile; do
  component=$(basename "$(dirname "$dockerfile")")
  if [ "$component" = model-inference-vllm-server ]; then
    [ -n "$with_vllm" ] || continue
    build "$component" "$dockerfile" "${args[@]}"  # on PYTHON_IMAGE, not the shared base: vLLM pins its own torch
    continue
  fi
  build "$component" "$dockerfile" --build-arg "BASE_IMAGE=private-fine-tuning-base:$tag" "${args[@]}"
done
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^(private-fine-tuning-base|$(ls components | paste -sd'|')):$tag "
