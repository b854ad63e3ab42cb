"""The best checkpoint of a run: by validation loss, or by CIDEr on a fixed set of validation
images."""
import numpy as np

from core.evaluation.metrics import caption_split, references_by_image, score_captions


class BestCheckpoint:
    """Writes the model to `path` after each epoch that is the best so far.

    save: callable(model, path, info) that writes a checkpoint
    (core.model.checkpoint.save_checkpoint); extra: dict stored with it (info adds epoch, val_loss
    and, when scored, val_bleu4/val_cider). eval_every 0: the best epoch has the lowest
    teacher-forced validation loss. eval_every K:
    every K epochs `eval_images` validation images (a fixed, seeded subset) are captioned
    greedily and the best of those epochs has the highest CIDEr. The last epoch (final_epoch)
    is scored too and reported, but chooses the best only when it is a multiple of K or no
    multiple was scored: so a run resumed for more epochs scores and chooses exactly as a
    straight run of all its epochs.
    `metrics` (eval_epoch, val_bleu4, val_cider) holds every score for the history.
    Use `on_epoch_end` as the training loop's callback.
    """

    def __init__(self, path, save, extra=None, data=None, eval_every=0, eval_images=500,
                 final_epoch=None, seed=0, verbose=True):
        self.path, self.save, self.extra = path, save, dict(extra or {})
        self.eval_every, self.final_epoch, self.verbose = eval_every, final_epoch, verbose
        self.metrics = {"eval_epoch": [], "val_bleu4": [], "val_cider": []}
        self.best = None  # the info saved with the best checkpoint
        # the epoch scored only because it was the last (not a multiple of eval_every)
        self.final_only = None
        if eval_every:
            images = np.unique(data["val_image_idxs"])
            rng = np.random.default_rng(seed)
            self.data = data
            self.images = np.sort(rng.choice(images, size=min(eval_images, len(images)),
                                             replace=False))
            refs = references_by_image(data["val_captions"], data["val_image_idxs"],
                                       data["idx_to_word"])
            self.refs = {int(i): refs[int(i)] for i in self.images}

    @classmethod
    def from_config(cls, path, save, extra, data, config):
        """The tracker of a settled run: config, a RunConfig read whole (--eval_every,
        --eval_images, --epochs, --seed, --quiet)."""
        return cls(path, save, extra, data, config.eval_every, config.eval_images,
                   final_epoch=config.epochs, seed=config.seed, verbose=not config.quiet)

    def score_start(self, model):
        """Score the model a run starts from (the checkpoint self-critical training fine-tunes): the
        first point of the val CIDEr curve, `metrics["start"]`; it chooses nothing."""
        predictions = caption_split(model, self.data, "val", images=self.images, progress=False)
        scores = score_captions(predictions, self.refs, meteor=False)
        self.metrics["start"] = {"val_bleu4": scores["BLEU-4"], "val_cider": scores["CIDEr"]}
        if self.verbose:
            print(f"before training: on {len(self.images)} val images BLEU-4 "
                  f"{scores['BLEU-4']:.4f} CIDEr {scores['CIDEr']:.4f}", flush=True)

    def state(self):
        """JSON-able state for a resumable checkpoint."""
        return {"metrics": self.metrics, "best": self.best, "final_only": self.final_only}

    def load_state(self, state):
        """Continue from `state()`; the score of a last epoch that a straight run would not have
        scored (the run now goes on past it) is dropped."""
        self.metrics = {k: (list(v) if isinstance(v, list) else v)
                        for k, v in state["metrics"].items()}
        self.best = state["best"]
        final_only = state.get("final_only")
        dropped = final_only is not None and final_only != self.final_epoch
        if dropped and self.metrics["eval_epoch"][-1:] == [final_only]:
            for key in ("eval_epoch", "val_bleu4", "val_cider"):
                self.metrics[key] = self.metrics[key][:-1]
            if self.best is not None and self.best["epoch"] == final_only:
                # it stood in for the best only while no multiple of eval_every had been scored
                self.best = None

    def on_epoch_end(self, solver, epoch):
        """After an epoch's validation: score it if due and save the model when it is the best so
        far."""
        info = dict(self.extra, epoch=epoch, val_loss=solver.history["val_loss"][-1])
        if not self.eval_every:
            if self.best is None or info["val_loss"] < self.best["val_loss"]:
                self._keep(solver.model, info)
            return
        chooses = epoch % self.eval_every == 0
        if not chooses and epoch != self.final_epoch:
            return
        predictions = caption_split(solver.model, self.data, "val", images=self.images,
                                    progress=False)
        scores = score_captions(predictions, self.refs, meteor=False)
        for key, name in (("val_bleu4", "BLEU-4"), ("val_cider", "CIDEr")):
            self.metrics[key].append(scores[name])
        self.metrics["eval_epoch"].append(epoch)
        self.final_only = None if chooses else epoch
        # the last epoch stands in for the best only when no multiple of eval_every was scored
        better = self.best is None or (chooses and scores["CIDEr"] > self.best["val_cider"])
        if self.verbose:
            print(f"epoch {epoch}: on {len(self.images)} val images BLEU-4 {scores['BLEU-4']:.4f} "
                  f"CIDEr {scores['CIDEr']:.4f}" + ("  (best)" if better else ""), flush=True)
        if better:
            self._keep(solver.model,
                       dict(info, val_bleu4=scores["BLEU-4"], val_cider=scores["CIDEr"]))

    def _keep(self, model, info):
        self.best = info
        self.save(model, self.path, info)

    def patience_rule(self, patience):
        """The loop's stop_early rule: stop once `patience` epochs (with eval_every, scored
        epochs) passed after the best one without beating it -> callable(solver) -> str or None."""
        def stop_early(solver):
            if self.best is None:
                return None
            best = self.best["epoch"]
            since = (sum(e > best for e in self.metrics["eval_epoch"]) if self.eval_every
                     else solver.epoch - best)
            if since < patience:
                return None
            unit = "scored epochs" if self.eval_every else "epochs"
            return (f"{since} {unit} after the best (epoch {best}) without a better one "
                    f"(--patience {patience})")
        return stop_early

    def describe(self):
        """One line about the best epoch, e.g. "epoch 4, val loss 12.3456"."""
        if self.best is None:
            return "none"
        if "val_cider" in self.best:
            return f"epoch {self.best['epoch']}, CIDEr {self.best['val_cider']:.4f}"
        return f"epoch {self.best['epoch']}, val loss {self.best['val_loss']:.4f}"
