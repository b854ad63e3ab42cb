"""What training.py and inference.py share: flag conventions, defaults and error reporting."""
import argparse
import contextlib
import os
import sys
from pathlib import Path

from core.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is reported on one line of stderr (exit code 2)."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def is_main_process():
    """False in the processes of rank > 0 under torchrun, which leave printing to rank 0."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def user_errors(prog):
    """Turn a UserError raised inside the block into one line on stderr (from rank 0 only under
    torchrun, where every rank meets the same error) and exit code 2."""
    try:
        yield
    except UserError as e:
        if is_main_process():
            sys.stderr.write(f"{prog}: error: {e}\n")
        sys.exit(2)


def resolve_device(name):
    """--device value (None, "cpu", "cuda", "cuda:1") -> a torch device string; UserError when unavailable."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for, but PyTorch sees no CUDA device here: use --device cpu")
    try:
        torch.device(name)
    except RuntimeError:
        raise UserError(f'unknown --device "{name}": use cpu or cuda') from None
    return name


def best_checkpoint_path(path):
    """rnn_checkpoint.npz -> rnn_checkpoint_best.npz"""
    path = Path(path)
    return path.with_name(f"{path.stem}_best{path.suffix}")
