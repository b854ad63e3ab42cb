"""One code path for one process and many: torch.distributed under torchrun, nothing otherwise.

    torchrun --nproc_per_node K training.py ...       # K processes on one machine
    torchrun --nnodes N --nproc_per_node K --rdzv_endpoint HOST:PORT training.py ...

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; `init` then joins the process group (NCCL for
CUDA, gloo on the CPU) and returns a `Context`. Without torchrun (or with one process) the
Context is the single-process one and every collective below returns its input. The numpy
decoders' gradients travel as CPU tensors that share memory with the arrays, over a gloo group
(also when the main backend is NCCL).
"""
import os

import numpy as np
import torch
import torch.distributed as dist

from core.util.cli import exit_after  # noqa: F401  (the scripts' and workers' import path)
from core.util.errors import UserError


class Context:
    """rank, world_size, local_rank of this process; group: the gloo group for CPU collectives."""

    def __init__(self, rank=0, world_size=1, local_rank=0, group=None):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.group = group

    @property
    def enabled(self):
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self):
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0

    def all_reduce_sum(self, array):
        """Sum a contiguous numpy array over all processes, in place -> the array."""
        if self.enabled:
            dist.all_reduce(torch.from_numpy(array), group=self.group)
        return array

    def broadcast(self, obj):
        """Rank 0's `obj` (any picklable value) on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj):
        """Every process's `obj` as a list in rank order on rank 0; None on the others."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def all_gather(self, obj):
        """Every process's `obj` (any picklable value) as a list in rank order, on every process."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def agreed(self, set_up):
        """Run set_up() on every process and agree on its user errors -> its result.

        A UserError on any rank (its data folder missing on that machine, rank 0's refused lock)
        stops every rank with one UserError naming the ranks that met each message, instead of the
        others running on into a collective that never completes."""
        if not self.enabled:
            return set_up()
        try:
            result, error = set_up(), None
        except UserError as e:
            result, error = None, str(e)
        errors = self.all_gather(error)
        if any(errors):
            by_message = {}
            for rank, message in enumerate(errors):
                if message:
                    by_message.setdefault(message, []).append(str(rank))
            raise UserError("; ".join(f"on rank{'s' if len(r) > 1 else ''} {', '.join(r)} of "
                                      f"{self.world_size}: {m}"
                                      for m, r in by_message.items()))
        return result

    def local_device(self, device):
        """The device this process uses for `device`: its own GPU (cuda:LOCAL_RANK) under
        torchrun."""
        gpu = self.enabled and str(device).startswith("cuda")
        return f"cuda:{self.local_rank}" if gpu else device

    def shard(self, items):
        """This process's share of a sequence: items[rank::world_size]."""
        return items[self.rank::self.world_size]

    def close(self):
        """Leave the process group (no-op for one process). No barrier: a rank that failed must not
        wait here for ranks still inside a collective."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init(device_type="cpu"):
    """Join the process group torchrun describes -> Context (the single-process one without
    torchrun).

    device_type: "cuda" uses NCCL for the model's collectives (and a gloo group beside it),
    anything else gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Context()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return Context(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")), group)


def unshard(parts, total):
    """Inverse of Context.shard: parts (list in rank order of arrays of items[r::K]) -> the (total,
    ...) array in the original order."""
    out = np.empty((total,) + parts[0].shape[1:], dtype=parts[0].dtype)
    for r, part in enumerate(parts):
        out[r::len(parts)] = part
    return out
