#!/usr/bin/env bash
# Download the CS231n COCO captioning data (~1 GB zip) into core/datasets/coco_captioning/.
# Skips the download when the folder is already there. Works from any directory.
# COCO_CAPTIONING_URL and COCO_CAPTIONING_DIR override the source and the destination.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
url="${COCO_CAPTIONING_URL:-http://cs231n.stanford.edu/coco_captioning.zip}"
dest="${COCO_CAPTIONING_DIR:-$here/coco_captioning}"
parent="$(dirname "$dest")"

if [ -f "$dest/coco2014_captions.h5" ]; then
  echo "COCO captioning data already in $dest; nothing to do."
  exit 0
fi

mkdir -p "$parent"
# remove what downloads killed part-way left (folders .coco_download.<pid>.* of processes gone)
for old in "$parent"/.coco_download.*; do
  [ -d "$old" ] || continue
  pid="${old##*/.coco_download.}"
  pid="${pid%%.*}"
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then continue; fi
  rm -rf "$old"
done
work="$(mktemp -d "$parent/.coco_download.$$.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "Downloading $url ..."
if command -v curl >/dev/null 2>&1; then
  fetch=(curl -fL --progress-bar --retry 2 --connect-timeout 20 -o "$work/coco_captioning.zip" "$url")
else
  fetch=(wget -q --tries=2 --timeout=20 -O "$work/coco_captioning.zip" "$url")
fi
if ! "${fetch[@]}"; then
  echo "error: could not download $url (no network access, or the server is down)." >&2
  echo "Nothing was written to $dest. Try again when online." >&2
  exit 1
fi

echo "Unpacking ..."
if command -v unzip >/dev/null 2>&1; then
  unzip_ok() { unzip -q "$1" -d "$2"; }
else
  unzip_ok() { python3 -m zipfile -e "$1" "$2"; }
fi
if ! unzip_ok "$work/coco_captioning.zip" "$work/unpacked"; then
  echo "error: $url is not a readable zip archive; nothing was written to $dest." >&2
  exit 1
fi

# The archive holds a coco_captioning/ folder; accept a flat archive too.
src="$work/unpacked/coco_captioning"
[ -d "$src" ] || src="$work/unpacked"
if [ ! -f "$src/coco2014_captions.h5" ]; then
  echo "error: the archive from $url has no coco2014_captions.h5; nothing was written to $dest." >&2
  exit 1
fi
rm -rf "$dest"
mv "$src" "$dest"
echo "COCO captioning data ready in $dest"
