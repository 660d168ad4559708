#!/usr/bin/env bash
# A Debian bookworm + Python 3.11 base image made locally with mmdebstrap, for `make images
# LOCAL_BASE=1` where no registry is reachable. Usage: local-base.sh IMAGE CACHE_DIR BUILDER
#   IMAGE      name to import it as (e.g. localhost/modelyard-base:bookworm)
#   CACHE_DIR  keeps the root filesystem tarball between runs (rebuilt when this script changes)
# The apt mirror is read at run time from this machine's apt sources (it is not written anywhere)
# and the image's own apt sources are emptied: the images install nothing from apt.
set -euo pipefail
image=$1 cache=$2 builder=${3:-podman}
mkdir -p "$cache"
stamp=$(sha256sum "$0" | cut -c1-12)
tarball="$cache/debian-python-bookworm-$stamp.tar"

if [ ! -s "$tarball" ]; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || { echo "no Debian mirror in /etc/apt/sources.list{,.d/debian.sources}" >&2; exit 1; }
  rm -rf "$cache"/debian-python-bookworm-*.tar "$cache/partial.tar"
  nice mmdebstrap --quiet --variant=apt --include=python3,python3-venv,ca-certificates \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/usr/share/doc/* "$1"/usr/share/man/*' \
    --customize-hook=': > "$1"/etc/apt/sources.list; rm -f "$1"/etc/apt/sources.list.d/*' \
    bookworm "$cache/partial.tar" "deb $mirror bookworm main"
  mv "$cache/partial.tar" "$tarball"
fi

# Re-import only when the tarball changed (its stamp is a label of the image).
cli=$builder; [ "$cli" = buildah ] && cli=podman  # buildah shares podman's storage; podman imports
have=$("$cli" image inspect --format '{{ index .Config.Labels "io.modelyard.base-stamp" }}' "$image" 2>/dev/null || true)
if [ "$have" != "$stamp" ]; then
  "$cli" import --change "LABEL io.modelyard.base-stamp=$stamp" --change 'CMD ["python3"]' "$tarball" "$image" >/dev/null
fi
echo "$image ($(du -h "$tarball" | cut -f1) tarball $tarball)"
