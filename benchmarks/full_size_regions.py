"""Object regions at full COCO size: can training read 36 boxes of 2048-d per image for 123,287
images (18 GB of float16 train + val) on a machine with less memory than that?

Usage:
    python -m core.datasets.make_fake_coco DIR --full_size --boxes 36 2048   # ~27 GB on disk
    python benchmarks/full_size_regions.py DIR [--batches 50]

Prints, for the boxes of DIR: whether load_coco_data reads them per minibatch (a RegionFile, when
a split's file is larger than a quarter of the memory), the time to open the data, the loader's
batches per second (the features of 100 random training captions, as the solver draws them), the
Up-Down training step's iterations per second on those batches (H = 512, W = 256, A = 256, numpy,
the loop's own update), and the peak resident memory of the process.
"""
import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.coco_utils import RegionFile, load_coco_data  # noqa: E402
from core.model.registry import build_model  # noqa: E402
from core.training.optim import adam  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir", help="a dataset with box regions (make_fake_coco --boxes)")
    p.add_argument("--batches", type=int, default=50, help="batches to time the loader on")
    p.add_argument("--steps", type=int, default=10, help="training steps to time")
    p.add_argument("--batch_size", type=int, default=100, help="captions per batch")
    args = p.parse_args(argv)
    begin = time.perf_counter()
    data = load_coco_data(args.data_dir, features="boxes")
    opened = time.perf_counter() - begin
    features = data["train_features"]
    rng = np.random.default_rng(0)
    rows = [rng.choice(len(data["train_captions"]), args.batch_size, replace=False)
            for _ in range(args.batches)]
    begin = time.perf_counter()
    batches = [features[data["train_image_idxs"][r]] for r in rows]
    loader = args.batches / (time.perf_counter() - begin)
    model = build_model("updown", data, {"hidden_dim": 512, "wordvec_dim": 256,
                                         "attention_dim": 256}, seed=0)
    configs = {k: {"learning_rate": 1e-4} for k in model.params}
    begin = time.perf_counter()
    for k in range(args.steps):
        _, grads = model.loss(batches[k].astype(np.float32),
                              data["train_captions"][rows[k]])
        for name in model.params:
            model.params[name], configs[name] = adam(model.params[name], grads[name],
                                                     configs[name])
    steps = args.steps / (time.perf_counter() - begin)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    on_disk = sum(f.stat().st_size for f in Path(args.data_dir).glob("*_boxes_pca.h5")) / 2**30
    print(f"box files {on_disk:.1f} GiB, {features.shape} per split of train; read per minibatch: "
          f"{isinstance(features, RegionFile)}")
    print(f"open {opened:.1f} s | loader {loader:.1f} batches/s | Up-Down step {steps:.2f} "
          f"iterations/s | peak resident {peak:.2f} GiB")


if __name__ == "__main__":
    main()
