#!/usr/bin/env bash
# Download CS231n's imagenet_val_25.npz (25 ImageNet validation images, their labels and the class
# names; ~3.9 MB) into core/datasets/, as the original repository's tree has it. Skips the download
# when the file is there. Works from any directory. IMAGENET_VAL_URL and IMAGENET_VAL_FILE override
# the source and the destination. The file is downloaded beside the destination and renamed into
# place once whole, so an interrupted download leaves nothing.
#   python inference.py --model lstm --imagenet_val     # caption them (core/data/imagenet.py)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/fetch.sh"
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
if ! fetch "$url" "$part" -sS; then
  echo "Nothing was written to $dest." >&2
  exit 1
fi
if ! python3 -c "import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist(); sys.exit(not {'X.npy', 'y.npy', 'label_map.npy'} <= set(names))" "$part" 2>/dev/null; then
  echo "error: $url is not CS231n's imagenet_val_25.npz (an .npz of X, y and label_map); nothing was written to $dest." >&2
  exit 1
fi
mv -fT "$part" "$dest"
echo "ImageNet validation images ready in $dest"
