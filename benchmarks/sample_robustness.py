"""Robustness and attention on the sample dataset: exact scenes on copies of the test scenes drawn
differently, and whether the attention decoders look at the objects they name.

Usage:
    python benchmarks/sample_robustness.py lstm_checkpoint.npz updown_checkpoint.npz [--out FILE]

The 500 test scenes are rendered four ways: as in the dataset; with every object moved by 10
pixels (make_sample_dataset.shifted); with the objects placed again independently
(make_sample_dataset.moved: the same objects and relation, new places); and on background colours
no training scene has (make_sample_dataset.HELD_OUT_BACKGROUNDS, in turn). Each copy goes through
the dataset's own random VGG16 and PCA transforms: fc7, the 7 x 7 regions and the object boxes
(found by the dataset's proposer). Every checkpoint captions every copy greedily; a caption is an
exact scene when it is one of the scene's five references (the JSON also counts the mistakes by
attribute, as benchmarks/caption_errors.py does). For decoders over regions, every colour or shape
word that names one object of the scene counts as looking at it when its most attended region is
on the object: a grid cell that overlaps its bounding box, or a box of IoU at least 0.5 with it
(chance: the share of the regions that are). Prints a markdown table and writes the figures as
JSON (--out).
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.caption_errors import count_errors  # noqa: E402
from core.model.checkpoint import load_checkpoint  # noqa: E402
from core.data.vocab import decode_captions  # noqa: E402
from core.datasets import make_sample_dataset as sample  # noqa: E402
from core.model.decoding import greedy_search  # noqa: E402
from core.data.features import (  # noqa: E402
    GRID_TRANSFORM_FILE, TRANSFORM_FILE, extract_fc7, load_transform, project, project_grid)
from core.data.boxes import compute_box_regions  # noqa: E402
from core.data.regions import Regions  # noqa: E402
from core.data.feature_kinds import FEATURE_KINDS  # noqa: E402
from core.model.registry import checkpoint_features  # noqa: E402

VARIANTS = ("test", "shifted", "moved", "backgrounds")
KINDS = ("fc7", "grid", "boxes")


def render_variant(scene, i, variant):
    """Scene i of the test split drawn as `variant` -> PIL image."""
    if variant == "shifted":
        return sample.render(sample.shifted(scene))
    if variant == "moved":
        return sample.render(sample.moved(scene, np.random.default_rng([7, i])))
    if variant == "backgrounds":
        colours = list(sample.HELD_OUT_BACKGROUNDS.values())
        return sample.render(scene, colours[i % len(colours)])
    if variant == "gradient":
        return sample.render(scene, sample.gradient_background())
    return sample.render(scene)


def variant_features(scenes, variant, data_dir, batch_size):
    """Render the scenes as `variant` and extract every kind of features -> ({"fc7": (N, 512),
    "grid": Regions (N, 49, G), "boxes": Regions (N, K, D)}, the rendered scenes' object centres as moved)."""
    fc7_transform, info = load_transform(Path(data_dir) / TRANSFORM_FILE)
    grid_transform, grid_info = load_transform(Path(data_dir) / GRID_TRANSFORM_FILE)
    box_transform, box_info = FEATURE_KINDS["boxes"].transform(data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, scene in enumerate(scenes):
            paths.append(Path(tmp) / f"{i:06d}.png")
            render_variant(scene, i, variant).save(paths[-1])
        fc7, bad, grid = extract_fc7(paths, info["vgg16"], batch_size=batch_size,
                                     grid_size=grid_info["grid_size"], desc=variant)
        boxes, bad_boxes = compute_box_regions(paths, box_transform, box_info)
    assert not bad and not bad_boxes, (bad, bad_boxes)
    return {"fc7": project(fc7, fc7_transform),
            "grid": Regions(project_grid(grid, grid_transform)), "boxes": boxes}


def drawn_scenes(scenes, variant):
    """The scenes as `variant` draws them (where the objects stand), for attention on objects."""
    if variant == "shifted":
        return [sample.shifted(s) for s in scenes]
    if variant == "moved":
        return [sample.moved(s, np.random.default_rng([7, i])) for i, s in enumerate(scenes)]
    return scenes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoints trained on the sample dataset")
    p.add_argument("--num_images", type=int, default=500, help="test scenes to use")
    p.add_argument("--batch_size", type=int, default=32, help="images per VGG16 forward pass")
    p.add_argument("--out", default=None, help="also write the figures to this JSON file")
    p.add_argument("--cache", default=None,
                   help="keep the rendered copies' features in this .npz (reused when it "
                                                 "exists: --num_images must then be the same)")
    args = p.parse_args(argv)
    scenes = [sample.make_scene("test", i) for i in range(args.num_images)]
    references = [set(sample.captions(s)) for s in scenes]
    cache = Path(args.cache) if args.cache else None
    if cache and cache.is_file():
        with np.load(cache) as f:
            features = {v: {k: f[f"{v}.{k}"] for k in KINDS} for v in VARIANTS}
    else:
        features = {v: variant_features(scenes, v, sample.SAMPLE_DIR, args.batch_size)
                    for v in VARIANTS}
        if cache:
            np.savez(cache, **{f"{v}.{k}": a for v, d in features.items() for k, a in d.items()})
    results = []
    for path in args.checkpoints:
        model, config = load_checkpoint(path)
        kind = checkpoint_features(config)
        row = {"checkpoint": path, "model": config["model"], "features": kind}
        for variant, feats in features.items():
            if kind != "fc7":
                words, alphas = greedy_search(model, feats[kind], 30, attention=True)
            else:
                words, alphas = greedy_search(model, feats["fc7"], 30), None
            captions = decode_captions(words, config["idx_to_word"])
            row[variant] = float(np.mean([c in refs for c, refs in zip(captions, references)]))
            report = [{"image": i, "caption": c, "references": sorted(r)}
                      for i, (c, r) in enumerate(zip(captions, references))]
            row[f"{variant}_mistakes"] = count_errors(report, split="test")
            if alphas is not None:
                looks = attention_looks(drawn_scenes(scenes, variant), captions, alphas,
                                        feats[kind], kind)
                row[f"{variant}_attention_on_object"] = float(np.mean([h for h, _ in looks]))
                row[f"{variant}_attention_chance"] = float(np.mean([c for _, c in looks]))
                row[f"{variant}_object_words"] = len(looks)
        results.append(row)
    print("| checkpoint | features | test | shifted by 10 px | moved independently | unseen "
          "backgrounds | attention on the named object (chance), test |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        looks = (f"{r['test_attention_on_object']:.1%} of {r['test_object_words']} words "
                 f"({r['test_attention_chance']:.1%})"
                 if "test_attention_on_object" in r else "")
        print(f"| {r['model']}: {r['checkpoint']} | {r['features']} | "
              + " | ".join(f"{r[v]:.1%}" for v in VARIANTS) + f" | {looks} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
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
