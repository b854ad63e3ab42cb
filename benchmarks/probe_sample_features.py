"""How much of each scene the sample dataset's features keep: linear probes on the PCA features.

Usage:
    python benchmarks/probe_sample_features.py

Fits a logistic regression per attribute (colour, shape and size of the first-described
object, and the relation) on the train features and prints val accuracy as JSON, separately
for one-object and two-object scenes. Chance is 1/6 for colour, 1/4 for shape and
relation, 1/2 for size.
"""
import json
import sys
from pathlib import Path

import h5py
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.datasets.make_sample_dataset import SAMPLE_DIR, make_scene  # noqa: E402


def main():
    feats = {s: h5py.File(SAMPLE_DIR / f"{s}2014_vgg16_fc7_pca.h5", "r")["features"][()] for s in ("train", "val")}
    scenes = {s: [make_scene(s, i) for i in range(len(feats[s]))] for s in feats}
    scaler = StandardScaler().fit(feats["train"])
    X = {s: scaler.transform(feats[s]) for s in feats}
    result = {}
    for kind, objects in (("one object", 1), ("two objects", 2)):
        rows = {s: np.array([len(sc["objects"]) == objects for sc in scenes[s]]) for s in feats}
        targets = {k: (lambda sc, k=k: sc["objects"][0][k]) for k in ("color", "shape", "size")}
        if objects == 2:
            targets["relation"] = lambda sc: sc["relation"]
        scores = {}
        for name, target in targets.items():
            y = {s: np.array([target(sc) for sc, keep in zip(scenes[s], rows[s]) if keep]) for s in feats}
            probe = LogisticRegression(max_iter=3000, C=0.1).fit(X["train"][rows["train"]], y["train"])
            scores[name] = round(float(probe.score(X["val"][rows["val"]], y["val"])), 3)
        result[kind] = dict(scores, train_scenes=int(rows["train"].sum()), val_scenes=int(rows["val"].sum()))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
