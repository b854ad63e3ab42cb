import numpy as np
import pytest
import torch

from core.training import optim


def _run_ours(rule, config, w0, grads):
    w = w0.copy()
    for g in grads:
        w, config = rule(w, g, config)
    return w


def _run_torch(make_opt, w0, grads):
    w = torch.tensor(w0.copy(), requires_grad=True)
    opt = make_opt([w])
    for g in grads:
        opt.zero_grad()
        w.grad = torch.tensor(g)
        opt.step()
    return w.detach().numpy()


@pytest.mark.parametrize(
    "rule, config, make_opt",
    [
        (optim.sgd, {"learning_rate": 0.1}, lambda p: torch.optim.SGD(p, lr=0.1)),
        (optim.sgd_momentum, {"learning_rate": 0.1, "momentum": 0.9},
         lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
        (optim.rmsprop, {"learning_rate": 0.01, "decay_rate": 0.9, "epsilon": 1e-8},
         lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-8)),
        (optim.adam, {"learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
         lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.999), eps=1e-8)),
    ],
)
def test_update_rules_match_torch_optimizers(rule, config, make_opt):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((4, 5))
    grads = [rng.standard_normal((4, 5)) for _ in range(6)]
    np.testing.assert_allclose(_run_ours(rule, dict(config), w0, grads), _run_torch(make_opt, w0, grads),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(optim.UPDATE_RULES))
def test_update_rules_keep_float32_and_compute_the_float64_update(name):
    """Breaks caught: a rule that upcasts float32 weights (or its state) to float64, and one that
    returns the weights unchanged or wrongly updated in float32."""
    rng = np.random.default_rng(0)
    w0, grads = rng.standard_normal((3, 3)), [rng.standard_normal((3, 3)) for _ in range(3)]
    w32, w64, config32, config64 = w0.astype(np.float32), w0.copy(), None, None
    for g in grads:
        w32, config32 = optim.UPDATE_RULES[name](w32, g.astype(np.float32), config32)
        w64, config64 = optim.UPDATE_RULES[name](w64, g, config64)
    assert w32.dtype == np.float32
    assert all(v.dtype == np.float32 for v in config32.values() if isinstance(v, np.ndarray))
    assert np.abs(w64 - w0).min() > 1e-4  # the updates moved every weight
    np.testing.assert_allclose(w32, w64, rtol=1e-5, atol=1e-6)


def test_the_numpy_solver_keeps_a_zero_learning_rate_and_decays_the_rules_own_default(fake_coco):
    """Breaks caught: learning_rate=0 dropped as if not given (the weights then moved at adam's 1e-3),
    and the decay starting from 1e-2 where adam's default step is 1e-3."""
    from core.data.coco_utils import load_coco_data
    from tests.helpers import tiny_model, weights
    from core.training.solver_numpy import NumpySolver

    data = load_coco_data(fake_coco, max_train=40)
    model = tiny_model("rnn", data)
    before = weights(model)
    frozen = NumpySolver(model, data, learning_rate=0.0, num_epochs=1, batch_size=20, val_samples=10, verbose=False)
    frozen.train()
    assert frozen.history["learning_rate"] == [0.0]
    for k, v in weights(model).items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    default = NumpySolver(tiny_model("rnn", data), data, num_epochs=2, batch_size=20, lr_decay=0.5, val_samples=10,
                          verbose=False)
    default.train()
    assert default.history["learning_rate"] == [1e-3, 5e-4] and default.learning_rate == 2.5e-4
    assert {c["learning_rate"] for c in default.optim_configs.values()} == {2.5e-4}  # what the updates read


def test_clipping_and_weight_decay_match_torch():
    """Breaks caught: clipping each gradient by its own norm instead of all together, weight decay
    added before clipping (torch clips .grad, then Adam adds the decay), or left out."""
    rng = np.random.default_rng(1)
    params = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    grads = [{k: 3 * rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(4)]
    ours = {k: v.copy() for k, v in params.items()}
    configs = {k: {"learning_rate": 0.01} for k in params}
    for g in grads:
        g = optim.clip_and_decay(g, ours, grad_clip=1.5, weight_decay=0.1)
        for k in ours:
            ours[k], configs[k] = optim.adam(ours[k], g[k], configs[k])
    theirs = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = torch.optim.Adam(theirs.values(), lr=0.01, weight_decay=0.1)
    for g in grads:
        opt.zero_grad()
        for k, t in theirs.items():
            t.grad = torch.tensor(g[k])
        torch.nn.utils.clip_grad_norm_(list(theirs.values()), 1.5)
        opt.step()
    for k in params:
        np.testing.assert_allclose(ours[k], theirs[k].detach().numpy(), rtol=1e-10, atol=1e-12)
    small = {k: v * 1e-3 for k, v in grads[0].items()}  # below the norm: unchanged
    assert all(np.array_equal(optim.clip_and_decay(small, params, grad_clip=1.5)[k], small[k]) for k in small)


def test_the_torch_warmup_rises_linearly_then_decays_and_resumes(fake_coco):
    """Breaks caught: warm-up ignored, counted per epoch, or restarting from 0 after a resume."""
    from core.data.coco_utils import load_coco_data
    from core.training.solver_torch import TorchSolver
    from tests.helpers import tiny_model

    data = load_coco_data(fake_coco, max_train=40)
    seen = []
    solver = TorchSolver(tiny_model("transformer", data), data, learning_rate=1e-2, warmup=4, num_epochs=2,
                         batch_size=10, lr_decay=0.5, val_samples=10, verbose=False)
    step = solver.optimizer.step
    solver.optimizer.step = lambda: (seen.append(solver.optimizer.param_groups[0]["lr"]), step())[1]
    solver.train()
    np.testing.assert_allclose(seen, [2.5e-3, 5e-3, 7.5e-3, 1e-2, 5e-3, 5e-3, 5e-3, 5e-3])
    assert solver.history["learning_rate"] == [1e-2, 5e-3]
    resumed = TorchSolver(tiny_model("transformer", data), data, learning_rate=1e-2, warmup=4, num_epochs=3,
                          batch_size=10, lr_decay=0.5, val_samples=10, verbose=False)
    resumed.load_training_state(solver.training_state())
    assert resumed.learning_rate == pytest.approx(2.5e-3)


def test_the_numpy_warmup_rises_linearly_then_decays_and_resumes(fake_coco):
    """The numpy solver's warm-up, as the torch one's: the rate each update uses, the schedule's
    rate it keeps (and saves). Breaks caught: warm-up ignored, the warmed rate kept in the optimizer
    state (then it never rises again), restarting from 0 after a resume."""
    from core.data.coco_utils import load_coco_data
    from core.training.solver_numpy import NumpySolver
    from tests.helpers import tiny_model

    data = load_coco_data(fake_coco, max_train=40)
    seen = []

    def watched(solver):
        rule = solver.update_rule

        def update(w, dw, config):
            seen.append(config["learning_rate"])
            return rule(w, dw, config)
        solver.update_rule = update
        return solver

    solver = watched(NumpySolver(tiny_model("lstm", data), data, learning_rate=1e-2, warmup=4, num_epochs=2,
                                 batch_size=10, lr_decay=0.5, val_samples=10, verbose=False))
    solver.train()
    per_step = seen[::len(solver.model.params)]  # every weight of a step uses the same rate
    np.testing.assert_allclose(per_step, [2.5e-3, 5e-3, 7.5e-3, 1e-2, 5e-3, 5e-3, 5e-3, 5e-3])
    assert solver.history["learning_rate"] == [1e-2, 5e-3]
    resumed = NumpySolver(tiny_model("lstm", data), data, learning_rate=1e-2, warmup=4, num_epochs=3,
                          batch_size=10, lr_decay=0.5, val_samples=10, verbose=False)
    resumed.load_training_state(solver.training_state())
    assert resumed.learning_rate == pytest.approx(2.5e-3)


def test_a_flag_a_decoder_cannot_use_is_refused_by_its_row(capsys, fake_coco):
    """The row's capabilities decide (--scheduled_sampling needs a loss that takes the input words),
    and self-critical training refuses the cross-entropy options it would ignore. Breaks caught:
    the check tied to the backend instead of the row, --scst recording and ignoring them."""
    import training
    from core.model.registry import MODEL_TYPES
    from tests.helpers import one_line_error

    able = ", ".join(m for m, t in MODEL_TYPES.items() if "scheduled_sampling" in t.capabilities)
    one_line_error(capsys, lambda: training.main(["--model", "transformer", "--scheduled_sampling", "0.2",
                                                  "--data_dir", str(fake_coco)]),
                   f"--scheduled_sampling is for the decoders that can use it ({able}), not transformer")
    for flag in ("--label_smoothing", "--scheduled_sampling"):
        one_line_error(capsys, lambda: training.main(["--model", "lstm", "--scst", "--init_from", "x.npz", flag,
                                                      "0.1", "--data_dir", str(fake_coco)]),
                       f"{flag} is a cross-entropy option: self-critical training (--scst) would ignore it")
