# syntax=docker/dockerfile:1.7
# modelyard serve, vLLM engine, on the official vLLM OpenAI image (CUDA, torch and vLLM as vLLM
# built them). modelyard goes in with --no-deps so vLLM's pins stay untouched; what the serve path
# needs beyond vLLM's own dependencies is listed explicitly (tests/unit/test_images.py checks it).
# The base image is vLLM's runtime image (it brings no compiler of ours; we add no build tools).
# Build from the repository root:  docker build -f images/serve-vllm.Dockerfile -t ghcr.io/modelyard/serve-vllm:0.1.0 .
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0

FROM ${VLLM_IMAGE}
COPY pyproject.toml README.md /tmp/modelyard/
COPY modelyard /tmp/modelyard/modelyard
# The vLLM image installs with uv into the system Python.
RUN uv pip install --system --no-cache --no-deps /tmp/modelyard nvidia-ml-py==13.615.71 \
 && rm -rf /tmp/modelyard \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/modelyard modelyard
ENV PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HOME=/home/modelyard
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["modelyard", "serve"]
CMD ["--engine", "vllm", "--help"]
