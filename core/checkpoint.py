"""Checkpoints that carry their own config and vocabulary and load without pickle.

numpy models (rnn, lstm): an .npz with one array per parameter plus `config`, a JSON string.
torch model (transformer): `torch.save({"config": dict, "state_dict": ...})`, loaded with
`weights_only=True`.
Files are written to a temporary name and renamed, so a failed save never clobbers a good file.
"""
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from core.model.rnn_model import CaptioningRNN
from core.model.transformer import CaptioningTransformer


def _atomic_write(path, write):
    """Call write(file_object) on a temporary file next to `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(model, path, extra=None):
    """Save a CaptioningRNN or CaptioningTransformer to `path`.

    extra: optional JSON-serialisable dict stored with the config (dataset name, training info).
    """
    config = dict(model.config(), **({"extra": extra} if extra else {}))
    if isinstance(model, CaptioningRNN):
        arrays = {k: np.ascontiguousarray(v) for k, v in model.params.items()}
        _atomic_write(path, lambda f: np.savez(f, config=np.array(json.dumps(config)), **arrays))
    else:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        _atomic_write(path, lambda f: torch.save({"config": config, "state_dict": state}, f))


def load_checkpoint(path, device="cpu"):
    """Rebuild a model from a checkpoint file alone -> (model, config dict).

    Raises UserError when the file is missing or is not a checkpoint of this project.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: train one with `python training.py --model ...` "
                        "or pass --checkpoint")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path} is not a checkpoint of this project ({e})") from None
    try:
        if "config.npy" in names:
            with np.load(path, allow_pickle=False) as f:
                config = json.loads(str(f["config"]))
                model = CaptioningRNN.from_config(config)
                for name, value in model.params.items():
                    if f[name].shape != value.shape:
                        raise ValueError(f"parameter {name} has shape {f[name].shape}, expected {value.shape}")
                    model.params[name] = f[name].astype(value.dtype)
        else:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            config = blob["config"]
            model = CaptioningTransformer.from_config(config)
            model.load_state_dict(blob["state_dict"])
            model.to(device)
            model.eval()
    except UserError:
        raise
    except Exception as e:  # a corrupt or foreign file: say which and why, not a traceback
        raise UserError(f"{path} is not a readable checkpoint of this project ({type(e).__name__}: {e})") from None
    return model, config


def check_checkpoint(config, path, model_type, idx_to_word):
    """Raise UserError when a loaded checkpoint does not match the --model flag or the data's vocabulary."""
    if config["model"] != model_type:
        raise UserError(f'checkpoint {path} holds a "{config["model"]}" model, not "{model_type}": '
                        f"pass --model {config['model']} or another --checkpoint")
    if list(config["idx_to_word"]) != list(idx_to_word):
        raise UserError(f"checkpoint {path} was trained with a different vocabulary "
                        f"({len(config['idx_to_word'])} words) than the data ({len(idx_to_word)} words): "
                        "use the --data_dir it was trained on")
