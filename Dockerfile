# private-fine-tuning-base: the layers every component image shares (Python, torch, the package),
# built once by Skaffold and used as FROM by each components/<stage>/Dockerfile, so the seven images
# do not each download torch. CPU torch by default; the gpu profile passes a CUDA wheel index.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_HOME=/scratch/hf TMPDIR=/scratch

# The user every pod runs as (runAsUser 10001 in the manifests); it owns nothing in the image.
RUN groupadd --gid 10001 app && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin app

# Dependencies before code, so a code change rebuilds only the last layers.
COPY constraints.txt /build/constraints.txt
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md /build/
COPY src /build/src
RUN pip install -c /build/constraints.txt /build && rm -rf /build /root/.cache
WORKDIR /app
