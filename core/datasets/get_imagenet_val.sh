#!/usr/bin/env bash
# Download CS231n's imagenet_val_25.npz (25 ImageNet validation images, their labels and the class
# names; ~3.9 MB) into core/datasets/, as the original repository's tree has it. Skips the download
# when the file is there. Works from any directory. IMAGENET_VAL_URL and IMAGENET_VAL_FILE override
# the source and the destination. The file is downloaded beside the destination and renamed into
# place once whole, so an interrupted download leaves nothing.
#   python inference.py --model lstm --imagenet_val     # caption them (core/data/imagenet.py)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
url="${IMAGENET_VAL_URL:-http://cs231n.stanford.edu/imagenet_val_25.npz}"
dest="${IMAGENET_VAL_FILE:-$here/imagenet_val_25.npz}"
parent="$(dirname "$dest")"

if [ -f "$dest" ]; then
  echo "$dest is already there; nothing to do."
  exit 0
fi
if [ -e "$dest" ]; then
  echo "error: $dest exists and is not a file; nothing was written." >&2
  exit 1
fi
mkdir -p "$parent"
part="$(mktemp "$parent/.imagenet_val.$$.XXXXXX")"
trap 'rm -f "$part"' EXIT

echo "Downloading $url ..."
if command -v curl >/dev/null 2>&1; then
  fetch=(curl -fsSL --retry 2 --connect-timeout 20 -o "$part" "$url")
else
  fetch=(wget -q --tries=2 --timeout=20 -O "$part" "$url")
fi
status=0
"${fetch[@]}" || status=$?
if [ "$status" -ne 0 ]; then
  if { [ "${fetch[0]}" = curl ] && [ "$status" -eq 23 ]; } || { [ "${fetch[0]}" = wget ] && [ "$status" -eq 3 ]; }; then
    echo "error: could not write the download into $parent (is the disk full?); nothing was written to $dest." >&2
  else
    echo "error: could not download $url (no network access, or the server is down); nothing was written to $dest." >&2
  fi
  exit 1
fi
if ! python3 -c "import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist(); sys.exit(not {'X.npy', 'y.npy', 'label_map.npy'} <= set(names))" "$part" 2>/dev/null; then
  echo "error: $url is not CS231n's imagenet_val_25.npz (an .npz of X, y and label_map); nothing was written to $dest." >&2
  exit 1
fi
mv -fT "$part" "$dest"
echo "ImageNet validation images ready in $dest"
