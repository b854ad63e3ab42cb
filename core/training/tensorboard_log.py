"""Optional TensorBoard logging of a training run (`training.py --tensorboard DIR`).

The JSON history stays the record; this only mirrors it as scalars: after each epoch, that epoch's
per-iteration values (the loss, and the step strategy's own, e.g. the self-critical reward and
baseline) at their global iteration numbers, and the per-epoch train and val loss, learning rate
and, when scored, the val BLEU-4 and CIDEr.
"""


def summary_writer(log_dir):
    """torch's SummaryWriter for log_dir, or None when the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir)


class TensorBoardLog:
    """writer: an object with add_scalar(tag, value, step) and flush() (a SummaryWriter); scores: an
    object whose `metrics` dict (eval_epoch, val_bleu4, val_cider) holds the val scores, e.g. the
    core.training.best.BestCheckpoint of the run. Use `on_epoch_end` as a callback after the best
    checkpoint's."""

    def __init__(self, writer, scores=None):
        self.writer, self.scores = writer, scores

    def on_epoch_end(self, solver, epoch):
        """Write the epoch that just ended."""
        history, done = solver.history, solver.iteration  # iterations of this epoch
        first = len(history["loss"]) - done
        for key in ("loss", *solver.step_rule.history_keys):
            for step, value in enumerate(history[key][first:], first + 1):
                self.writer.add_scalar(f"iteration/{key}", value, step)
        for key in ("train_loss", "val_loss", "learning_rate"):
            self.writer.add_scalar(f"epoch/{key}", history[key][-1], epoch)
        metrics = self.scores.metrics if self.scores is not None else {"eval_epoch": []}
        if metrics["eval_epoch"][-1:] == [epoch]:
            self.writer.add_scalar("epoch/val_bleu4", metrics["val_bleu4"][-1], epoch)
            self.writer.add_scalar("epoch/val_cider", metrics["val_cider"][-1], epoch)
        self.writer.flush()


def epoch_callbacks(best, log_dir, say=print):
    """The callback after each epoch of a run: the best checkpoint's, then (with a --tensorboard
    log_dir) TensorBoard's; a missing tensorboard package is said once and skipped."""
    board = None
    if log_dir:
        writer = summary_writer(log_dir)
        if writer is None:
            say("note: --tensorboard needs the tensorboard package (pip install tensorboard): not "
                "logging to it; the JSON history is written as always")
        board = writer and TensorBoardLog(writer, best)

    def on_epoch_end(solver, epoch):
        best.on_epoch_end(solver, epoch)
        if board:
            board.on_epoch_end(solver, epoch)
    return on_epoch_end
