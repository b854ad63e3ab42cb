"""COCO caption metrics (pycocoevalcap): BLEU-1..4, METEOR (when Java is present), ROUGE-L, CIDEr-D.

Captions are compared as the decoders see them: lower-case words separated by single
spaces, without <START>, <END> and <NULL>. Every image is scored against all of its
reference captions: the dataset's own (as encoded: cut to its caption length, rare words
<UNK>) or, as papers score, the raw captions of a COCO annotation file (`raw_references`).
"""
import json
import re
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.data.vocab import decode_captions, tokenize
from core.model.decoding import decode
from core.util.errors import UserError
from core.util.fileio import atomic_write_text

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def references_by_image(captions, image_idxs, idx_to_word):
    """captions (Nc, L), image_idxs (Nc,) -> {image index: [reference strings]}."""
    refs = {}
    for text, i in zip(decode_captions(captions, idx_to_word), image_idxs):
        refs.setdefault(int(i), []).append(text)
    return refs


def raw_references(path, urls, images, own=None):
    """The raw captions of a COCO annotation file (captions_val2014.json) for dataset images.

    path: the annotation file; urls (Ni,): the split's *_urls.txt entries; images: the image
    indices to find. An entry matches an annotation image by its coco_url, flickr_url or file
    name, or by their last path component (the CS231n files list Flickr URLs, datasets built
    here image paths). own: {image index: [the dataset's own references]}, to check that the
    file's captions are this split's (file names repeat across splits: a file of another split
    can match every name). -> ({image index: [reference strings, tokenized like the decoders'
    words, never cut, no <UNK>]}, {image index: the file's image id}); UserError naming an image
    the file does not have, an annotation without a caption (null or empty), or a file whose
    captions are not the split's.
    """
    path = Path(path)
    try:
        ann = json.loads(path.read_text(encoding="utf-8"))
        by_key = {}
        for im in ann["images"]:
            for key in (im.get("coco_url"), im.get("flickr_url"), im.get("file_name")):
                if key:
                    by_key.setdefault(str(key), im["id"])
                    by_key.setdefault(str(key).rstrip("/").rsplit("/", 1)[-1], im["id"])
        captions = {}
        for a in ann["annotations"]:
            words = tokenize(a["caption"]) if isinstance(a["caption"], str) else []
            if not words:
                raise UserError(f"--references {path}: annotation {a.get('id')} (image "
                                f"{a['image_id']}) has no caption ({json.dumps(a['caption'])}): "
                                "fix or drop it")
            captions.setdefault(a["image_id"], []).append(" ".join(words))
    except OSError as e:
        raise UserError(f"cannot read --references {path} ({e})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"--references {path} is not a COCO-format captions file "
                        f"({type(e).__name__}: {e})") from None
    refs, ids, missing = {}, {}, []
    for i in images:
        url = str(urls[i])
        image_id = by_key.get(url, by_key.get(url.rstrip("/").rsplit("/", 1)[-1]))
        if image_id is None or image_id not in captions:
            missing.append(url)
        else:
            refs[int(i)], ids[int(i)] = captions[image_id], image_id
    if missing:
        raise UserError(f"--references {path} has no captions for {len(missing)} of the "
                        f"{len(images)} images scored (e.g. {missing[0]}): pass the annotation "
                        f"file of this split (captions_val2014.json for val2014)")
    if own:
        agree = sum(any(_same_caption(o, raw) for o in own[i] for raw in refs[i]) for i in refs)
        if agree < len(refs) / 2:
            raise UserError(f"--references {path} is not this split's: only {agree} of the "
                            f"{len(refs)} images it matched (by file name) have a caption of the "
                            "dataset's own among its captions; pass the annotation file of the "
                            "split scored")
    return refs, ids


def _same_caption(own, raw):
    """Whether a dataset's own reference (cut to its length, rare words <UNK>) is the raw
    caption."""
    own, raw = own.split(), raw.split()
    return len(own) <= len(raw) and len(own) >= min(len(raw), 15) and all(
        o == "<UNK>" or o == w for o, w in zip(own, raw))


def java_available():
    """Whether a Java runtime is on PATH (METEOR is a Java program)."""
    return shutil.which("java") is not None


def score_captions(predictions, references, meteor=True):
    """predictions {image: str}, references {image: [str, ...]} over the same images
    -> {metric: float}; METEOR is None when skipped (no Java runtime, or meteor=False)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(predictions) != set(references):
        raise ValueError("predictions and references must cover the same images")
    if not predictions:
        raise ValueError("nothing to score")
    keys = sorted(predictions)
    res = {k: [predictions[k] if predictions[k].strip() else "<empty>"] for k in keys}
    gts = {k: list(references[k]) for k in keys}
    scores = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n, value in enumerate(bleu, 1):
        scores[f"BLEU-{n}"] = float(value)
    scores["METEOR"] = None
    if meteor and java_available():
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()  # a Java subprocess
        try:
            scores["METEOR"] = float(scorer.compute_score(gts, res)[0])
        except (OSError, ValueError) as e:  # Java present but unable to run the jar
            print(f"METEOR skipped: {type(e).__name__}: {e}")
        finally:
            _end_meteor(scorer)
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return scores


def _end_meteor(scorer):
    """End a pycocoevalcap Meteor scorer's Java process now, also when scoring was interrupted
    (Ctrl-C):
    its __del__ waits for the lock that an interrupted compute_score still holds, which hangs."""
    scorer.meteor_p.kill()
    scorer.meteor_p.wait()
    if scorer.lock.locked():
        scorer.lock.release()


def format_scores(scores):
    """One table row per metric, METEOR marked when skipped."""
    lines = []
    for name in METRICS:
        value = scores.get(name)
        shown = "skipped (no Java runtime)" if value is None else f"{value:.4f}"
        lines.append(f"{name:8s} {shown}")
    return "\n".join(lines)


def caption_split(model, data, split, max_length=30, batch_size=500, beam_size=1,
                  length_penalty=0.0, progress=True, images=None, **options):
    """Caption every image of a split that has references (or the given `images`), once.

    -> {image index: predicted caption string}.
    """
    images = np.unique(data[f"{split}_image_idxs"]) if images is None else np.asarray(images)
    predictions = {}
    for s in tqdm(range(0, len(images), batch_size), desc=f"captioning {split}", unit="batch",
                  disable=not progress):
        batch = images[s:s + batch_size]
        words = decode(model, data[f"{split}_features"][batch], max_length=max_length,
                       beam_size=beam_size, length_penalty=length_penalty, **options)
        for i, text in zip(batch, decode_captions(words, data["idx_to_word"])):
            predictions[int(i)] = text
    return predictions


def coco_ids(urls, images, known=None):
    """The COCO image ids of dataset images -> ({image index: id}, None), or (None, why) when some
    image has none or two share one.

    known: ids an annotation file gave (--references); otherwise the trailing digits of the file
    name (COCO_val2014_000000391895.jpg, 000000391895.jpg, the sample dataset's 000007.png);
    CS231n's Flickr URLs carry none."""
    if known is not None:
        return {int(i): int(known[int(i)]) for i in images}, None
    ids, first = {}, {}
    for i in images:
        digits = re.search(r"(\d+)\.[A-Za-z]+$", str(urls[i]).rstrip("/").rsplit("/", 1)[-1])
        if digits is None:  # CS231n's Flickr names end in _z.jpg: no id
            return None, (f"these images' names give no COCO image ids (e.g. {urls[i]}); "
                          "--references captions_val2014.json supplies them")
        ids[int(i)] = int(digits.group(1))
        if first.setdefault(ids[int(i)], int(i)) != int(i):
            return None, (f"two images' names give the COCO id {ids[int(i)]} "
                          f"({urls[first[ids[int(i)]]]}, {urls[i]})")
    return ids, None


def write_coco_results(path, predictions, urls, known_ids=None):
    """The captions in the COCO results format, [{"image_id", "caption"}] by image id, which the
    COCO evaluation server and other toolkits read; a line saying why when the images have no
    ids (or two share one)."""
    ids, why = coco_ids(urls, sorted(predictions), known_ids)
    if ids is None:
        print(f"no COCO results file: {why}")
        return
    results = [{"image_id": ids[i], "caption": caption} for i, caption in predictions.items()]
    atomic_write_text(path, json.dumps(sorted(results, key=lambda r: r["image_id"]), indent=1))
    print(f"saved COCO results {path}")
