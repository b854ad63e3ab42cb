#!/usr/bin/env bash
# Download the CS231n COCO captioning data (~1 GB zip) into core/datasets/coco_captioning/.
# Skips the download when the data is already there. Works from any directory.
# COCO_CAPTIONING_URL and COCO_CAPTIONING_DIR override the source and the destination.
# Only the archive's own files are added (or replace files of the same name); whatever else the
# destination holds is left as it was. The archive is downloaded and unpacked beside the
# destination, then each file is moved in (a rename), coco2014_captions.h5 last: it marks the data
# as present, so a run interrupted before it is redone by the next run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/fetch.sh"
url="${COCO_CAPTIONING_URL:-http://cs231n.stanford.edu/coco_captioning.zip}"
dest="${COCO_CAPTIONING_DIR:-$here/coco_captioning}"
parent="$(dirname "$dest")"

if [ -f "$dest/coco2014_captions.h5" ]; then
  echo "COCO captioning data already in $dest; nothing to do."
  exit 0
fi
if [ -e "$dest" ] && [ ! -d "$dest" ]; then
  echo "error: $dest exists and is not a folder; nothing was written." >&2
  exit 1
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

echo "Downloading $url (about 1 GB) ..."
if ! fetch "$url" "$work/coco_captioning.zip" --progress-bar; then
  echo "Nothing was written to $dest." >&2
  exit 1
fi

echo "Unpacking ..."
if command -v unzip >/dev/null 2>&1; then
  unzip_ok() { unzip -q "$1" -d "$2"; }
else
  unzip_ok() { python3 -m zipfile -e "$1" "$2"; }
fi
status=0
unzip_ok "$work/coco_captioning.zip" "$work/unpacked" || status=$?
if [ "$status" -ne 0 ]; then
  if [ "$status" -eq 50 ]; then  # unzip's "the disk is (or was) full"
    echo "error: could not unpack the archive into $parent (is the disk full?); nothing was written to $dest." >&2
  else
    echo "error: $url is not a readable zip archive; nothing was written to $dest." >&2
  fi
  exit 1
fi

# The archive holds a coco_captioning/ folder; accept a flat archive too.
src="$work/unpacked/coco_captioning"
[ -d "$src" ] || src="$work/unpacked"
if [ ! -f "$src/coco2014_captions.h5" ]; then
  echo "error: the archive from $url has no coco2014_captions.h5; nothing was written to $dest." >&2
  exit 1
fi
mkdir -p "$dest"
# every file of the archive must land on a file (or nothing) of the destination: a folder of the
# user's where the archive has a file is refused before anything moves
replaced=0
while IFS= read -r -d '' f; do
  rel="${f#"$src"/}"
  if [ -e "$dest/$rel" ] && [ ! -f "$dest/$rel" ]; then
    echo "error: $dest/$rel is not a file, but the archive has a file of that name; nothing was changed in $dest." >&2
    exit 1
  fi
  [ -f "$dest/$rel" ] && replaced=$((replaced + 1))
done < <(find "$src" -type f -print0)
kept=$(( $(find "$dest" -mindepth 1 -maxdepth 1 | wc -l | tr -d ' ') - replaced ))
added=0
while IFS= read -r -d '' f; do
  rel="${f#"$src"/}"
  [ "$rel" = "coco2014_captions.h5" ] && continue
  mkdir -p "$dest/$(dirname "$rel")"
  mv -fT "$f" "$dest/$rel"
  added=$((added + 1))
done < <(find "$src" -type f -print0)
mv -fT "$src/coco2014_captions.h5" "$dest/coco2014_captions.h5"
added=$((added + 1))
if [ "$kept" -gt 0 ] || [ "$replaced" -gt 0 ]; then
  echo "COCO captioning data ready in $dest ($added files of the archive, $replaced of them replacing same-named files; the $kept other entries already there were kept)"
else
  echo "COCO captioning data ready in $dest"
fi
