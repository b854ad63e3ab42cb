"""Launched by tests/test_distributed.py under torchrun: trains a tiny model of every type (and two
self-critically, see CASES) on every rank, checks after every step that the weights are identical on all ranks, and has rank 0
save the final weights (npz) for the test to compare with a one-process run.

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_worker.py DATA_DIR OUT.npz
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.util import distributed  # noqa: E402
from core.data.coco_utils import load_coco_data  # noqa: E402
from tests.test_distributed import BATCH, CASES, make_solver, weights  # noqa: E402


def main():
    data_dir, out = sys.argv[1], sys.argv[2]
    ctx = distributed.init("cpu")
    data = {kind: load_coco_data(data_dir, features=kind) for kind in ("fc7", "grid", "boxes")}
    saved, mismatches = {}, []
    for name, kind, scst in CASES:
        case = f"{name}-{kind}{'_scst' if scst else ''}"
        solver = make_solver(name, data[kind], BATCH, ctx, scst=scst)
        apply = solver.apply

        def checked_apply(gradients, solver=solver, apply=apply, case=case):
            apply(gradients)
            mine = weights(solver.model)
            everyone = ctx.gather(mine)
            if ctx.is_main:
                for other in everyone[1:]:
                    mismatches.extend(f"{case} {k}" for k in mine if not np.array_equal(mine[k], other[k]))

        solver.apply = checked_apply
        solver.train()
        saved.update({f"{case}.{k}": v for k, v in weights(solver.model).items()})
        saved[f"{case}.loss"] = np.array(solver.history["loss"])
        if scst:
            saved[f"{case}.reward"] = np.array(solver.history["reward"])
    if ctx.is_main:
        np.savez(out, mismatches=np.array(mismatches, dtype=str), **saved)
    ctx.close()


if __name__ == "__main__":
    distributed.exit_after(main)
