"""How much of each scene the sample dataset's features keep: linear probes on the PCA features.

Usage:
    python benchmarks/probe_sample_features.py                  # the fc7 PCA features
    python benchmarks/probe_sample_features.py --features grid  # the 7 x 7 region features, flattened
    python benchmarks/probe_sample_features.py --features boxes # each object box's feature

Fits a logistic regression per attribute (colour, shape and size of each object, and for two
objects whether they stand side by side or one above the other) on the train features and
prints val accuracy as JSON, separately for one-object and two-object scenes. Chance is 1/6
for colour, 1/4 for shape, 1/2 for size and relation. Also scores a blind baseline: the most
common training caption given for every val image (BLEU-4 and CIDEr-D). With --features boxes the
probe reads one box at a time (its 128-d feature, not its geometry): the colour, shape and size of
the object the box holds (the one whose centre is nearest the box's), fitted on the train boxes and
scored on the test split's.
"""
import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.coco_utils import decode_captions, load_coco_data  # noqa: E402
from core.datasets.make_sample_dataset import SAMPLE_DIR, SIZE, make_scene  # noqa: E402
from core.evaluation.metrics import references_by_image, score_captions  # noqa: E402


def blind_baseline():
    """The most common training caption, said for every val image -> dict of its scores."""
    data = load_coco_data(SAMPLE_DIR)
    caption, _ = Counter(decode_captions(data["train_captions"],
                                         data["idx_to_word"])).most_common(1)[0]
    refs = references_by_image(data["val_captions"], data["val_image_idxs"], data["idx_to_word"])
    scores = score_captions({i: caption for i in refs}, refs, meteor=False)
    return {"caption": caption, "BLEU-4": round(scores["BLEU-4"], 3),
            "CIDEr": round(scores["CIDEr"], 3)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", choices=("fc7", "grid", "boxes"), default="fc7",
                        help="which features to probe")
    args = parser.parse_args(argv)
    if args.features == "boxes":
        print(json.dumps(probe_boxes(), indent=1))
        return
    name = "fc7_pca" if args.features == "fc7" else "grid_pca"
    feats = {s: h5py.File(SAMPLE_DIR / f"{s}2014_vgg16_{name}.h5", "r")["features"][()]
             for s in ("train", "val")}
    feats = {s: f.reshape(len(f), -1).astype(np.float32) for s, f in feats.items()}
    scenes = {s: [make_scene(s, i) for i in range(len(feats[s]))] for s in feats}
    scaler = StandardScaler().fit(feats["train"])
    X = {s: scaler.transform(feats[s]) for s in feats}
    result = {}
    for kind, objects in (("one object", 1), ("two objects", 2)):
        rows = {s: np.array([len(sc["objects"]) == objects for sc in scenes[s]]) for s in feats}
        names = ("",) if objects == 1 else ("first ", "second ")
        targets = {}
        for j, name in enumerate(names):
            for k in ("color", "shape", "size"):
                targets[name + k] = lambda sc, j=j, k=k: sc["objects"][j][k]
        if objects == 2:
            targets["relation"] = lambda sc: sc["relation"]
        scores = {}
        for name, target in targets.items():
            y = {s: np.array([target(sc) for sc, keep in zip(scenes[s], rows[s]) if keep])
                 for s in feats}
            probe = LogisticRegression(max_iter=3000, C=0.1).fit(X["train"][rows["train"]],
                                                                 y["train"])
            scores[name] = round(float(probe.score(X["val"][rows["val"]], y["val"])), 3)
        result[kind] = dict(scores, train_scenes=int(rows["train"].sum()),
                            val_scenes=int(rows["val"].sum()))
    if args.features == "fc7":
        result["blind baseline"] = blind_baseline()
    print(json.dumps(result, indent=1))


def probe_boxes():
    """Linear probes of each box's feature (the object it holds), train boxes -> test boxes."""
    data = load_coco_data(SAMPLE_DIR, features="boxes")

    def boxes(split):
        X, y = [], {k: [] for k in ("color", "shape", "size")}
        regions = data[f"{split}_features"]
        for i in range(len(regions)):
            scene = make_scene(split, i)
            own = regions.mask[i]
            for feature, place in zip(regions.features[i][own].astype(np.float32),
                                      regions.geometry[i][own].astype(np.float32)):
                x0, y0, x1, y1 = place[:4] * SIZE  # the geometry is in fractions of the image
                nearest = min(scene["objects"], key=lambda o: (o["center"][0] - (x0 + x1) / 2) ** 2
                              + (o["center"][1] - (y0 + y1) / 2) ** 2)
                X.append(feature)
                for k in y:
                    y[k].append(nearest[k])
        return np.array(X), y

    (X, y), (X_test, y_test) = boxes("train"), boxes("test")
    return {k: round(float(LogisticRegression(max_iter=3000).fit(X, y[k]).score(X_test, y_test[k])),
                     4) for k in y} | {"train_boxes": len(X), "test_boxes": len(X_test)}


if __name__ == "__main__":
    main()
