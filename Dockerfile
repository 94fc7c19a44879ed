# syntax=docker/dockerfile:1.7
#
# The VideoReward scoring service. Weights are never baked in: mount a serving checkpoint and set
# VIDEOREWARD_CHECKPOINT, or let the entrypoint build the demo checkpoint into the /cache volume at first start.
#
#   docker build -t videoreward-serve:cpu .                                  # CPU (the default)
#   docker build -t videoreward-serve:cuda --build-arg DEVICE=cuda .         # NVIDIA GPUs
#   docker build -t videoreward-serve:npu  --build-arg DEVICE=npu .          # Ascend NPUs (CANN + torch_npu)
#   docker build -t videoreward-serve:cpu-ray --build-arg EXTRAS=ray .       # + Ray, for bulk-scoring workers
#
#   docker run --rm -p 8000:8000 -v /srv/ckpt:/models/ckpt:ro -e VIDEOREWARD_CHECKPOINT=/models/ckpt videoreward-serve:cpu
#
# Build args:
#   DEVICE               cpu | cuda | npu: picks the base image and the torch build             (cpu)
#   CPU_BASE             base image for cpu                                                      (python:3.11-slim-bookworm)
#   CUDA_BASE            base image for cuda: an NVIDIA CUDA runtime image; python3 comes from apt
#                        (nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04)
#   NPU_BASE             base image for npu: a CANN image with Python
#                        (ascendai/cann:9.0.0-910b-ubuntu22.04-py3.11; pick the tag of your chip and CANN)
#   TORCH_VERSION        torch for cpu and cuda                                                  (2.14.1)
#   TORCHVISION_VERSION  torchvision for cpu and cuda                                            (0.29.1)
#   TORCH_INDEX_URL      where torch comes from; empty: the CPU wheel index for cpu and npu,
#                        PyPI (CUDA wheels, which bring their own CUDA libraries) for cuda
#   TORCH_NPU_VERSION    torch_npu for npu; torch is pinned to the same x.y.z                    (2.14.0)
#   EXTRAS               extras of this project to install as well, e.g. "ray"                  (none)
#   UID                  uid and gid of the non-root user the service runs as                   (10001)
#
# Runtime: the service listens on 0.0.0.0:8000; all settings are VIDEOREWARD_* environment variables
# (see `python -m service --help`); /cache is a volume (demo checkpoint, caches). The HEALTHCHECK probes
# /healthz (liveness); orchestrators should gate traffic on /readyz (compose.yaml and deploy/k8s do).

ARG DEVICE=cpu
ARG CPU_BASE=python:3.11-slim-bookworm
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG NPU_BASE=ascendai/cann:9.0.0-910b-ubuntu22.04-py3.11

# ---- one base stage per device; only the selected one is built ------------------------------------
FROM ${CPU_BASE} AS base-cpu

FROM ${CUDA_BASE} AS base-cuda
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM ${NPU_BASE} AS base-npu
# The CANN toolkit lives in /usr/local/Ascend; the entrypoint sources its set_env.sh. The NPU driver is
# mounted from the host at run time (Ascend Docker Runtime or the Ascend device plugin).

# ---- builder: the project and its dependencies in /opt/venv ---------------------------------------
FROM base-${DEVICE} AS builder
ARG DEVICE
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=""
ARG TORCH_NPU_VERSION=2.14.0
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}
# torch first, from the index that matches the device, so that installing the project keeps that build.
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    case "${DEVICE}" in \
      cpu)  index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"; \
            torch="torch==${TORCH_VERSION}"; vision="torchvision==${TORCHVISION_VERSION}" ;; \
      cuda) index="${TORCH_INDEX_URL:-https://pypi.org/simple}"; \
            torch="torch==${TORCH_VERSION}"; vision="torchvision==${TORCHVISION_VERSION}" ;; \
      npu)  index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"; \
            torch="torch==${TORCH_NPU_VERSION%%.post*}"; vision="torchvision<0.30" ;; \
      *)    echo "DEVICE must be cpu, cuda or npu, got '${DEVICE}'" >&2; exit 1 ;; \
    esac; \
    pip install --index-url "${index}" "${torch}" "${vision}"; \
    if [ "${DEVICE}" = npu ]; then pip install "torch-npu==${TORCH_NPU_VERSION}" pyyaml setuptools; fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model/ model/
COPY service/ service/
COPY training/ training/
# A regular (not editable) install: the runtime stage needs /opt/venv only, not the sources.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ".${EXTRAS:+[${EXTRAS}]}" \
    && python -c "import model, service, training, torch; print('torch', torch.__version__)"

# ---- runtime -------------------------------------------------------------------------------------
FROM base-${DEVICE} AS runtime
ARG DEVICE
ARG UID=10001
RUN groupadd --system --gid "${UID}" videoreward \
    && useradd --system --uid "${UID}" --gid videoreward --create-home --home-dir /home/videoreward \
       --shell /usr/sbin/nologin videoreward \
    && mkdir -p /cache /models \
    && chown "${UID}:${UID}" /cache
COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/videoreward-entrypoint
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/cache/huggingface \
    HF_HUB_OFFLINE=1 \
    VIDEOREWARD_HOST=0.0.0.0 \
    VIDEOREWARD_PORT=8000 \
    VIDEOREWARD_DEVICE=${DEVICE} \
    VIDEOREWARD_DEMO=1 \
    VIDEOREWARD_DEMO_DIR=/cache/demo
VOLUME ["/cache"]
WORKDIR /home/videoreward
USER ${UID}:${UID}
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VIDEOREWARD_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["videoreward-entrypoint"]
