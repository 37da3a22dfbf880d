# syntax=docker/dockerfile:1
# spire-kms-reconciler container image.
#
#   docker build -t spire-kms-reconciler .
#   docker run -d --name spire-kms-reconciler \
#     -v /etc/spire-kms-reconciler:/etc/spire-kms-reconciler:ro \
#     -v /opt/spire/data/server/keyid:/run/spire/keyid:ro \
#     -e SPIRE_KMS_RECONCILER_KEY_IDENTIFIER_FILE=/run/spire/keyid \
#     -e AWS_DEFAULT_REGION=us-east-1 -p 127.0.0.1:9464:9464 spire-kms-reconciler
#
# Settings: /etc/spire-kms-reconciler/config.toml if mounted (optional: SPIRE_KMS_RECONCILER_*
# variables alone work too). AWS credentials come from the standard chain (task or instance role,
# web identity, AWS_* variables). See docs/install.md.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: wheels for the project and its dependencies, installed into a virtual environment ---
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon/ daemon/
# Every dependency ships manylinux wheels for CPython 3.11: no compiler is needed, here or below.
RUN python -m pip wheel --wheel-dir /wheels . \
 && python -m venv /opt/spire-kms-reconciler/venv \
 && /opt/spire-kms-reconciler/venv/bin/pip install --no-index --find-links /wheels /wheels/spire_kms_reconciler-*.whl \
 && /opt/spire-kms-reconciler/venv/bin/spire-kms-reconciler --version

# --- final: the interpreter, the virtual environment, nothing else ---------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="spire-kms-reconciler" \
      org.opencontainers.image.description="Keeps SPIRE's AWS KMS keys alive and reclaims the dead ones." \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/spire-kms-reconciler/venv/bin:$PATH \
    SPIRE_KMS_RECONCILER_METRICS__LISTEN_ADDRESS=0.0.0.0:9464
RUN groupadd --system --gid 10001 spire-kms-reconciler \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin spire-kms-reconciler
COPY --from=builder /opt/spire-kms-reconciler/venv /opt/spire-kms-reconciler/venv
USER 10001:10001
EXPOSE 9464
# /healthz answers 200 while the last refresh succeeded within two intervals, 503 otherwise
# (urlopen raises on 503). The slim image has no curl; the standard library is enough.
HEALTHCHECK --interval=30s --timeout=5s --start-period=2m --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/spire-kms-reconciler/venv/bin/spire-kms-reconciler", "run"]
