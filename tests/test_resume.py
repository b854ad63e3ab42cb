"""Resumable training in-process: the saved state continues a run exactly, Ctrl-C/SIGTERM stop
cleanly, divergence stops with the last good state kept."""
import math
import os
import signal

import numpy as np
import pytest
import torch

from core.model.checkpoint import save_training_state
from core.training.state import load_training_state
from core.data.coco_utils import load_coco_data
from core.model.registry import MODEL_TYPES
from core.training.solver_base import TrainingDiverged
from tests.helpers import DECODER_IDS, DECODERS, checkpoint_name, tiny_model, tiny_solver, weights


@pytest.fixture(scope="module")
def data(fake_coco):
    return load_coco_data(fake_coco, max_train=120, seed=0)


@pytest.fixture(scope="module")
def datasets(fake_coco, data):
    """The data of each kind of features: {"fc7": ..., "grid": ..., "boxes": ...}."""
    return {"fc7": data, **{kind: load_coco_data(fake_coco, max_train=120, seed=0, features=kind)
                            for kind in ("grid", "boxes")}}


def _solver(name, data, model=None, **kw):
    """The solver of a tiny model of `name` (a fresh one with fixed seeds unless given); dropout on,
    so that the transformer's dropout RNG is part of what a resume must restore."""
    common = dict(num_epochs=5, batch_size=25, lr_decay=0.9, val_samples=30, seed=3, verbose=False)
    common.update(kw)
    torch.manual_seed(0)
    if model is None:
        model = tiny_model(name, data, wordvec_dim=16, dim_feedforward=24, dropout=0.2)
    return tiny_solver(name, data, model, learning_rate=3e-3, **common)


def _exact(name):
    """numpy decoders resume bitwise; torch ones within float tolerance."""
    return not MODEL_TYPES[name].uses_torch


def _assert_same_run(a, b, exact):
    """Same weights and same history (timings aside)."""
    wa, wb = weights(a.model), weights(b.model)
    assert wa.keys() == wb.keys()
    for k in wa:
        if exact:
            np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
        else:
            np.testing.assert_allclose(wa[k], wb[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for key in ("loss", "train_loss", "val_loss", "learning_rate"):
        if exact:
            assert a.history[key] == b.history[key], key
        else:
            np.testing.assert_allclose(a.history[key], b.history[key], rtol=1e-5, err_msg=key)
    assert a.epoch == b.epoch


def _resume(name, data, path, **kw):
    """A new process's view: rebuild the model from the file, a fresh solver, then its state."""
    model, _, state = load_training_state(path)
    fresh = _solver(name, data, model=model, **kw)
    fresh.load_training_state(state)
    return fresh


@pytest.mark.parametrize("name,kind", DECODERS, ids=DECODER_IDS)
def test_two_epochs_resumed_for_three_more_equal_five(name, kind, datasets, tmp_path):
    """Breaks caught: optimizer state, learning rate, RNG state (shuffling or dropout), history or
    best-so-far not saved or not restored."""
    data = datasets[kind]
    straight = _solver(name, data)
    straight.train()

    path = tmp_path / checkpoint_name(name)
    first = _solver(name, data, num_epochs=2, save_state=lambda s: save_training_state(s, path))
    first.train()
    resumed = _resume(name, data, path, num_epochs=5)
    assert resumed.epoch == 2 and resumed.iteration == 0
    resumed.train()
    _assert_same_run(straight, resumed, exact=_exact(name))


@pytest.mark.parametrize("name", ["lstm", "transformer"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_epoch_stops_after_the_step_and_resumes_exactly(name, signum, data, tmp_path):
    """A real signal in the middle of epoch 2: the step finishes, the state is saved, train()
    returns; resuming continues mid-epoch (same permutation, same position) to the straight result."""
    straight = _solver(name, data, num_epochs=3)
    straight.train()

    path = tmp_path / checkpoint_name(name)
    saves = []

    def save(s):
        saves.append((s.epoch, s.iteration))
        save_training_state(s, path)

    first = _solver(name, data, num_epochs=3, save_state=save)
    step = first.gradients
    calls = []

    def step_then_signal(*batch, **kw):
        loss = step(*batch, **kw)
        calls.append(1)
        if len(calls) == 7:  # epoch 2 (5 iterations per epoch), iteration 2
            signal.raise_signal(signum)
        return loss

    first.gradients = step_then_signal
    first.train()
    assert first.stop_requested == signal.Signals(signum).name
    assert (first.epoch, first.iteration) == (1, 2) and len(calls) == 7
    assert saves == [(1, 0), (1, 2)]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored

    resumed = _resume(name, data, path, num_epochs=3)
    assert (resumed.epoch, resumed.iteration) == (1, 2)
    resumed.train()
    _assert_same_run(straight, resumed, exact=_exact(name))


def test_a_second_signal_stops_at_once(data):
    solver = _solver("rnn", data)
    step = solver.gradients

    def two_signals(*batch, **kw):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        return step(*batch, **kw)

    solver.gradients = two_signals
    with pytest.raises(KeyboardInterrupt):
        solver.train()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_stops(data, bad):
    solver = _solver("rnn", data)
    calls = []

    def step(*batch, **kw):
        calls.append(1)
        return (30.0 if len(calls) < 3 else bad), None

    solver.gradients = step
    solver.apply = lambda gradients: None
    with pytest.raises(TrainingDiverged, match=f"became {bad}"):
        solver.train()
    assert solver.history["loss"] == [30.0, 30.0]


def test_divergence_rule_is_relative_to_the_first_batch(data):
    """A loss up to divergence_factor times the first is fine; above it stops."""
    losses = iter([10.0, 99.0, 100.0, 101.0])
    solver = _solver("rnn", data, divergence_factor=10)
    solver.gradients = lambda *batch, **kw: (next(losses), None)
    solver.apply = lambda gradients: None
    with pytest.raises(TrainingDiverged, match="grew to 101 at epoch 1, iteration 4"):
        solver.train()


def test_non_finite_validation_loss_stops(data):
    solver = _solver("rnn", data)
    solver._eval_loss = lambda *batch: math.nan
    with pytest.raises(TrainingDiverged, match="validation loss became nan after epoch 1"):
        solver.train()
    assert solver.history["val_loss"] == [] and solver.epoch == 0
