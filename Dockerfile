# syntax=docker/dockerfile:1
# oauth-token-operator image: the locked dependencies from uv.lock and the operator in a
# virtualenv, on a slim Python base, running as an unprivileged user.
#
#   docker build -t oauth-token-operator:0.1.0 .
#
# Builder and runtime use the same base image on purpose: the virtualenv's python is a
# symlink to the base image's /usr/local/bin/python3.11.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG UV_VERSION=0.13.9
# Only for builders behind a TLS-inspecting proxy: a CA bundle for pip and uv, mounted at
# build time (see scripts/build-image). Unset by default; the final image never holds it.
ARG PIP_CERT
ARG SSL_CERT_FILE
RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /src
# Dependencies first, in their own layer, so that a code change does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
# Then the operator itself, as a regular (not editable) install: /src is not copied on.
COPY operator/ operator/
RUN uv sync --frozen --no-dev --no-editable

FROM ${PYTHON_IMAGE}
COPY --from=builder /opt/venv /opt/venv
# Bytecode was compiled at build time; the root filesystem is read-only at run time.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# 65532 is the conventional "nonroot" uid/gid; the Helm chart runs the pod as the same ids.
# A passwd entry for it: libraries that ask who they run as (getpass) fail without one.
RUN groupadd --gid 65532 nonroot \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin nonroot
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["oauth-token-operator"]
CMD ["run"]
