# syntax=docker/dockerfile:1.7
# modelyard operator: `modelyard operator` (kopf). Core dependencies only: no torch, no transformers.
# Build from the repository root:  docker build -f images/operator.Dockerfile -t ghcr.io/modelyard/operator:0.1.0 .
# Base images are pinned by tag; release CI adds the digest (`docker buildx imagetools inspect`).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY modelyard modelyard
RUN python -m venv /opt/modelyard \
 && /opt/modelyard/bin/pip install --no-cache-dir -c requirements/constraints.txt . \
 && /opt/modelyard/bin/pip uninstall -y pip

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/modelyard modelyard
COPY --from=build /opt/modelyard /opt/modelyard
ENV PATH=/opt/modelyard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["modelyard", "operator"]
