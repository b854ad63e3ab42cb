"""Train a captioning decoder (RNN, LSTM, GRU or Transformer) on precomputed image features.

Usage:
    python training.py --model rnn
    python training.py --model lstm --num_samples 300    # recipe small-data: overfit a subset
    python training.py --model transformer --device cuda
    python training.py --resume lstm_checkpoint_last.npz [--epochs 20]
    python training.py --model lstm --scst --init_from lstm_checkpoint.npz   # recipe scst
    torchrun --nproc_per_node 4 training.py --model transformer --device cuda  # batch per process

Reads the data, builds (or loads) the model, trains it with its solver, and writes the checkpoint
(--checkpoint, final weights), *_best.* next to it (by validation loss, or by CIDEr with
--eval_every), the resumable *_last.* after every epoch and on Ctrl-C/SIGTERM, and in --out_dir
the loss plot <stem>_loss.png and the history <stem>_history.json, named after the checkpoint's stem
(lstm_checkpoint_loss.png), so that runs sharing an --out_dir keep their own files. All writes are
atomic; a second run writing the same checkpoint is refused. Every flag and its default: --help.
"""
import sys

from core.training.config import settle
from core.util.cli import exit_after, interrupts, out_of_memory_errors, user_errors


def main(argv=None):
    with interrupts("training.py", "the files written before (checkpoints of finished epochs) are "
                    "kept"), user_errors("training.py"):
        settled = settle(argv)  # every setting, decided once (--help and flag errors stop here)
        from core.training.run import run  # the training stack, torch included: only now

        with out_of_memory_errors():
            code = run(settled)
    if code:
        sys.exit(code)
    return 0


if __name__ == "__main__":
    exit_after(main)
