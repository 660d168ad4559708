# syntax=docker/dockerfile:1.7
# modelyard download: `modelyard download` (Hugging Face, S3, HTTP, PVC sources) into the cache volume.
# The core plus the source clients; no torch: downloading never loads weights.
# Build from the repository root:  docker build -f images/runtime.Dockerfile -t ghcr.io/modelyard/runtime:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY modelyard modelyard
RUN python -m venv /opt/modelyard \
 && /opt/modelyard/bin/pip install --no-cache-dir -c requirements/constraints.txt . \
      huggingface_hub hf-xet boto3 httpx requests \
 && /opt/modelyard/bin/pip uninstall -y pip

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/modelyard modelyard
COPY --from=build /opt/modelyard /opt/modelyard
ENV PATH=/opt/modelyard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_DISABLE_TELEMETRY=1
USER 10001:10001
ENTRYPOINT ["modelyard", "download"]
