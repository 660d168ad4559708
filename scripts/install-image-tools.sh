#!/usr/bin/env bash
# Install what `make images` / `make images-test` need when no Docker daemon is usable:
# buildah and podman (daemonless builders), runc (crun refuses hybrid cgroups), mmdebstrap (the
# local Debian base) and skopeo (OCI archives, push). Debian packages, apt-get; CI runs as root.
set -euo pipefail
need=()
for tool in buildah podman runc mmdebstrap skopeo; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
# podman needs a CNI/netavark backend and fuse-overlayfs/slirp only for rootless use; as root the
# overlay driver and --network host are enough.
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing ${need[*]} and not root: install Debian's ${need[*]} packages" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
for tool in buildah podman runc mmdebstrap skopeo; do
  printf '%-10s %s\n' "$tool" "$("$tool" --version 2>/dev/null | head -n 1)"
done
