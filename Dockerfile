# syntax=docker/dockerfile:1
# Residency's two images, built from the repository root:
#   docker build --target runtime  -t ghcr.io/residency-dev/residency-runtime:0.1.0 .
#   docker build --target operator -t ghcr.io/residency-dev/residency-operator:0.1.0 .
# `runtime` is the inference server (CUDA torch, soundfile, hibari); `operator` runs both `tts-operator run`
# and the `tts-operator agent` sidecar, without torch. Python packages are pinned by constraints.txt, torch
# by TORCH_VERSION (the `torch` extra of pyproject.toml); tests/charts/test_dockerfile.py keeps them equal.
# Releases should pin PYTHON_IMAGE by digest (python:3.11-slim-bookworm@sha256:…).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Builds the project's wheel. No compilers anywhere: every dependency ships a binary wheel.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY contract/ contract/
COPY runtime/ runtime/
COPY operator/ operator/
RUN pip wheel --no-deps --wheel-dir /wheels .

# The runtime's virtual environment. torch comes from PyTorch's CUDA 12.8 index: its `2.13.0+cu128` sorts above
# the plain release, and its wheels bundle the CUDA libraries, so the final image needs only the host's driver.
# Everything else comes from the default index, pinned by constraints.txt. onnxruntime-gpu (a CUDA 12 build, like
# torch cu128's libraries) replaces onnxruntime under the same import name, so hibari runs on the GPU.
# A CPU-only image (CI, laptops: ~1 GB instead of ~5 GB) takes TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu,
# or TORCH_FIND_LINKS=<folder mounted into the build> holding a `torch-2.13.0+cpu` wheel (scripts/build-images.sh),
# and keeps the CPU onnxruntime (ONNXRUNTIME=onnxruntime): no CUDA build of either to download.
FROM builder AS runtime-venv
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_FIND_LINKS=""
ARG ONNXRUNTIME=onnxruntime-gpu
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" ${TORCH_FIND_LINKS:+--find-links "${TORCH_FIND_LINKS}"} \
        -c constraints.txt "torch==${TORCH_VERSION}" \
    && /opt/venv/bin/pip install -c constraints.txt "$(ls /wheels/residency-*.whl)[runtime,torch]" \
    && if [ "${ONNXRUNTIME}" != onnxruntime ]; then /opt/venv/bin/pip uninstall --yes onnxruntime \
        && /opt/venv/bin/pip install -c constraints.txt "${ONNXRUNTIME}"; fi \
    && /opt/venv/bin/pip uninstall --yes pip

# The operator's virtual environment: kopf, kubernetes client, httpx; no torch, no audio.
FROM builder AS operator-venv
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c constraints.txt "$(ls /wheels/residency-*.whl)[operator]" \
    && /opt/venv/bin/pip uninstall --yes pip

# Inference server. Kubernetes runs it with a read-only root filesystem and emptyDirs at /tmp,
# /var/run/residency (admin token) and /dev/shm, hence HOME=/tmp.
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="residency-runtime" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/residency-dev/residency" \
      org.opencontainers.image.licenses="Apache-2.0"
# A named user, not just a UID: torch and getpass look the user up in /etc/passwd.
RUN groupadd --gid 10001 residency \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin residency
COPY --from=runtime-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["tts-runtime", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8000"]

# Operator and residency agent (`tts-operator run …` / `tts-operator agent`).
FROM ${PYTHON_IMAGE} AS operator
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="residency-operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/residency-dev/residency" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 residency \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin residency
COPY --from=operator-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["tts-operator"]
CMD ["run", "--standalone", "--all-namespaces"]
