# One Dockerfile, four images: docker build --target embedder|index|gateway|web .
# (`make images` builds all four.) Dependencies are installed before the code
# is copied, so code changes rebuild only the last small layers. Every image
# runs as a non-root user and checks its own gRPC health.
#
# BASE_IMAGE: any Debian-like image with Python 3.11 and its venv module
# (python3-venv), e.g. one made with debootstrap where Docker Hub cannot be
# reached (deploy/docker/debian-base.sh). Two optional build secrets configure
# pip: `pipconf` (a pip.conf) and `ca` (a CA bundle); see deploy/install_deps.py.
# Needs BuildKit (DOCKER_BUILDKIT=1, or docker buildx) for the secrets.

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS base
# MALLOC_*: freed multi-MB image buffers go back to the system at once
# instead of fragmenting per-thread arenas (measured with 6000x4000 photos:
# gateway peak RSS 1126 -> 653 MiB, embedder 2081 -> 1669 MiB; bench/RESULTS.md).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MALLOC_MMAP_THRESHOLD_=131072 \
    MALLOC_ARENA_MAX=2 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# A virtual environment: the same on python:*-slim and on Debian's own
# Python, whose system site-packages pip may not touch (PEP 668).
RUN python3 -m venv /opt/venv \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin app
WORKDIR /app
# Only what the dependency layers read: an edit of README.md (which the
# project's own install needs, below) rebuilds no dependency layer.
COPY pyproject.toml constraints.txt ./
COPY deploy/install_deps.py deploy/install_deps.py

# The embedder: the PyPI torch 2.14.1 wheel is the CUDA build (it carries the
# CUDA runtime; the host needs only the NVIDIA driver and container toolkit)
# and falls back to the CPU when no GPU is visible.
FROM base AS embedder
# The embedder keeps freed buffers up to 32 MiB (glibc's largest threshold)
# in its heap: a batch's activations reuse the pages of the one before instead
# of being mapped and zero-filled again (int8 ingest on 2 cores 16% faster,
# peak RSS 0.3-0.7 GiB higher; imgsearch/up.py's EMBEDDER_MMAP_THRESHOLD).
ENV MALLOC_MMAP_THRESHOLD_=33554432
# g++ and Python's headers: torch.compile (EMBEDDER_COMPILE=auto) builds its
# CPU kernels with them (python:*-slim has the headers; Debian's Python needs
# python3-dev).
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
    $(python3 -c 'import os, sysconfig; print("" if os.path.exists(sysconfig.get_paths()["include"] + "/Python.h") else "python3-dev")') \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=ca python deploy/install_deps.py embedder
COPY README.md README.md
COPY protos protos
COPY imagesearch imagesearch
COPY embedder_service embedder_service
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=ca python deploy/install_deps.py --project && mkdir -p /home/app/.cache && chown -R app /home/app
USER app
ENV EMBEDDER_HOST=0.0.0.0 EMBEDDER_PORT=50052 EMBEDDER_METRICS_PORT=9102 TORCH_HOME=/home/app/.cache/torch \
    TORCHINDUCTOR_CACHE_DIR=/home/app/.cache/inductor
EXPOSE 50052 9102
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-m", "imagesearch.healthcheck", "50052", "imagesearch.v1.EmbedderService"]
CMD ["python", "-m", "embedder_service"]

FROM base AS index
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=ca python deploy/install_deps.py index
COPY README.md README.md
COPY protos protos
COPY imagesearch imagesearch
COPY index_service index_service
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=ca python deploy/install_deps.py --project && mkdir -p /data && chown app /data
USER app
ENV INDEX_HOST=0.0.0.0 INDEX_PORT=50053 INDEX_METRICS_PORT=9103 \
    INDEX_MILVUS_URI=/data/milvus.db INDEX_DATABASE_URL=sqlite:////data/meta.db
EXPOSE 50053 9103
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "imagesearch.healthcheck", "50053", "imagesearch.v1.IndexService"]
CMD ["python", "-m", "index_service"]

# The gateway needs none of torch, pymilvus or SQLAlchemy.
FROM base AS gateway
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=ca python deploy/install_deps.py
COPY README.md README.md
COPY protos protos
COPY imagesearch imagesearch
COPY gateway gateway
COPY imgsearch imgsearch
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=ca python deploy/install_deps.py --project && mkdir -p /data/images && chown -R app /data
USER app
ENV GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=50051 GATEWAY_METRICS_PORT=9101 GATEWAY_DATA_DIR=/data \
    GATEWAY_ALLOWED_ROOTS=/data/images
EXPOSE 50051 9101
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "imagesearch.healthcheck", "50051", "imagesearch.v1.GatewayService"]
CMD ["python", "-m", "gateway"]

# The HTTP face: FastAPI + uvicorn, a client of the gateway; no torch,
# pymilvus or SQLAlchemy either.
FROM base AS web
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=ca python deploy/install_deps.py web
COPY README.md README.md
COPY protos protos
COPY imagesearch imagesearch
COPY web_service web_service
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=ca python deploy/install_deps.py --project
USER app
ENV WEB_HOST=0.0.0.0 WEB_PORT=8080 WEB_GATEWAY_ADDR=gateway:50051
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "web_service.healthcheck"]
CMD ["python", "-m", "web_service"]
