# private-fine-tuning-base: the layers every component image shares (Python, torch, the package),
# built once and used as FROM by each components/<stage>/Dockerfile, so the seven images do not each
# install torch. CPU torch by default; the gpu profile passes a CUDA wheel index.
#
# Build arguments, so a company builds it against its own mirror, with no access to public ones:
#   PYTHON_IMAGE     the Python 3.11 base (default: Docker Hub's, pinned by digest)
#   PIP_INDEX_URL    the package index or mirror (PEP 503 "simple" API)
#   TORCH_INDEX_URL  where torch comes from (default: PyTorch's CPU wheels)
# and an optional file `ca-bundle.pem` at the root of the build context: the CA bundle pip trusts,
# for a mirror behind a company CA (scripts/build-images.sh --ca-bundle puts it there).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b
FROM ${PYTHON_IMAGE}

ARG PIP_INDEX_URL=https://pypi.org/simple
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_HOME=/scratch/hf TMPDIR=/scratch

# The user every pod runs as (runAsUser 10001 in the manifests); it owns nothing in the image.
RUN groupadd --gid 10001 app && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin app

# `ca-bundle.pe[m]` matches nothing unless a CA bundle was supplied; constraints.txt always matches.
COPY constraints.txt ca-bundle.pe[m] /build/
RUN if [ -f /build/ca-bundle.pem ]; then \
      install -m 0644 /build/ca-bundle.pem /etc/pip-ca-bundle.pem && \
      printf '[global]\ncert = /etc/pip-ca-bundle.pem\n' > /etc/pip.conf; fi
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
# Dependencies before code, so a code change rebuilds only the last layer.
COPY pyproject.toml /build/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/build/pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /build/requirements.txt && \
    pip install -c /build/constraints.txt -r /build/requirements.txt
COPY src /build/src
RUN pip install --no-deps /build && rm -rf /build /root/.cache
WORKDIR /app
