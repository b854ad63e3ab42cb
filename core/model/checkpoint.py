"""Checkpoints that carry their own config and vocabulary and load without pickle, and the
original repository's files (weights alone, read by core/model/compat.py), which load with a
vocabulary from the data.

A model's weights come from its `state_arrays()`; the format is its backend's
(core/model/registry.py). numpy backend: an .npz with one array per parameter plus `config`, a JSON
string. torch backend: `torch.save({"config": dict, "state_dict": ..., "sha256": str})`,
loaded with `weights_only=True`; the digest covers every tensor and value in the file, so a
flipped bit is found (the .npz has the zip format's CRC for that).
A resumable checkpoint (`save_training_state`) is the same file plus the solver's training
state: optimizer state, loop position, RNG state and history (arrays in the .npz, a plain
nested dict of tensors in the .pt). Files are written atomically (core/util/fileio.py).
"""
import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from core.model import compat
from core.model.compat import ORIGINAL_RNN_ARRAYS
from core.util.errors import UserError
from core.util.fileio import atomic_write
from core.model.registry import MODEL_TYPES, integer_sizes, model_type


def _digest(obj, h=None):
    """sha256 hex digest of a nested structure of dicts, lists, tensors and plain values."""
    h = hashlib.sha256() if h is None else h
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            h.update(repr(key).encode())
            _digest(obj[key], h)
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for item in obj:
            _digest(item, h)
        h.update(b"]")
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    else:
        h.update(repr(obj).encode())
    return h.hexdigest()


def _split_arrays(tree, arrays, prefix="state"):
    """Replace each numpy array leaf of a nested dict/list with {"__array__": key}, collecting
    the arrays in `arrays` (key -> array) -> the JSON-able tree."""
    if isinstance(tree, dict):
        return {k: _split_arrays(v, arrays, f"{prefix}.{k}") for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_split_arrays(v, arrays, f"{prefix}.{i}") for i, v in enumerate(tree)]
    if isinstance(tree, np.ndarray):
        arrays[prefix] = tree
        return {"__array__": prefix}
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def _join_arrays(tree, arrays):
    """Inverse of _split_arrays: placeholders -> arrays from `arrays` (a loaded .npz)."""
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            return arrays[tree["__array__"]]
        return {k: _join_arrays(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join_arrays(v, arrays) for v in tree]
    return tree


def _write_npz(path, config, arrays, training_state):
    """numpy backend: one array per weight plus `config` (JSON, the training state's arrays by
    reference)."""
    arrays = dict(arrays)
    if training_state is not None:
        config["training_state"] = _split_arrays(training_state, arrays)
    atomic_write(path, lambda f: np.savez(f, config=np.array(json.dumps(config)), **arrays))


def _write_pt(path, config, arrays, training_state):
    """torch backend: {"config", "state_dict", "training_state", "sha256"} of tensors and plain
    values."""
    blob = {"config": config, "state_dict": arrays}
    if training_state is not None:
        blob["training_state"] = training_state
    blob["sha256"] = _digest(blob)
    atomic_write(path, lambda f: torch.save(blob, f))


WRITERS = {"numpy": _write_npz, "torch": _write_pt}


def _write(model, path, extra=None, training_state=None):
    config = dict(model.config(), **({"extra": extra} if extra else {}))
    WRITERS[MODEL_TYPES[model.model_type].backend](path, config, model.state_arrays(),
                                                   training_state)


def save_checkpoint(model, path, extra=None):
    """Save a model of a type in core.model.registry.MODEL_TYPES to `path`.

    extra: optional JSON-serialisable dict stored with the config (dataset name, training info).
    Raises UserError when the file cannot be written (the previous file is kept).
    """
    _write(model, path, extra)


def save_training_state(solver, path, extra=None):
    """Save the solver's model with everything `--resume` needs (solver.training_state())."""
    _write(solver.model, path, extra, solver.training_state())


def _build(config):
    """An untrained model of the type and sizes a config describes; ValueError for an unknown type
    or a size that is not a positive integer (a crafted or damaged config)."""
    kind = model_type(config.get("model"))
    for key in integer_sizes():
        value = config.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"its config's {key} is {value!r}, not a positive integer")
    dropout = config.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"its config's dropout is {dropout!r}, not in [0, 1)")
    if not isinstance(config.get("idx_to_word"), list):
        raise ValueError("its config has no idx_to_word list")
    return kind.model_class.from_config(config)


def _check_finite(named_arrays, path):
    for name, value in named_arrays:
        torch_value = isinstance(value, torch.Tensor)
        finite = torch.isfinite(value).all() if torch_value else np.isfinite(value).all()
        if not bool(finite):
            raise UserError(f"checkpoint {path} holds non-finite weights (NaN or inf in {name}): "
                            f"not loaded; use an earlier checkpoint")


def _read_npz(path, vocabulary, names):
    """-> model, config, training state (or None) of an .npz (this project's or the original's)."""
    with np.load(path, allow_pickle=False) as f:
        if "config" not in names:
            arrays = {k: f[k] for k in ORIGINAL_RNN_ARRAYS}
            config, state = compat.original_rnn_config(arrays, path, vocabulary), None
        else:
            config = json.loads(str(f["config"]))
            state = config.pop("training_state", None)
            state = _join_arrays(state, f) if state is not None else None
            arrays = {k: f[k] for k in f.files if k != "config" and not k.startswith("state.")}
    model = _build(config)
    model.load_state_arrays(arrays)
    _check_finite(model.state_arrays().items(), path)
    return model, config, state


def _read_pt(path, vocabulary, num_heads):
    """-> model, config, training state (or None) of a .pt (this project's or the original's)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if compat.is_original_transformer(blob):
        blob = {"config": compat.original_transformer_config(blob, path, vocabulary, num_heads),
                "state_dict": blob}
    if not isinstance(blob, dict) or "config" not in blob or "state_dict" not in blob:
        raise ValueError("it holds no config and state_dict")
    stored = blob.pop("sha256", None)
    if stored is not None and stored != _digest(blob):
        raise UserError(f"checkpoint {path} is corrupt (its checksum does not match its contents): "
                        f"not loaded")
    config = blob["config"]
    model = _build(config)
    model.load_state_arrays(compat.renamed(blob["state_dict"]))
    _check_finite(blob["state_dict"].items(), path)
    return model, config, blob.get("training_state")


MISSING_HINT = "train one with `python training.py --model ...` or pass --checkpoint"


def read_checkpoint(path, device, vocabulary=None, num_heads=2, missing_hint=MISSING_HINT):
    """-> model, config, training state (or None) of a checkpoint file; UserError when
    unreadable."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: {missing_hint}")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path} is truncated or corrupt, or not a checkpoint file ({e})") from None
    try:
        names = {n[:-len(".npy")] for n in names if n.endswith(".npy")}
        if "config" in names or compat.is_original_rnn(names):
            return _read_npz(path, vocabulary, names)
        model, config, state = _read_pt(path, vocabulary, num_heads)
        model.to(device)
        model.eval()
        return model, config, state
    except UserError:
        raise
    except pickle.UnpicklingError:
        raise UserError(f"{path} holds pickled Python objects, which could run code when loaded: "
                        "not loaded (this project reads only tensors and plain values)") from None
    except Exception as e:  # a corrupt or foreign file: say which and why, not a traceback
        raise UserError(f"{path} is not a readable checkpoint of this project ({type(e).__name__}: "
                        f"{e})") from None


def load_checkpoint(path, device="cpu", vocabulary=None, num_heads=2, missing_hint=MISSING_HINT):
    """Rebuild a model from a checkpoint file -> (model, config dict).

    Reads this project's files (config and vocabulary inside) and the original repository's
    (`rnn_checkpoint.npz`/`lstm_checkpoint.npz`: the eight arrays alone; `transformer_model.pt`:
    a bare state_dict): their sizes come from the shapes, their vocabulary from `vocabulary`
    (idx_to_word, or a callable returning it; it must have the checkpoint's V words), an original
    transformer's head count from num_heads. config["format"] is "original" for those.
    Raises UserError when the file is missing, is not a checkpoint, is corrupt or holds
    non-finite weights; missing_hint: what the not-found message suggests.
    """
    model, config, _ = read_checkpoint(path, device, vocabulary, num_heads, missing_hint)
    return model, config


def check_checkpoint(config, path, model_type, idx_to_word):
    """Raise UserError when a loaded checkpoint does not match the --model flag or the data's
    vocabulary."""
    if config["model"] != model_type:
        raise UserError(f'checkpoint {path} holds a "{config["model"]}" model, not "{model_type}": '
                        f"pass --model {config['model']} or another --checkpoint")
    if list(config["idx_to_word"]) != list(idx_to_word):
        raise UserError(f"checkpoint {path} was trained with a different vocabulary "
                        f"({len(config['idx_to_word'])} words) than the data ({len(idx_to_word)} "
                        f"words): use the --data_dir it was trained on")


def check_against_data(config, path, model_type, idx_to_word, ident, data_dir, feature_size,
                       what="", sizes=None, encoder=None, regions=None):
    """Raise UserError when a loaded checkpoint does not fit the data it is used with: another model
    type, vocabulary, dataset (naming the folder it was trained on), the sizes its kind of
    features adds (`sizes`, e.g. {"num_regions": 196}), image encoder (`encoder`, e.g.
    "resnet101"; None: not checked), regions (`regions`, FeatureKind.regions_identity: other
    regions of the same size) or feature size. what: words before data_dir in the messages
    ("the transform of")."""
    check_checkpoint(config, path, model_type, idx_to_word)
    extra = config.get("extra", {})
    _check_regions(extra, path, data_dir, regions or {})
    trained_encoder = extra.get("encoder", "vgg16")
    if encoder is not None and trained_encoder != encoder:
        raise UserError(f"checkpoint {path} was trained on {trained_encoder} features, "
                        f"{what + ' ' if what else ''}{data_dir} holds {encoder} features: use the "
                        "--data_dir it was trained on (or build one with features_extraction.py "
                        f"--encoder {trained_encoder})")
    trained_on = extra.get("dataset_id")
    if trained_on and ident and trained_on != ident:
        folder = extra.get("data_path", f"the one of dataset id {trained_on}")
        raise UserError(f"checkpoint {path} was trained on another dataset ({folder}) than "
                        f"{data_dir}: pass --data_dir {folder}")
    for key, value in (sizes or {}).items():  # what the kind of features adds: regions per image
        if key == "features" and config.get(key, value) != value:
            raise UserError(f"checkpoint {path} was trained on {config[key]} features, not "
                            f"{value}: train with --features {config[key]} (or a new model with "
                            f"--features {value})")
        if config.get(key, value) != value:
            makes = f"{what + ' ' if what else ''}{data_dir} {'makes' if what else 'has'}"
            raise UserError(f"checkpoint {path} reads {config[key]} {key.replace('num_', '')} per "
                            f"image, {makes} {value}: use the --data_dir it was trained on")
    if feature_size != config["input_dim"]:
        makes = f"{what + ' ' if what else ''}{data_dir} {'makes' if what else 'has'}"
        raise UserError(f"checkpoint {path} expects {config['input_dim']}-d features, {makes} "
                        f"{feature_size}-d")


def _check_regions(extra, path, data_dir, regions):
    """UserError when the checkpoint's regions are not data_dir's: another digest recorded, or
    none recorded (a checkpoint older than the record) where the boxes come from a detector
    trained here (the sample dataset's older boxes came from the plain-background proposer)."""
    if not regions.get("regions_id"):
        return
    trained = extra.get("regions_id")
    if trained and trained != regions["regions_id"]:
        raise UserError(f"checkpoint {path} was trained on other region features than "
                        f"{data_dir}'s (a dataset built or rebuilt with other boxes or features): "
                        f"use the --data_dir it was trained on"
                        + (f", {extra['data_path']}," if extra.get("data_path") else "")
                        + " or train it again here")
    if not trained and regions.get("regions_source") == "learned":
        raise UserError(f"checkpoint {path} predates {data_dir}'s regions, which come from the "
                        "bottom-up detector trained here (it was trained on the plain-background "
                        "proposer's boxes): train it again here, or rebuild the data with "
                        "`python -m core.datasets.make_sample_dataset --boxes plain`")
