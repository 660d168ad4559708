# syntax=docker/dockerfile:1.7
# modelyard operator: `modelyard operator` (kopf), and `modelyard gateway` (the chart's gateway runs
# this image with its own command). No torch, no transformers.
# family: python
# Built by `make images` (scripts/images.sh), which passes BASE_IMAGE, the OCI label values and,
# when given, pip's CA bundle as the build secret `cacert` (never stored in a layer).
# By hand: podman build --secret id=cacert,src=ca.pem -f images/operator.Dockerfile -t ghcr.io/modelyard/operator:0.1.0 .
ARG BASE_IMAGE=python:3.11.13-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
# Dependencies first, resolved from pyproject.toml alone (a stub package): a code change reuses
# this layer. pip's cache is a build cache mount: reused when the index allows, never in a layer.
RUN --mount=type=secret,id=cacert --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
 && mkdir modelyard && touch modelyard/__init__.py \
 && python3 -m venv /opt/modelyard \
 && /opt/modelyard/bin/pip install --disable-pip-version-check -c requirements/constraints.txt '.[gateway]' \
 && rm -rf modelyard build ./*.egg-info
COPY modelyard modelyard
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
 && /opt/modelyard/bin/pip install --disable-pip-version-check --no-cache-dir --no-deps --force-reinstall . \
 && /opt/modelyard/bin/pip uninstall -q -y pip \
 && rm -rf build ./*.egg-info

FROM ${BASE_IMAGE}
# UID/GID 1000: the operator's pods run as 1000 (RUNTIME_UID); a passwd entry for libraries that ask.
RUN echo 'modelyard:x:1000:1000:modelyard:/tmp:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'modelyard:x:1000:' >> /etc/group
COPY --from=build /opt/modelyard /opt/modelyard
ENV PATH=/opt/modelyard/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 1000:1000
EXPOSE 8080 8081
ENTRYPOINT ["modelyard", "operator"]
# `make images` also passes these as --label (a cached LABEL step would keep an older revision).
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/modelyard/modelyard
LABEL org.opencontainers.image.title="modelyard-operator" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
