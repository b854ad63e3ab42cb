"""Robustness and attention on the sample dataset: exact scenes on shifted and recoloured val
scenes, and whether the attention decoders look at the objects they name.

Usage:
    python benchmarks/sample_robustness.py lstm_checkpoint.npz attention_lstm_checkpoint.npz [--out FILE]

The 500 val scenes are rendered three ways: as in the dataset, with every object moved by 10
pixels (make_sample_dataset.shifted) and on another background colour; each goes through the
dataset's own random VGG16 and PCA transforms (fc7, and the 7 x 7 regions for the decoders that
attend). Every checkpoint captions every copy greedily; a caption is an exact scene when it is one
of the scene's five references (the JSON also counts the mistakes by attribute, as
benchmarks/caption_errors.py does). For decoders over regions, every colour or shape word that names
one object of the scene counts as looking at it when its most attended region overlaps the object
(chance: the share of regions that overlap it). Prints a markdown table and writes the figures as
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
    GRID_TRANSFORM_FILE, TRANSFORM_FILE, extract_fc7, load_transform, project, project_grid,
    region_boxes)
from core.model.registry import MODEL_TYPES  # noqa: E402

OTHER_BACKGROUND = (205, 222, 240)  # a light blue no object has


def variant_features(scenes, variant, data_dir, batch_size):
    """Render the scenes as `variant` ("val", "shifted", "background") and extract both kinds of
    features
    -> {"fc7": (N, 512), "grid": (N, 49, G)}."""
    fc7_transform, info = load_transform(Path(data_dir) / TRANSFORM_FILE)
    grid_transform, grid_info = load_transform(Path(data_dir) / GRID_TRANSFORM_FILE)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, scene in enumerate(scenes):
            image = sample.render(sample.shifted(scene) if variant == "shifted" else scene,
                                  OTHER_BACKGROUND if variant == "background"
                                  else sample.BACKGROUND)
            paths.append(Path(tmp) / f"{i:06d}.png")
            image.save(paths[-1])
        fc7, bad, grid = extract_fc7(paths, info["vgg16"], batch_size=batch_size,
                                     grid_size=grid_info["grid_size"], desc=variant)
    assert not bad, bad
    return {"fc7": project(fc7, fc7_transform), "grid": project_grid(grid, grid_transform)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoints trained on the sample dataset")
    p.add_argument("--num_images", type=int, default=500, help="val scenes to use")
    p.add_argument("--batch_size", type=int, default=32, help="images per VGG16 forward pass")
    p.add_argument("--out", default=None, help="also write the figures to this JSON file")
    p.add_argument("--cache", default=None,
                   help="keep the rendered copies' features in this .npz (reused when it "
                                                 "exists: --num_images must then be the same)")
    args = p.parse_args(argv)
    scenes = [sample.make_scene("val", i) for i in range(args.num_images)]
    references = [set(sample.captions(s)) for s in scenes]
    cache = Path(args.cache) if args.cache else None
    if cache and cache.is_file():
        with np.load(cache) as f:
            features = {v: {k: f[f"{v}.{k}"] for k in ("fc7", "grid")}
                        for v in ("val", "shifted", "background")}
    else:
        features = {v: variant_features(scenes, v, sample.SAMPLE_DIR, args.batch_size)
                    for v in ("val", "shifted", "background")}
        if cache:
            np.savez(cache, **{f"{v}.{k}": a for v, d in features.items() for k, a in d.items()})
    results = []
    for path in args.checkpoints:
        model, config = load_checkpoint(path)
        kind = MODEL_TYPES[config["model"]].features
        row = {"checkpoint": path, "model": config["model"]}
        for variant, feats in features.items():
            if kind == "grid":
                words, alphas = greedy_search(model, feats["grid"], 30, attention=True)
            else:
                words, alphas = greedy_search(model, feats["fc7"], 30), None
            captions = decode_captions(words, config["idx_to_word"])
            row[variant] = float(np.mean([c in refs for c, refs in zip(captions, references)]))
            report = [{"image": i, "caption": c, "references": sorted(r)}
                      for i, (c, r) in enumerate(zip(captions, references))]
            row[f"{variant}_mistakes"] = count_errors(report)
            if alphas is not None and variant == "val":
                boxes = region_boxes(int(round(np.sqrt(alphas.shape[2]))), sample.SIZE, sample.SIZE)
                looks = [hit for s, c, a in zip(scenes, captions, alphas)
                         for hit in sample.attention_on_objects(s, c.split(), a, boxes)]
                row["attention_on_object"] = float(np.mean([h for h, _ in looks]))
                row["attention_chance"] = float(np.mean([c for _, c in looks]))
                row["object_words"] = len(looks)
        results.append(row)
    print("| checkpoint | val | shifted by 10 px | other background | attention on the named "
          "object (chance) |")
    print("|---|---|---|---|---|")
    for r in results:
        looks = (f"{r['attention_on_object']:.1%} of {r['object_words']} words "
                 f"({r['attention_chance']:.1%})"
                 if "attention_on_object" in r else "")
        print(f"| {r['model']}: {r['checkpoint']} | {r['val']:.1%} | {r['shifted']:.1%} | "
              f"{r['background']:.1%} | {looks} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
