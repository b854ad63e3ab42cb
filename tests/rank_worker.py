"""Launched by tests/test_distributed.py under torchrun: training.py's main on every rank, where
rank R (the first argument) sees its --data_dir missing, as on a machine whose disk lacks it.

    python -m torch.distributed.run --nproc_per_node 2 tests/rank_worker.py R training.py-flags...
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import training  # noqa: E402
from core.util import distributed  # noqa: E402


def main():
    missing_on, argv = sys.argv[1], sys.argv[2:]
    if os.environ["RANK"] == missing_on:
        argv[argv.index("--data_dir") + 1] = "/nonexistent/on-this-machine"
    training.main(argv)


if __name__ == "__main__":
    distributed.exit_after(main)
