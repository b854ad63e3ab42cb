"""TorchSolver: trains a torch model (CaptioningTransformer) with torch.optim.Adam."""
import torch

from core.training.solver_base import SolverBase


class TorchSolver(SolverBase):
    """learning_rate: Adam's step size; device: where the model and batches live;
    amp: mixed precision (bfloat16 autocast) on CUDA; grad_clip: the gradients' global L2 norm
    at most this (clip_grad_norm_); weight_decay: Adam's (L2, on every weight); warmup: the
    learning rate rises linearly over this many first steps of the run (step k of W trains at
    k / W of it). Other keyword arguments go to SolverBase (num_epochs, batch_size, lr_decay,
    val_samples, seed, verbose, on_epoch_end, ...).
    """

    # what training.py passes from its flags besides learning_rate
    OPTIONS = ("device", "amp", "grad_clip", "weight_decay", "warmup")

    def __init__(self, model, data, learning_rate=1e-3, device="cpu", amp=False, grad_clip=None,
                 weight_decay=0.0, warmup=0, **kwargs):
        super().__init__(model, data, **kwargs)
        self.device = torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.grad_clip, self.warmup = grad_clip, warmup
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad],
                                          lr=learning_rate, weight_decay=weight_decay)
        self.base_lr = learning_rate  # decayed after each epoch; warm-up scales it per step
        # under torchrun the training forward goes through DistributedDataParallel, which averages
        # the gradients in backward(); validation and decoding use the model itself
        self.net = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _tensors(self, features, captions):
        """features (B, D) float32 or Regions, captions (B, L) int arrays -> what the model reads
        (tensors on the solver's device) and a tensor."""
        return (self.model.inputs(features),
                torch.as_tensor(captions, dtype=torch.long).to(self.device, non_blocking=True))

    def _loss(self, net, features, captions, caption_weights=None, smoothing=0.0):
        """Loss of a minibatch through net's forward (scalar tensor), under bfloat16 autocast when
        amp is on."""
        features, captions = self._tensors(features, captions)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.model.loss_from_scores(net(features, captions[:, :-1]), captions,
                                               caption_weights, smoothing)

    def gradients(self, features, captions, caption_weights=None, weight=1.0, dropout=True,
                  smoothing=0.0):
        """-> (loss, None): the gradients are left in the parameters' .grad, where `apply` reads
        them. dropout False: the model in eval mode (self-critical steps differentiate the captions
        they sampled in that mode)."""
        self.model.train(dropout)
        loss = self._loss(self.net, features, captions, caption_weights, smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages the ranks' gradients equally: scaling by world_size * weight makes that the
        # weighted average (the plain gradient in one process)
        (loss * (self.dist.world_size * weight) if self.dist.enabled else loss).backward()
        return loss.item(), None

    def apply(self, gradients):
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], self.grad_clip)
        if self.warmup:  # step k of the run (this one included) at k / warmup of the rate
            factor = min(1.0, (len(self.history["loss"]) + 1) / self.warmup)
            for group in self.optimizer.param_groups:
                group["lr"] = self.base_lr * factor
        self.optimizer.step()

    @torch.no_grad()
    def _eval_loss(self, features, captions):
        self.model.eval()
        return self._loss(self.model, features, captions).item()

    def _decay_lr(self, factor):
        self.base_lr *= factor
        for group in self.optimizer.param_groups:
            group["lr"] *= factor

    def _optimizer_state(self):
        state = {"adam": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    @staticmethod
    def check_optimizer_state(model, state):
        """ValueError when a saved optimizer state does not fit the model's trainable parameters:
        no Adam state or RNG state, moments naming another parameter, of another shape, not
        floating point or not finite."""
        if not isinstance(state, dict) or not {"adam", "torch_rng"} <= set(state) \
                or not isinstance(state["adam"], dict):
            raise ValueError("its optimizer state lacks adam or torch_rng")
        params = [p for p in model.parameters() if p.requires_grad]
        for index, moments in state["adam"].get("state", {}).items():
            if not (isinstance(index, int) and 0 <= index < len(params)
                    and isinstance(moments, dict)):
                raise ValueError(f"its Adam state names parameter {index!r} of {len(params)}")
            for key in ("exp_avg", "exp_avg_sq"):
                value = moments.get(key)
                if not isinstance(value, torch.Tensor) or value.shape != params[index].shape \
                        or not value.is_floating_point() or not bool(torch.isfinite(value).all()):
                    raise ValueError(f"its Adam {key} of parameter {index} does not fit the "
                                     f"weight's shape {tuple(params[index].shape)} or is not "
                                     f"finite")
        if not isinstance(state["torch_rng"],
                          torch.Tensor) or state["torch_rng"].dtype != torch.uint8:
            raise ValueError("its torch RNG state is not a byte tensor")

    def _load_optimizer_state(self, state):
        self.optimizer.load_state_dict(state["adam"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        steps = len(self.history["loss"])  # the saved rate is the last step's, warm-up included
        factor = min(1.0, steps / self.warmup) if self.warmup and steps else 1.0
        self.base_lr = self.optimizer.param_groups[0]["lr"] / factor

    @property
    def learning_rate(self):
        """The rate of the schedule (after the epochs' decay), before any warm-up scales it."""
        return self.base_lr


CaptioningSolverTransformer = TorchSolver  # the original repository's name
