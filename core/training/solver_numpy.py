"""NumpySolver: trains a numpy model (CaptioningRNN, AttentionLSTM) with the update rules of
core/training/optim.py."""
import numpy as np

from core.training import optim
from core.training.solver_base import SolverBase


class NumpySolver(SolverBase):
    """update_rule: a name in core.training.optim.UPDATE_RULES; optim_config: its hyperparameters
    (e.g. {"learning_rate": 5e-3}, the CS231n interface), copied once per parameter;
    learning_rate: sets optim_config's (default: the update rule's own, 1e-3 for adam, 1e-2 for
    the others); grad_clip, weight_decay: core.training.optim.clip_and_decay's; warmup W: step k
    of the run (from 1) takes min(1, k / W) of the rate, as the torch solver's. Other keyword
    arguments go to SolverBase (num_epochs, batch_size, lr_decay, val_samples, seed, verbose,
    on_epoch_end, ...).
    """

    # what training.py passes from its flags besides learning_rate
    OPTIONS = ("update_rule", "grad_clip", "weight_decay", "warmup")

    def __init__(self, model, data, update_rule="adam", optim_config=None, learning_rate=None,
                 grad_clip=None, weight_decay=0.0, warmup=0, **kwargs):
        super().__init__(model, data, **kwargs)
        self.grad_clip, self.weight_decay, self.warmup = grad_clip, weight_decay, warmup
        if update_rule not in optim.UPDATE_RULES:
            raise ValueError(f'unknown update rule "{update_rule}"; choose from '
                             f'{sorted(optim.UPDATE_RULES)}')
        self.update_rule = optim.UPDATE_RULES[update_rule]
        optim_config = dict(optim_config or {})
        if learning_rate is not None:
            optim_config["learning_rate"] = learning_rate
        optim_config.setdefault("learning_rate", optim.DEFAULT_LEARNING_RATES[update_rule])
        self.optim_configs = {name: dict(optim_config) for name in model.params}

    def gradients(self, features, captions, caption_weights=None, weight=1.0, dropout=True,
                  **loss_options):
        """The numpy models have no dropout: `dropout` changes nothing. loss_options: the model
        loss's own (smoothing, inputs), given only when used (the CS231n models take none)."""
        loss, grads = self.model.loss(features, captions, caption_weights, **loss_options)
        return loss, (self._average(grads, weight) if self.dist.enabled else grads)

    def apply(self, gradients):
        gradients = optim.clip_and_decay(gradients, self.model.params, self.grad_clip,
                                         self.weight_decay)
        # step k of the run (this one included) at k / warmup of the rate; the schedule's rate is
        # what the configs keep
        factor = min(1.0, (len(self.history["loss"]) + 1) / self.warmup) if self.warmup else 1.0
        for name, w in self.model.params.items():
            config = self.optim_configs[name]
            rate = config["learning_rate"]
            w, config = self.update_rule(w, gradients[name], dict(config,
                                                                  learning_rate=rate * factor))
            self.optim_configs[name] = dict(config, learning_rate=rate)
            self.model.params[name] = w

    def _average(self, grads, weight):
        """Each rank's gradients times its weight, summed over the ranks in one all_reduce of one
        flat buffer (a CPU tensor sharing the numpy memory) -> the averaged gradients."""
        names = list(grads)
        flat = np.concatenate([grads[k].ravel() for k in names])
        flat *= weight
        self.dist.all_reduce_sum(flat)
        out, start = {}, 0
        for k in names:
            out[k] = flat[start:start + grads[k].size].reshape(grads[k].shape)
            start += grads[k].size
        return out

    def _eval_loss(self, features, captions):
        return self.model.loss(features, captions)[0]

    def _decay_lr(self, factor):
        for config in self.optim_configs.values():
            config["learning_rate"] *= factor

    def _optimizer_state(self):
        return {name: dict(config) for name, config in self.optim_configs.items()}

    @staticmethod
    def check_optimizer_state(model, state):
        """ValueError when a saved optimizer state does not fit the model's weights: other parameter
        names, moments of another shape or not finite, settings that are not finite numbers >= 0."""
        if not isinstance(state, dict) or set(state) != set(model.params):
            names = sorted(state) if isinstance(state, dict) else state
            raise ValueError(f"optimizer state for parameters {names}, expected "
                             f"{sorted(model.params)}")
        for name, config in state.items():
            if not isinstance(config, dict) or "learning_rate" not in config:
                raise ValueError(f"optimizer state {name} has no learning_rate")
            for key, value in config.items():
                if isinstance(value, np.ndarray):
                    if value.shape != model.params[name].shape or not np.issubdtype(value.dtype,
                                                                                    np.floating) \
                            or not np.isfinite(value).all():
                        raise ValueError(f"optimizer state {name}.{key} of shape {value.shape} "
                                         f"does not fit the weight's {model.params[name].shape}, "
                                         f"or is not finite floats ({value.dtype})")
                elif (isinstance(value, bool) or not isinstance(value, (int, float))
                      or not np.isfinite(value) or value < 0):
                    raise ValueError(f"optimizer setting {name}.{key} is {value!r}")

    def _load_optimizer_state(self, state):
        self.optim_configs = {name: {k: v.copy() if isinstance(v, np.ndarray) else v
                                     for k, v in config.items()}
                              for name, config in state.items()}

    @property
    def learning_rate(self):
        return next(iter(self.optim_configs.values()))["learning_rate"]


CaptioningSolver = NumpySolver  # the CS231n and original repository's name
