"""Karpathy's split files (dataset_coco.json, dataset_flickr8k.json, ...): the standard captioning
splits.

A split file lists every image once: {"images": [{"filepath": "val2014", "filename":
"COCO_val2014_000000391895.jpg", "cocoid": 391895, "split": "train" | "restval" | "val" | "test",
"sentences": [{"raw": "A man ...", "tokens": [...]}, ...]}, ...]}. For COCO it takes 5,000 val and
5,000 test images from val2014 and gives the rest of val2014 ("restval") to training, so a model is
chosen on val and reported on test, as papers do. The raw sentences are the captions (tokenized
here like any COCO-format file's).
"""
import json
from pathlib import Path

from core.util.errors import UserError

TO_SPLIT = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def read_split_file(path, image_dirs, default_dir):
    """path: a Karpathy split file; image_dirs: {"train2014": folder, "val2014": folder} for the
    images' "filepath"; default_dir: the folder of images without a filepath (Flickr's files).
    -> {split: (name for messages, ".", COCO-format annotations dict)} for build_dataset, with
    train = train + restval; the "test" entry only when the file has test images."""
    path = Path(path)
    try:
        images = json.loads(path.read_text(encoding="utf-8"))["images"]
        out, seen = {}, {}  # seen: image (id and file) -> the split entry that listed it first
        for k, im in enumerate(images):
            split = TO_SPLIT.get(im["split"])
            if split is None:
                raise UserError(f"{path}: image {k} has split {im['split']!r}, not one of "
                                f"{', '.join(TO_SPLIT)}")
            folder = image_dirs.get(im.get("filepath"),
                                    default_dir) if im.get("filepath") else default_dir
            if folder is None:
                raise UserError(f"{path}: image {k} lies in {im['filepath']!r}, which no image "
                                f"folder was given for (pass "
                                f"--{'val' if 'val' in im['filepath'] else 'train'}_images)")
            image_id = int(im.get("cocoid", im.get("imgid", k)))
            for key in (("id", image_id), ("file", str(Path(folder) / im["filename"]))):
                if key in seen:  # one image in two splits, or twice in one: refused
                    first = seen[key]
                    where = (f"twice under {im['split']}" if first == im["split"]
                             else f"under both {first} and {im['split']}")
                    raise UserError(f"{path}: image {im['filename']} (id {image_id}) is listed "
                                    f"{where}: each image must be in one split, once")
                seen[key] = im["split"]
            ann = out.setdefault(split, {"images": [], "annotations": []})
            ann["images"].append({"id": image_id, "file_name": str(Path(folder) / im["filename"])})
            ann["annotations"] += [{"image_id": image_id, "caption": s["raw"]}
                                   for s in im["sentences"]]
    except OSError as e:
        raise UserError(f"cannot read split file {path} ({e})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a Karpathy split file like dataset_coco.json "
                        f"({type(e).__name__}: {e})") from None
    for split in ("train", "val"):
        if split not in out:
            raise UserError(f"{path} has no {split} images")
    return {split: (f"{path} ({split})", ".", ann) for split, ann in out.items()}
