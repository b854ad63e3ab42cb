#!/usr/bin/env bash
# Fetch every dataset this project downloads. Usage: cd core/datasets && bash get_datasets.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$here/get_coco_captioning.sh"
