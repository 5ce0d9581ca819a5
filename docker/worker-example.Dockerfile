# syntax=docker/dockerfile:1
# An example worker on the lowwater SDK (docker/example_worker.py): it logs each record and
# acknowledges it. Start your own worker image from this one.
#
#   docker build -f docker/worker-example.Dockerfile -t lowwater/worker-example:0.1.0 .
#
# Build from the repository root. Runs as UID 10001 (the chart's pod user, which the Unix socket
# of the sidecar needs) on a read-only root filesystem.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: wheels for the SDK and its dependencies ----------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY constraints.txt ./
COPY clients/python ./clients/python
RUN pip wheel --wheel-dir /wheels --constraint constraints.txt ./clients/python

# --- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    PATH=/opt/worker/bin:$PATH \
    LOWWATER_TARGET=unix:/var/run/lowwater/lowwater.sock
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/worker \
    && /opt/worker/bin/pip install --no-index --find-links /wheels lowwater==0.1.0 \
    && /opt/worker/bin/pip uninstall --yes pip \
    && groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin worker
COPY --chmod=0444 docker/example_worker.py /app/example_worker.py
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["python", "/app/example_worker.py"]
