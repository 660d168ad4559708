# syntax=docker/dockerfile:1.7
# modelyard serve, accelerate engine: transformers + accelerate (device_map, max_memory, offload),
# peft adapters, bitsandbytes 8-bit/nf4 at load time. torch comes from PyPI (CUDA build).
# Build from the repository root:
#   docker build -f images/serve-accelerate.Dockerfile -t ghcr.io/modelyard/serve-accelerate:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY modelyard modelyard
RUN python -m venv /opt/modelyard \
 && /opt/modelyard/bin/pip install --no-cache-dir -c requirements/constraints.txt ".[runtime]" bitsandbytes \
 && /opt/modelyard/bin/pip uninstall -y pip

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/modelyard modelyard
COPY --from=build /opt/modelyard /opt/modelyard
ENV PATH=/opt/modelyard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["modelyard", "serve"]
CMD ["--engine", "accelerate", "--help"]
