"""Robustness and attention on the sample dataset: exact scenes on copies of the test scenes drawn
differently, whether the attention decoders look at the objects they name, and whether a
detector finds the objects.

Usage:
    python benchmarks/sample_robustness.py lstm_checkpoint.npz updown_checkpoint.npz [--out FILE]
    python benchmarks/sample_robustness.py updown_checkpoint.npz --data_dir DIR \
        --detector DIR/bottom_up_detector.npz --variants test gradient jpeg

The test scenes are rendered as copies (VARIANTS): as in the dataset; with every object moved by
10 pixels (make_sample_dataset.shifted); with the objects placed again independently
(make_sample_dataset.moved: the same objects and relation, new places); on background colours no
training scene has (make_sample_dataset.HELD_OUT_BACKGROUNDS, in turn); on a background running
from dark to light grey (gradient); on grain or on stripes and checks (noise, texture:
core/datasets/scene_variations.py); with each object in a shade of its colour (shades); after a
slight blur (radius 1) or JPEG compression at quality 50; and twice as large (256 pixels). Each
copy goes through the data folder's own transforms (--data_dir, the sample dataset by default),
only those of the kinds the checkpoints read: fc7, the 7 x 7 regions, the object boxes (found by
the dataset's own source of boxes: the plain-background proposer, or the detector it was built
with). Every checkpoint captions every copy greedily; a caption is an exact scene when it is one of
the scene's five references, and one that reaches 30 words without ending is counted (the JSON
also counts the mistakes by attribute, as benchmarks/caption_errors.py does, and keeps an
example of each copy). For decoders over regions, every colour or shape word that names one
object of the scene counts as looking at it when its most attended region is on the object: a
grid cell that overlaps its bounding box, or a box of IoU at least 0.5 with it (chance: the share
of the regions that are). With --detector, a row for the detector on every copy: the share of
objects a kept box finds (IoU 0.5) and the colour and size accuracy of that box's attributes.
Prints markdown tables and writes the figures as JSON (--out).
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.caption_errors import count_errors  # noqa: E402
from core.model.checkpoint import load_checkpoint  # noqa: E402
from core.data.vocab import decode_captions  # noqa: E402
from core.datasets import make_sample_dataset as sample  # noqa: E402
from core.model.decoding import greedy_search  # noqa: E402
from core.data.features import (  # noqa: E402
    GRID_TRANSFORM_FILE, TRANSFORM_FILE, extract_fc7, load_transform, project, project_grid)
from core.data.box_sources import compute_box_regions  # noqa: E402
from core.data.regions import Regions  # noqa: E402
from core.data.feature_kinds import FEATURE_KINDS  # noqa: E402
from core.model.registry import checkpoint_features  # noqa: E402
from core.datasets import scene_variations as variations  # noqa: E402

VARIANTS = ("test", "shifted", "moved", "backgrounds", "gradient", "noise", "texture", "shades",
            "blur", "jpeg", "larger")
KINDS = ("fc7", "grid", "boxes")
MAX_LENGTH = 30


def render_variant(scene, i, variant):
    """Scene i of the test split drawn as `variant` -> PIL image."""
    rng = np.random.default_rng([7, i])
    if variant == "shifted":
        return sample.render(sample.shifted(scene))
    if variant == "moved":
        return sample.render(sample.moved(scene, rng))
    if variant == "backgrounds":
        colours = list(sample.HELD_OUT_BACKGROUNDS.values())
        return sample.render(scene, colours[i % len(colours)])
    if variant == "gradient":
        return sample.render(scene, sample.gradient_background())
    if variant in ("noise", "texture"):
        return sample.render(scene, variations.varied_background(rng, variant))
    if variant == "shades":
        return sample.render(variations.shaded(scene, rng))
    if variant == "blur":
        return variations.blurred(sample.render(scene), 1.0)
    if variant == "jpeg":
        return variations.jpeg(sample.render(scene), 50)
    if variant == "larger":
        return sample.render(scene).resize((2 * sample.SIZE, 2 * sample.SIZE), Image.BICUBIC)
    return sample.render(scene)


def variant_images(scenes, variant):
    """The scenes drawn as `variant` -> list of PIL images."""
    return [render_variant(scene, i, variant) for i, scene in enumerate(scenes)]


def variant_features(images, variant, data_dir, batch_size, kinds=KINDS):
    """The images of a copy through the data folder's transforms -> {kind: fc7 (N, 512), grid
    Regions (N, 49, G) or boxes Regions (N, K, D)} of the kinds asked for."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, image in enumerate(images):
            paths.append(Path(tmp) / f"{i:06d}.png")
            image.save(paths[-1])
        if "fc7" in kinds or "grid" in kinds:
            fc7_transform, info = load_transform(Path(data_dir) / TRANSFORM_FILE)
            grid_transform, grid_info = load_transform(Path(data_dir) / GRID_TRANSFORM_FILE)
            fc7, bad, grid = extract_fc7(paths, info["vgg16"], batch_size=batch_size,
                                         grid_size=grid_info["grid_size"], desc=variant)
            assert not bad, bad
            out["fc7"] = project(fc7, fc7_transform)
            out["grid"] = Regions(project_grid(grid, grid_transform))
        if "boxes" in kinds:
            box_transform, box_info = FEATURE_KINDS["boxes"].transform(data_dir)
            out["boxes"], bad = compute_box_regions(paths, box_transform, box_info)
            assert not bad, bad
    return out


def drawn_scenes(scenes, variant):
    """The scenes as `variant` draws them (where the objects stand), for attention on objects."""
    if variant == "shifted":
        return [sample.shifted(s) for s in scenes]
    if variant == "moved":
        return [sample.moved(s, np.random.default_rng([7, i])) for i, s in enumerate(scenes)]
    return scenes


def caption_copy(model, config, regions, scenes, variant):
    """One checkpoint's greedy captions of one copy -> its figures (exact, unended, mistakes, an
    example, and for region decoders where the attention looked)."""
    kind = checkpoint_features(config)
    references = [set(sample.captions(s)) for s in scenes]
    if kind != "fc7":
        words, alphas = greedy_search(model, regions, MAX_LENGTH, attention=True)
    else:
        words, alphas = greedy_search(model, regions, MAX_LENGTH), None
    captions = decode_captions(words, config["idx_to_word"])
    wrong = [k for k, (c, r) in enumerate(zip(captions, references)) if c not in r]
    row = {variant: float(np.mean([c in r for c, r in zip(captions, references)])),
           f"{variant}_unended": int(sum(len(c.split()) >= MAX_LENGTH for c in captions)),
           f"{variant}_example": (None if not wrong else
                                  {"caption": captions[wrong[0]],
                                   "reference": sorted(references[wrong[0]])[0]})}
    report = [{"image": i, "caption": c, "references": sorted(r)}
              for i, (c, r) in enumerate(zip(captions, references))]
    row[f"{variant}_mistakes"] = count_errors(report, split="test")
    if alphas is not None:
        looks = attention_looks(drawn_scenes(scenes, variant), captions, alphas, regions, kind)
        row[f"{variant}_attention_on_object"] = float(np.mean([h for h, _ in looks]))
        row[f"{variant}_attention_chance"] = float(np.mean([c for _, c in looks]))
        row[f"{variant}_object_words"] = len(looks)
    return row


def print_tables(results, detector_rows, variants):
    """The decoders' exact share per copy (and captions of 30 words), then the detector's."""
    print("| checkpoint | features | " + " | ".join(variants) + " | attention on the named "
          "object (chance), test |")
    print("|---|---|" + "---|" * len(variants) + "---|")
    for r in results:
        looks = (f"{r['test_attention_on_object']:.1%} of {r['test_object_words']} words "
                 f"({r['test_attention_chance']:.1%})"
                 if "test_attention_on_object" in r else "")
        cells = [f"{r[v]:.1%}" + (f" ({r[f'{v}_unended']} unended)" if r[f"{v}_unended"] else "")
                 for v in variants]
        print(f"| {r['model']}: {r['checkpoint']} | {r['features']} | " + " | ".join(cells)
              + f" | {looks} |")
    if detector_rows:
        print("\n| detector | copy | objects found (IoU 0.5) | colour | size | AP@0.5 |")
        print("|---|---|---|---|---|---|")
        for variant, d in detector_rows.items():
            print(f"| {d['detector']} | {variant} | {d['recall']:.1%} of {d['objects']} | "
                  f"{d['color']:.1%} | {d['size']:.1%} | {d['ap50']:.3f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", help="checkpoints trained on the data folder")
    p.add_argument("--data_dir", default=str(sample.SAMPLE_DIR),
                   help="the sample dataset the checkpoints were trained on (its transforms and "
                        "source of boxes)")
    p.add_argument("--detector", default=None, help="also score this bottom-up detector's "
                   "weights (core/datasets/train_detector.py) on every copy")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--num_images", type=int, default=500, help="test scenes to use")
    p.add_argument("--batch_size", type=int, default=32, help="images per VGG16 forward pass")
    p.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    scenes = [sample.make_scene("test", i) for i in range(args.num_images)]
    loaded = [(path, *load_checkpoint(path)) for path in args.checkpoints]
    kinds = {checkpoint_features(config) for _, _, config in loaded}
    rows = {path: {"checkpoint": path, "model": config["model"],
                   "features": checkpoint_features(config)} for path, _, config in loaded}
    detector = None
    if args.detector:
        from core.data.bottom_up_detector import load_detector
        from core.datasets.train_detector import score

        detector = load_detector(args.detector)[0]
    detector_rows = {}
    for variant in args.variants:
        images = variant_images(scenes, variant)
        drawn = drawn_scenes(scenes, variant)
        if detector is not None:
            detector_rows[variant] = dict(score(detector, drawn, images), detector=args.detector)
        features = variant_features(images, variant, args.data_dir, args.batch_size, kinds)
        for path, model, config in loaded:
            rows[path].update(caption_copy(model, config, features[checkpoint_features(config)],
                                           drawn, variant))
    results = list(rows.values())
    print_tables(results, detector_rows, args.variants)
    if args.out:
        Path(args.out).write_text(json.dumps({"decoders": results, "detector": detector_rows},
                                             indent=1))
        print(f"wrote {args.out}")


def attention_looks(scenes, captions, alphas, regions, kind):
    """(hit, chance) of every object word of the captions (make_sample_dataset.
    attention_on_objects): alphas (N, L, R); regions the Regions the decoder read; kind the name
    of their kind of features."""
    looks = []
    for k, (scene, caption, alpha) in enumerate(zip(scenes, captions, alphas)):
        boxes, own, heat_map = FEATURE_KINDS[kind].drawn_regions(regions[k], sample.SIZE,
                                                                 sample.SIZE)
        looks += sample.attention_on_objects(scene, caption.split(), alpha[:, own], boxes,
                                             iou=None if heat_map else 0.5)
    return looks


if __name__ == "__main__":
    main()
