# syntax=docker/dockerfile:1
# The lowwater sidecar: `lowwater serve`, configured by flags, LOWWATER_* variables or a TOML
# file (the Helm chart mounts one at /etc/lowwater/lowwater.toml).
#
#   docker build -f docker/sidecar.Dockerfile -t lowwater/sidecar:0.1.0 .
#
# Build from the repository root. The image runs as UID 10001 and writes nothing outside /tmp,
# so it runs with a read-only root filesystem (the chart mounts an emptyDir on /tmp).
# Pin the base by digest in your registry's build (PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: wheels for the sidecar, the SDK it depends on, and every dependency -------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY coordinator ./coordinator
COPY clients/python ./clients/python
RUN pip wheel --wheel-dir /wheels --constraint constraints.txt ./clients/python .

# --- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    PATH=/opt/lowwater/bin:$PATH
# Only wheels built above, no index: the image holds exactly what constraints.txt pins. The
# bytecode is compiled now, as root, because the root filesystem is read-only at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/lowwater \
    && /opt/lowwater/bin/pip install --no-index --find-links /wheels lowwater-sidecar==0.1.0 \
    && /opt/lowwater/bin/pip uninstall --yes pip \
    && groupadd --system --gid 10001 lowwater \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin lowwater
USER 10001:10001
WORKDIR /tmp
# 8081: health_listen (grpc.health.v1 for probes); 9464: metrics_listen. The worker API stays on
# a Unix socket or 127.0.0.1 inside the pod.
EXPOSE 8081 9464
ENTRYPOINT ["lowwater", "serve"]
