# syntax=docker/dockerfile:1
# Two images from one build; docker-compose.yml picks each with `target:`.
#   api    — the base installation, without TensorFlow or matplotlib: `retinaq api`,
#            `retinaq reconcile`, `retinaq db upgrade`, `retinaq admin`.
#   worker — `retinaq worker`, with a CUDA-enabled TensorFlow.
# The wheel is built once, in the builder stage, and installed into both.
#   docker build --target api -t retinaq-api .
#   docker build --target worker -t retinaq-worker .

FROM python:3.11.13-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A numeric user, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --gid 10001 retinaq \
    && useradd --create-home --uid 10001 --gid 10001 retinaq \
    && mkdir -p /data/images \
    && chown -R 10001:10001 /data


FROM base AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY common ./common
COPY cli ./cli
COPY lab ./lab
COPY migrations ./migrations
# common/modelling/bundled and cli/samples link to models/ and samples/; the wheel carries
# their files (and migrations/) into site-packages.
COPY models ./models
COPY samples ./samples
RUN pip wheel --no-deps --wheel-dir /wheels .


FROM base AS api
# The wheel is mounted for the install only, so no layer keeps a copy of it.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install /wheels/retinaq-*.whl
USER 10001:10001
WORKDIR /data
ENV RETINAQ_STORAGE_DIR=/data/images \
    RETINAQ_VAR_DIR=/data
EXPOSE 8000
# Over loopback, where the API answers whatever RETINAQ_PUBLIC_URL names (slim has no curl).
# The same image runs the reconciler and the one-shot migration, which serve no HTTP:
# docker-compose.yml turns this check off for them.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)", "http://127.0.0.1:8000/healthz"]
CMD ["retinaq", "api", "--host", "0.0.0.0", "--port", "8000"]


FROM base AS worker
# TensorFlow's and-cuda extra on the slim Python base, rather than an nvidia/cuda base
# image: the extra pulls the CUDA, cuDNN and NCCL wheels this TensorFlow release was built
# against, so the two cannot drift apart (an nvidia/cuda tag must be matched to each
# TensorFlow by hand, and TensorFlow would still load its own wheels beside it); the API
# and the worker share one base; only the driver comes from the host, mounted by the
# NVIDIA container toolkit. Installed before the wheel, with the worker extra's own version
# range (tests/test_images.py holds them equal), so this multi-gigabyte layer stays cached
# while the code changes.
RUN pip install 'tensorflow[and-cuda]>=2.16,<2.22'
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install "$(find /wheels -name 'retinaq-*.whl')[worker]"
USER 10001:10001
WORKDIR /data
# compute: CUDA itself; utility: nvidia-smi. RETINAQ_EXPECT_GPU makes a worker that finds
# no GPU say so at WARNING.
ENV RETINAQ_STORAGE_DIR=/data/images \
    RETINAQ_VAR_DIR=/data \
    RETINAQ_EXPECT_GPU=true \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# Not `celery inspect ping`, which a solo worker busy with a task cannot answer: the age of
# the file its heartbeat thread touches every 10 s (worker/heartbeat.py). The start period
# covers importing TensorFlow and warming the model up.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, sys, time; sys.exit(time.time() - os.stat(sys.argv[1]).st_mtime > 60)", "/tmp/retinaq-worker.heartbeat"]
CMD ["retinaq", "worker", "--serve", "all", "--heartbeat-file", "/tmp/retinaq-worker.heartbeat"]
