"""Count the mistakes of predicted captions of the bundled sample dataset, by attribute.

Usage:
    python inference.py --model lstm --eval                     # writes outputs/lstm_checkpoint_test_greedy_eval.json
    python benchmarks/caption_errors.py outputs/lstm_checkpoint_test_greedy_eval.json [more.json ...]

Each val or test image's scene is known (core/datasets/make_sample_dataset.py rebuilds it from its
index), and the grammar's phrasings say which object stands where, so a prediction can be read
back into objects in their slots (left/above first) and compared: objects of the wrong shape,
colour or size, captions with the wrong relation (the other axis, or the wrong number of
objects). Prints one JSON object per file.
"""
import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.datasets.make_sample_dataset import COLORS, RADII, SHAPES, make_scene  # noqa: E402

OBJECT = re.compile(rf"({'|'.join(RADII)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})")
# phrase -> (axis, whether the first object named takes the first slot: left, or above)
RELATIONS = (("to its right", ("horizontal", True)), ("below it", ("vertical", True)),
             ("to the left of", ("horizontal", True)), ("to the right of", ("horizontal", False)),
             ("above", ("vertical", True)), ("below", ("vertical", False)))


def read_caption(caption):
    """"a small red circle to the left of a large blue square" -> (objects in slot order as
    (size, colour, shape) tuples, axis "horizontal"/"vertical" or None)."""
    objects = OBJECT.findall(caption)
    for phrase, (axis, first_first) in RELATIONS:
        if phrase in caption:
            return (objects if first_first else objects[::-1]), axis
    return objects, None


def scene_slots(scene):
    """A scene -> (objects in slot order as (size, colour, shape), axis or None)."""
    objects = [(o["size"], o["color"], o["shape"]) for o in scene["objects"]]
    axis = {"left": "horizontal", "above": "vertical", None: None}[scene["relation"]]
    return objects, axis


def count_errors(predictions, split="val"):
    """[{"image": i, "caption": str, "references": [...]}] of the split's images -> totals of
    mistakes (the same for shifted or recoloured copies of its scenes, whose objects keep their
    slots)."""
    totals = {"captions": 0, "exact": 0, "wrong_shape": 0, "wrong_colour": 0, "wrong_size": 0,
              "wrong_relation": 0, "wrong_object_count": 0}
    for p in predictions:
        totals["captions"] += 1
        totals["exact"] += p["caption"] in p["references"]
        want, want_axis = scene_slots(make_scene(split, p["image"]))
        got, got_axis = read_caption(p["caption"])
        if len(got) != len(want):
            totals["wrong_object_count"] += 1
        elif len(want) == 2 and got_axis != want_axis:
            totals["wrong_relation"] += 1
        for g, w in zip(got, want):
            for k, name in enumerate(("size", "colour", "shape")):
                totals[f"wrong_{name}"] += g[k] != w[k]
    return totals


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+",
                        help="*_eval.json files of the sample dataset's val or test split "
                                                   "written by inference.py --eval")
    args = parser.parse_args(argv)
    for path in args.reports:
        report = json.loads(Path(path).read_text())
        if report.get("split") not in ("val", "test"):
            parser.exit(2, f"{path}: only val- or test-split reports of the sample dataset can be "
                           f"checked\n")
        print(json.dumps(dict(count_errors(report["predictions"], report["split"]),
                              report=str(path), beam_size=report["beam_size"])))


if __name__ == "__main__":
    main()
