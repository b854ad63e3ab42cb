"""Transformer training speed at full-COCO size on a GPU, with and without mixed precision.

Usage (on a machine with CUDA):
    python benchmarks/gpu_transformer.py                      # batch 100 and 512, --amp off and on
    python benchmarks/gpu_transformer.py --device cpu --small --max_iters 3   # a CPU dry run

Generates data in the CS231n layout at COCO's sizes (random content) in a temporary folder
(or uses --data_dir), runs `training.py --model transformer --epochs 1 --max_iters N` for each
setting, and prints one JSON object with the device name and iterations per second.
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.datasets.make_fake_coco import FULL_SIZE, write_fake_coco  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--data_dir", default=None,
                        help="use this dataset instead of generating one")
    parser.add_argument("--small", action="store_true",
                        help="generate a tiny dataset instead of COCO's sizes")
    parser.add_argument("--max_iters", type=int, default=200,
                        help="training iterations timed per setting")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[100, 512],
                        help="batch sizes to time")
    args = parser.parse_args(argv)

    import torch

    result = {"device": args.device, "torch": torch.__version__,
              "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda")
              else "cpu", "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            sizes = {} if args.small else dict(train_images=FULL_SIZE["train_images"],
                                               val_images=FULL_SIZE["val_images"],
                                               train_captions=FULL_SIZE["train_captions"],
                                               val_captions=FULL_SIZE["val_captions"],
                                               vocab_size=1004, num_classes=500)
            data_dir = write_fake_coco(Path(tmp) / "data", **sizes)
        for batch in args.batch_sizes:
            for amp in (False, True):
                cmd = [sys.executable, str(ROOT / "training.py"), "--model", "transformer",
                       "--data_dir", str(data_dir),
                       "--device", args.device, "--epochs", "1", "--max_iters", str(args.max_iters),
                       "--batch_size", str(batch), "--quiet", "--checkpoint",
                       str(Path(tmp) / "t.pt"),
                       "--out_dir", str(Path(tmp) / "out")] + (["--amp"] if amp else [])
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"training.py failed for batch {batch}, amp {amp}:\n{done.stderr}")
                its = float(re.search(r"([\d.]+) training iterations per second",
                                      done.stdout).group(1))
                result["runs"].append({"batch_size": batch, "amp": amp, "iterations_per_s": its,
                                       "captions_per_s": round(its * batch, 1)})
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
