# otaship receiver.
#
#   docker build -t otaship .
#   docker run -p 8080:8080 -v otaship-data:/var/lib/otaship otaship
#
# Configuration comes only from OTASHIP_* variables (see "Running in production"
# in the README). tests/test_dockerfile.py runs this file's install and start
# commands in a fresh venv, so keep them plain shell driven by the ENV values.

# Both stages use one base image: the venv built in the first is copied as it is
# into the second, and its interpreter links to the base image's Python.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/otaship
WORKDIR /src
# Only what the package is built from: a change to the tests or the docs (other
# than README.md, which pyproject.toml names as the long description) does not
# invalidate the install layer.
COPY pyproject.toml README.md ./
COPY src/ src/
# Every dependency ships a manylinux wheel, so the slim image needs no compiler.
# pip compiles the .pyc files here: at run time the venv is read-only to the
# service user, who could not write them. The receiver is the package's
# `receiver` extra (the plain package is the action alone).
RUN python -m venv "$VIRTUAL_ENV" \
 && "$VIRTUAL_ENV/bin/pip" install '.[receiver]'

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/otaship/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OTASHIP_DATA_DIR=/var/lib/otaship \
    OTASHIP_PORT=8080 \
    OTASHIP_MQTT_URL=embedded://0.0.0.0:1883
# A fixed uid, so that a volume's ownership is the same on every host.
RUN groupadd --system --gid 10001 otaship \
 && useradd --system --uid 10001 --gid otaship --home-dir /var/lib/otaship \
      --no-create-home --shell /usr/sbin/nologin otaship \
 && mkdir -p /var/lib/otaship \
 && chown otaship:otaship /var/lib/otaship
COPY --from=builder /opt/otaship /opt/otaship
WORKDIR /var/lib/otaship
USER otaship
# The SQLite database, the local object store and the download cache of the
# embedded defaults; with PostgreSQL and gs:// only the cache and upload spool.
VOLUME ["/var/lib/otaship"]
# HTTP for the API and the devices; 1883 for the embedded broker, which listens on
# every interface here so that devices outside the container reach it. Production
# points OTASHIP_MQTT_URL at an external broker instead.
EXPOSE 8080 1883
# Slim images have no curl; urlopen raises (exit 1) on a refused connection or
# any status other than 2xx and 3xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('OTASHIP_PORT', '8080'), timeout=4)"]
CMD ["otaship", "serve", "--host", "0.0.0.0"]
