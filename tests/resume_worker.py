"""Launched by tests/test_distributed.py under torchrun, to resume across process counts:

    python -m torch.distributed.run --nproc_per_node 2 tests/resume_worker.py stop DATA_DIR BATCH STEPS LAST.npz
        trains a tiny rnn with BATCH per process, has rank 0 receive SIGTERM during step STEPS of
        epoch 1 (a preempted job) and saves the resumable state the loop writes on a stop;
    python -m torch.distributed.run --nproc_per_node 2 tests/resume_worker.py resume DATA_DIR BATCH LAST.npz OUT.npz
        resumes LAST.npz with BATCH per process to the end and saves the final weights and history.
"""
import os
import signal
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.util import distributed  # noqa: E402
from core.model.checkpoint import save_training_state  # noqa: E402
from core.training.state import load_training_state  # noqa: E402
from core.data.coco_utils import load_coco_data  # noqa: E402
from tests.test_distributed import resume_solver  # noqa: E402
from tests.helpers import weights  # noqa: E402


def main():
    mode, data_dir, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ctx = distributed.init("cpu")
    data = load_coco_data(data_dir)
    if mode == "stop":
        steps, last = int(sys.argv[4]), sys.argv[5]
        solver = resume_solver(data, batch, ctx, save_state=lambda s: save_training_state(s, last))
        gradients, calls = solver.gradients, []

        def gradients_then_signal(*batch, **kw):
            calls.append(1)
            if ctx.is_main and len(calls) == steps:
                signal.raise_signal(signal.SIGTERM)
            return gradients(*batch, **kw)

        solver.gradients = gradients_then_signal
        solver.train()
        assert solver.stop_requested
    else:
        last, out = sys.argv[4], sys.argv[5]
        model, _, state = load_training_state(last)
        solver = resume_solver(data, batch, ctx, model=model)
        solver.load_training_state(state)
        solver.train()
        if ctx.is_main:
            np.savez(out, loss=np.array(solver.history["loss"]), **weights(solver.model))
    ctx.close()


if __name__ == "__main__":
    distributed.exit_after(main)
