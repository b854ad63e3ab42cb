"""Launched by tests/test_distributed.py under torchrun: a UserError that rank 1 alone meets in the
middle of training (as a NaN row of a region file read per minibatch that only its share of the batch
holds) must stop both ranks with that message, said once by rank 0.

    python -m torch.distributed.run --nproc_per_node 2 tests/rank_error_worker.py DATA_DIR
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.coco_utils import load_coco_data  # noqa: E402
from core.util import distributed  # noqa: E402
from core.util.cli import exit_after, user_errors  # noqa: E402
from core.util.errors import UserError  # noqa: E402
from tests.test_distributed import resume_solver  # noqa: E402


def main():
    ctx = distributed.init("cpu")
    data = load_coco_data(sys.argv[1])
    solver = resume_solver(data, 10, ctx)
    data = solver.data
    features = data["train_features"]

    class DamagedForRank1:  # as a region file read per minibatch, a damaged row in rank 1's share
        def __getitem__(self, rows):
            if ctx.rank == 1 and solver.iteration == 2:
                raise UserError("train2014_vgg16_boxes_pca.h5: feature row 7 holds NaN or inf values")
            return features[rows]

    data["train_features"] = DamagedForRank1()
    try:
        with user_errors("rank_error_worker.py"):
            solver.train()
    finally:
        ctx.close()


if __name__ == "__main__":
    exit_after(main)
