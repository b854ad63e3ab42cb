"""Reading a split's COCO-format captions file (or its share of a Karpathy split file): the
images with captions, in id order, and their captions, every fault a one-line error naming it.
"""
import json
from pathlib import Path

import numpy as np

from core.data.vocab import tokenize
from core.util.errors import UserError


def read_annotations(path, image_dir, skip_bad=False, log=print, content=None):
    """-> image paths (Ni,), captions (Nc,) str, caption image indices (Nc,) int; images sorted by
    id, only images with at least one caption. Unknown image ids and missing files are errors
    (or, with skip_bad, dropped and reported). content: the file's parsed JSON when it was read
    already (a split file's share, see core/data/karpathy.py); path then only names it in
    messages."""
    path, image_dir = Path(path), Path(image_dir)
    try:
        ann = json.loads(path.read_text(encoding="utf-8")) if content is None else content
        images, conflicts = {}, {}
        for im in ann["images"]:
            i, name = int(im["id"]), str(im["file_name"])
            if images.setdefault(i, name) != name:
                conflicts.setdefault(i, {images[i]}).add(name)
        annotations = ann["annotations"]
        bad = [a for a in annotations if not isinstance(a.get("caption"), str)]
        if bad:
            first = bad[0]
            raise UserError(f"{path}: {len(bad)} caption(s) are not strings (annotation id "
                            f"{first.get('id')}, image {first.get('image_id')}: "
                            f"{json.dumps(first.get('caption'))}): fix or remove them")
        pairs = [(int(a["image_id"]), a["caption"]) for a in annotations]
    except OSError as e:
        raise UserError(f"cannot read annotation file {path} ({e})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a COCO-format captions file ({type(e).__name__}: "
                        f"{e})") from None
    if conflicts:
        first = min(conflicts)
        raise UserError(f"{path}: {len(conflicts)} image id(s) are listed with different file "
                        f"names, so their captions cannot be attached (ids "
                        f"{', '.join(map(str, sorted(conflicts)[:10]))}; id {first}: "
                        f"{', '.join(sorted(conflicts[first]))})")
    named = {}
    for i, name in images.items():
        if named.setdefault(name, i) != i:
            raise UserError(f"{path}: the file {name} is listed as two images (ids {named[name]} "
                            f"and {i}): each image needs one id")
    empty = sum(not tokenize(c) for _, c in pairs)
    if empty:
        log(f"{path}: dropped {empty} empty caption(s) (no letters or digits)")
        pairs = [(i, c) for i, c in pairs if tokenize(c)]
    if not pairs:
        raise UserError(f"{path}: no captions"
                        + (f" left after dropping {empty} empty ones" if empty else ""))
    unknown = sorted({i for i, _ in pairs if i not in images})
    if unknown:
        if not skip_bad:
            raise UserError(f"{path}: caption for unknown image id {unknown[0]}"
                            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
        unknown_set = set(unknown)
        log(f"skipping {sum(i in unknown_set for i, _ in pairs)} captions of {len(unknown)} "
            f"unknown image ids")
        pairs = [(i, c) for i, c in pairs if i in images]
    missing = sorted(i for i in images if not (image_dir / images[i]).is_file())
    if missing:
        if not skip_bad:
            raise UserError(f"missing image {image_dir / images[missing[0]]} (id {missing[0]})"
                            + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        log(f"skipping {len(missing)} missing images, e.g. {image_dir / images[missing[0]]}")
        for i in missing:
            del images[i]
        pairs = [(i, c) for i, c in pairs if i in images]
    with_captions = sorted({i for i, _ in pairs})
    row = {image_id: r for r, image_id in enumerate(with_captions)}
    paths = np.array([str(image_dir / images[i]) for i in with_captions])
    return paths, [c for _, c in pairs], np.array([row[i] for i, _ in pairs], dtype=np.int32)


def url_of(path, out_dir):
    """Image path as written to *_urls.txt: relative to the dataset folder when inside it, else
    absolute."""
    path, out_dir = Path(path).resolve(), Path(out_dir).resolve()
    try:
        return path.relative_to(out_dir).as_posix()
    except ValueError:
        return str(path)
