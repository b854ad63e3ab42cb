"""Self-critical sequence training: the weighted loss, CIDEr-D rewards, sampling, the update itself,
and the script."""
import json

import numpy as np
import pytest
import torch

import training
from core.training.config import settle
from core.captioning_solver import CaptioningSolver
from core.model.checkpoint import load_checkpoint, save_checkpoint, save_training_state
from core.training.state import load_training_state
from core.evaluation.cider import CiderD
from core.data.coco_utils import decode_captions, load_coco_data
from core.model.decoding import greedy_search, sample_search, sequence_logprob
from core.evaluation.metrics import references_by_image
from core.model.rnn_model import CaptioningRNN
from core.model.transformer import CaptioningTransformer
from core.training.steps import SelfCritical
from tests.helpers import numeric_gradient, one_line_error, rel_error

WORDS = ["<NULL>", "<START>", "<END>", "a", "b"]
VOCAB = {w: i for i, w in enumerate(WORDS)}
CAPTIONS = np.array([[1, 3, 4, 2, 0, 0], [1, 4, 2, 0, 0, 0], [1, 3, 3, 3, 4, 2], [1, 2, 0, 0, 0, 0]])


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
def test_weighted_loss_gradients_and_all_ones_weights(cell_type):
    rng = np.random.default_rng(0)
    model = CaptioningRNN(VOCAB, input_dim=4, wordvec_dim=3, hidden_dim=5, cell_type=cell_type, dtype=np.float64,
                          seed=0)
    features = rng.standard_normal((4, 4))
    weights = np.array([0.7, -1.3, 0.0, 2.1])
    loss, grads = model.loss(features, CAPTIONS, weights)
    for name, param in model.params.items():
        num = numeric_gradient(lambda: model.loss(features, CAPTIONS, weights)[0], param, None)
        assert rel_error(grads[name], num) < 1e-7, name
    plain, plain_grads = model.loss(features, CAPTIONS)
    ones, ones_grads = model.loss(features, CAPTIONS, np.ones(4))
    assert ones == pytest.approx(plain, rel=1e-12)
    for name in plain_grads:
        np.testing.assert_allclose(ones_grads[name], plain_grads[name], rtol=1e-10, atol=1e-14)
    per_caption = [model.loss(features[i:i + 1], CAPTIONS[i:i + 1])[0] for i in range(4)]
    assert loss == pytest.approx(np.dot(weights, per_caption) / 4, rel=1e-10)  # sum_n w_n CE_n / N


def test_weighted_transformer_loss_is_the_weighted_mean_of_caption_losses():
    torch.manual_seed(0)
    model = CaptioningTransformer(VOCAB, input_dim=4, wordvec_dim=8, num_heads=2, num_layers=1, dropout=0.0)
    model.eval()
    features, captions = torch.randn(4, 4), torch.as_tensor(CAPTIONS)
    weights = np.array([0.7, -1.3, 0.0, 2.1])
    per_caption = torch.stack([model.loss(features[i:i + 1], captions[i:i + 1]) for i in range(4)])
    expected = (per_caption * torch.as_tensor(weights, dtype=torch.float32)).sum() / 4
    torch.testing.assert_close(model.loss(features, captions, weights), expected)
    torch.testing.assert_close(model.loss(features, captions, np.ones(4)), model.loss(features, captions))


def test_cider_d_equals_pycocoevalcap_with_the_same_document_frequencies(fake_coco):
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    data = load_coco_data(fake_coco)
    refs = references_by_image(data["val_captions"], data["val_image_idxs"], data["idx_to_word"])
    rng = np.random.default_rng(0)
    images = sorted(refs)
    candidates = [refs[int(rng.choice(images))][int(rng.integers(5))] for _ in images]  # right and wrong captions
    candidates[0] = " ".join(candidates[0].split()[:3])  # a short one: the length penalty matters
    candidates[1] = "w7 w7 w7 nothing"  # n-grams no reference has
    scorer = CiderScorer(n=4, sigma=6.0)
    for image, caption in zip(images, candidates):
        scorer += (caption, refs[image])
    _, expected = scorer.compute_score()
    ours = CiderD(refs).scores(candidates, images)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    assert len(set(np.round(ours, 3))) > 5  # a spread of scores was compared


def _sharp_model(seed=0):
    model = CaptioningRNN(VOCAB, input_dim=3, wordvec_dim=4, hidden_dim=6, cell_type="lstm", seed=seed)
    for k in model.params:
        model.params[k] *= 4
    return model


def test_sampling_at_temperature_zero_is_greedy_and_samples_are_reproducible():
    model = _sharp_model()
    features = np.random.default_rng(1).standard_normal((6, 3)).astype(np.float32)
    greedy = greedy_search(model, features, max_length=6)
    np.testing.assert_array_equal(sample_search(model, features, 6, num_samples=3, temperature=0.0)[::3], greedy)
    tiny = sample_search(model, features, 6, num_samples=2, temperature=1e-4, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(tiny[::2], greedy)
    np.testing.assert_array_equal(tiny[1::2], greedy)
    a = sample_search(model, features, 6, num_samples=4, rng=np.random.default_rng(5))
    b = sample_search(model, features, 6, num_samples=4, rng=np.random.default_rng(5))
    c = sample_search(model, features, 6, num_samples=4, rng=np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (24, 6) and not np.array_equal(a, c)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampled_first_words_follow_the_tempered_distribution(temperature):
    model = _sharp_model()
    features = np.random.default_rng(2).standard_normal((1, 3)).astype(np.float32)
    logprobs, _ = model.step(np.array([VOCAB["<START>"]]), model.init_state(features))
    expected = np.exp(logprobs[0] / temperature)
    expected /= expected.sum()
    words = sample_search(model, features, 1, num_samples=20000, temperature=temperature,
                          rng=np.random.default_rng(0))[:, 0]
    np.testing.assert_allclose(np.bincount(words, minlength=len(WORDS)) / 20000, expected, atol=0.012)


class TargetReward:
    """A reward of 1 for one target caption and 0 for every other (or a constant for all)."""

    def __init__(self, target=None, constant=None):
        self.target, self.constant = target, constant

    def scores(self, captions, images):
        if self.constant is not None:
            return np.full(len(captions), self.constant)
        return np.array([float(c == self.target) for c in captions])


def _toy(reward, baseline, lr=0.01, num_samples=64, update_rule="adam"):
    """Four images, a tiny untrained LSTM and its self-critical solver (one step per epoch)."""
    rng = np.random.default_rng(3)
    data = {"train_captions": CAPTIONS, "train_image_idxs": np.arange(4), "val_captions": CAPTIONS,
            "val_image_idxs": np.arange(4), "train_features": rng.standard_normal((4, 3)).astype(np.float32),
            "val_features": rng.standard_normal((4, 3)).astype(np.float32)}
    model = CaptioningRNN(VOCAB, input_dim=3, wordvec_dim=4, hidden_dim=6, cell_type="lstm", seed=0)
    solver = CaptioningSolver(model, data, learning_rate=lr, update_rule=update_rule, batch_size=4, num_epochs=1,
                              verbose=False, seed=0,
                              step=SelfCritical(reward, num_samples=num_samples, baseline=baseline, max_length=4))
    return solver, data


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_self_critical_steps_raise_the_probability_of_the_rewarded_caption(baseline):
    solver, data = _toy(TargetReward(target="a"), baseline)
    target = np.array([[VOCAB["a"], VOCAB["<END>"]]] * 4)
    before = np.exp(sequence_logprob(solver.model, data["train_features"], target))
    solver.num_epochs = 15
    solver.train()
    after = np.exp(sequence_logprob(solver.model, data["train_features"], target))
    assert after.mean() > 1.4 * before.mean() and (after >= before).all(), (before, after)


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_a_constant_reward_changes_nothing(baseline):
    """Reward - baseline is 0 (up to rounding in the mean of the other samples): no gradient. Plain
    SGD shows it (Adam would blow rounding noise up to full-size steps)."""
    solver, _ = _toy(TargetReward(constant=0.7), baseline, lr=1.0, update_rule="sgd")
    before = {k: v.copy() for k, v in solver.model.params.items()}
    solver.num_epochs = 5
    solver.train()
    for k, v in solver.model.params.items():
        np.testing.assert_allclose(v, before[k], rtol=0, atol=1e-12, err_msg=k)
    assert solver.history["reward"] == pytest.approx([0.7] * 5) and solver.history["baseline"] == pytest.approx([0.7] * 5)
    moved, _ = _toy(TargetReward(target="a"), baseline, lr=1.0, update_rule="sgd")  # a real reward does move them
    moved.train()
    assert any(np.abs(v - before[k]).max() > 1e-4 for k, v in moved.model.params.items())


def test_self_critical_training_resumes_exactly(tmp_path):
    """Each image's draws are seeded by (seed, epoch, image), so a resumed run samples what a straight one does."""
    straight, _ = _toy(TargetReward(target="a"), "mean")
    straight.num_epochs = 4
    straight.train()
    first, data = _toy(TargetReward(target="a"), "mean")
    first.num_epochs = 2
    first.save_state = lambda s: save_training_state(s, tmp_path / "last.npz")
    first.train()
    model, _, state = load_training_state(tmp_path / "last.npz")
    resumed = CaptioningSolver(model, data, learning_rate=0.01, batch_size=4, num_epochs=4, verbose=False, seed=0,
                               step=straight.step_rule)
    resumed.load_training_state(state)
    resumed.train()
    for k in model.params:
        np.testing.assert_array_equal(resumed.model.params[k], straight.model.params[k], err_msg=k)
    assert resumed.history["reward"] == straight.history["reward"]


def test_the_script_fine_tunes_a_checkpoint_and_records_it(fake_coco, tmp_path, capsys):
    data = load_coco_data(fake_coco)
    model = CaptioningRNN(data["word_to_idx"], input_dim=512, wordvec_dim=8, hidden_dim=12, cell_type="gru", seed=0)
    xe = tmp_path / "gru_xe.npz"
    save_checkpoint(model, xe)
    with pytest.raises(SystemExit):
        training.main(["--model", "gru", "--scst", "--data_dir", str(fake_coco)])
    assert "--scst needs --init_from" in capsys.readouterr().err
    args = settle(["--model", "gru", "--scst", "--init_from", str(xe)]).config
    # named after the checkpoint it starts from, next to it (break caught: ./gru_checkpoint_scst.npz
    # whatever --init_from was, so a second fine-tuning from another checkpoint replaced the first)
    assert (args.checkpoint, args.lr, args.eval_every) == (str(tmp_path / "gru_xe_scst.npz"), 5e-5, 1)
    # a size given with --init_from must be the checkpoint's (break caught: silently replaced)
    assert settle(["--model", "gru", "--scst", "--init_from", str(xe), "--hidden_dim", "12"]).config.hidden_dim == 12
    one_line_error(capsys, lambda: training.main(["--model", "gru", "--scst", "--init_from", str(xe),
                                                  "--hidden_dim", "64", "--data_dir", str(fake_coco)]),
                   f"--hidden_dim 64 contradicts {xe}, whose model has hidden_dim 12")
    tuned = tmp_path / "tuned.npz"
    training.main(["--model", "gru", "--scst", "--init_from", str(xe), "--data_dir", str(fake_coco), "--epochs", "2",
                   "--batch_size", "25", "--max_iters", "2", "--scst_samples", "3", "--baseline", "mean", "--out_dir", str(tmp_path),
                   "--checkpoint", str(tuned), "--quiet"])
    out = capsys.readouterr().out
    _, config = load_checkpoint(tuned)
    assert config["extra"]["scst"] == {"init_from": str(xe), "baseline": "mean", "samples": 3, "temperature": 1.0}
    assert config["extra"]["args"]["hidden_dim"] == 12  # the sizes of the checkpoint it started from
    history = json.loads((tmp_path / "tuned_history.json").read_text())
    assert len(history["reward"]) == len(history["baseline"]) == 4 and history["eval_epoch"] == [1, 2]
    assert (tmp_path / "tuned_reward.png").stat().st_size > 1000 and f"saved plot {tmp_path / 'tuned_reward.png'}" in out
    assert not (tmp_path / "tuned_loss.png").exists()  # no self-critical loss drawn next to a cross-entropy one
    assert set(history["start"]) == {"val_bleu4", "val_cider"}  # the starting checkpoint's score: epoch 0
    assert load_checkpoint(tmp_path / "tuned_best.npz")[1]["extra"]["val_cider"] == max(history["val_cider"])


def test_caption_error_counts_read_every_phrasing_back_into_its_scene():
    from benchmarks.caption_errors import count_errors, read_caption
    from core.datasets.make_sample_dataset import captions, make_scene

    for i in range(60):
        scene = make_scene("val", i)
        for caption in captions(scene):
            assert read_caption(caption)[0] == [(o["size"], o["color"], o["shape"]) for o in scene["objects"]], caption
    two = next(i for i in range(50) if make_scene("val", i)["relation"] == "left")
    one = next(i for i in range(50) if make_scene("val", i)["relation"] is None)
    a, b = make_scene("val", two)["objects"]
    other_shape = next(s for s in ("circle", "square") if s != b["shape"])
    wrong = [
        {"image": two, "caption": f"a {b['size']} {b['color']} {other_shape} to the right of a {a['size']} {a['color']} "
                                  f"{a['shape']}", "references": []},  # right relation, second object's shape wrong
        {"image": two, "caption": f"a {a['size']} {a['color']} {a['shape']} above a {b['size']} {b['color']} "
                                  f"{b['shape']}", "references": []},  # the other axis
        {"image": one, "caption": captions(make_scene("val", one))[0], "references": captions(make_scene("val", one))},
    ]
    totals = count_errors(wrong)
    assert totals == {"captions": 3, "exact": 1, "wrong_shape": 1, "wrong_colour": 0, "wrong_size": 0,
                      "wrong_relation": 1, "wrong_object_count": 0}


class RecordingReward(TargetReward):
    """TargetReward that records which images each call rewards."""

    def __init__(self):
        super().__init__(constant=0.0)
        self.calls = []

    def scores(self, captions, images):
        self.calls.append(np.asarray(images).copy())
        return super().scores(captions, images)


def test_a_self_critical_epoch_samples_every_image_once():
    """Break caught: an epoch over caption rows, which samples an image once per caption (here 3
    times) and an image whose captions share a step twice in it."""
    rng = np.random.default_rng(3)
    captions = np.repeat(CAPTIONS, 3, axis=0)  # 4 images x 3 captions each
    data = {"train_captions": captions, "train_image_idxs": np.repeat(np.arange(4), 3), "val_captions": CAPTIONS,
            "val_image_idxs": np.arange(4), "train_features": rng.standard_normal((4, 3)).astype(np.float32),
            "val_features": rng.standard_normal((4, 3)).astype(np.float32)}
    model = CaptioningRNN(VOCAB, input_dim=3, wordvec_dim=4, hidden_dim=6, cell_type="lstm", seed=0)
    reward = RecordingReward()
    solver = CaptioningSolver(model, data, batch_size=2, num_epochs=2, verbose=False, seed=0,
                              step=SelfCritical(reward, num_samples=2, baseline="mean", max_length=4))
    solver.train()
    assert len(solver.history["loss"]) == 4  # 2 steps of 2 images per epoch
    for epoch in range(2):
        sampled = np.concatenate(reward.calls[2 * epoch:2 * epoch + 2])
        assert sorted(sampled.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]  # each image once, with its 2 samples


def test_self_critical_flag_mistakes_are_one_line_errors_before_any_work(capsys, tmp_path):
    """Breaks caught: --baseline mean with one sample a 17-line traceback from the strategy's
    constructor after loading; a missing --init_from file suggesting --checkpoint."""
    one_line_error(capsys, lambda: training.main(["--model", "lstm", "--scst", "--init_from", "x.npz", "--baseline",
                                                  "mean", "--scst_samples", "1"]),
                   "--baseline mean needs --scst_samples of at least 2")
    one_line_error(capsys, lambda: training.main(["--model", "lstm", "--scst", "--init_from", str(tmp_path / "x.npz"),
                                                  "--out_dir", str(tmp_path), "--checkpoint", str(tmp_path / "t.npz")]),
                   "x.npz not found: pass the checkpoint to fine-tune to --init_from")
    one_line_error(capsys, lambda: training.main(["--resume", str(tmp_path / "r_last.npz")]),
                   "r_last.npz not found: pass the *_last file", "to --resume")


def test_the_original_repositorys_checkpoint_fine_tunes_as_it_is(tmp_path, capsys):
    """Break caught: the data's vocabulary never reached the loader, so an original-format file (no
    vocabulary inside) was refused with "pass the --data_dir" although it was passed."""
    from core.data.coco_utils import SAMPLE_DIR
    from tests.test_compat import FILES, ORIGINAL

    tuned = tmp_path / "tuned.npz"
    training.main(["--model", "lstm", "--scst", "--init_from", str(ORIGINAL / FILES["lstm"]), "--data_dir",
                   str(SAMPLE_DIR), "--epochs", "1", "--max_iters", "1", "--batch_size", "4", "--scst_samples", "2",
                   "--eval_images", "4", "--val_samples", "4", "--checkpoint", str(tuned), "--out_dir", str(tmp_path),
                   "--quiet"])
    model, config = load_checkpoint(tuned)
    assert config["extra"]["scst"]["init_from"] == str(ORIGINAL / FILES["lstm"])
    assert (config["wordvec_dim"], config["hidden_dim"]) == (16, 32)  # the original file's sizes


def test_the_epoch_line_of_self_critical_training_names_what_it_reports(capsys):
    """Break caught: a negative self-critical loss printed as "train loss" next to the cross-entropy
    val loss, with no reward or baseline."""
    solver, _ = _toy(TargetReward(target="a"), "greedy")
    solver.verbose = True
    solver.train()
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("epoch 1/1")][0]
    reward, baseline = solver.history["reward"][0], solver.history["baseline"][0]
    assert line.startswith(f"epoch 1/1  self-critical loss {solver.history['train_loss'][0]:.4f}  reward {reward:.4f}  "
                           f"baseline {baseline:.4f}  val loss (cross-entropy) {solver.history['val_loss'][0]:.4f}")


def test_each_image_gets_its_own_draws_wherever_it_falls():
    """Breaks caught: draws seeded by the step or the batch position instead of the image (two images
    of a step sampling the same captions; an image's draws changing with its place in the batch or
    with the process count), and draws that do not change with the epoch."""
    rule = SelfCritical(TargetReward(constant=0.0), num_samples=3, max_length=5, seed=7)
    draws = rule.draws(np.array([4, 9]), epoch=0).reshape(2, 3, 5)  # (images, K, L)
    assert not np.array_equal(draws[0], draws[1])
    np.testing.assert_array_equal(rule.draws(np.array([9, 4]), epoch=0).reshape(2, 3, 5)[::-1], draws)
    np.testing.assert_array_equal(rule.draws(np.array([9]), epoch=0).reshape(3, 5), draws[1])
    assert not np.array_equal(rule.draws(np.array([4]), epoch=1).reshape(3, 5), draws[0])
    assert len(np.unique(draws)) == draws.size  # K distinct samples of each image, not one repeated


def test_self_critical_steps_differentiate_in_the_mode_they_sample_in(fake_coco):
    """Break caught: a torch decoder with dropout sampled in eval mode and differentiated in
    training mode (dropout on), so the loss trained was not the sampled captions' (20.71 vs 20.64)."""
    from core.training.solver_torch import TorchSolver
    from tests.helpers import tiny_model

    data = load_coco_data(fake_coco, max_train=20)
    model = tiny_model("transformer", data, dropout=0.5)
    modes = []
    model.register_forward_pre_hook(lambda module, inputs: modes.append(module.training))
    rule = SelfCritical(TargetReward(target="a"), num_samples=2, baseline="mean", max_length=5)
    solver = TorchSolver(model, data, num_epochs=1, batch_size=4, verbose=False, step=rule)
    solver.train()
    assert modes and not any(modes)  # every forward of the self-critical steps ran without dropout
    modes.clear()
    plain = TorchSolver(model, data, num_epochs=1, batch_size=4, val_samples=1, verbose=False)
    plain.gradients(*plain.batch("train", np.arange(4)))
    assert modes == [True]  # cross-entropy trains with dropout


def test_a_starting_checkpoint_of_another_model_type_is_one_line(tmp_path, capsys):
    """Break caught: --init_from's sizes read before its model type was checked: a KeyError
    traceback for --model transformer --init_from an LSTM file."""
    model = CaptioningRNN(VOCAB, input_dim=3, wordvec_dim=4, hidden_dim=6, cell_type="lstm", seed=0)
    save_checkpoint(model, tmp_path / "lstm.npz")
    one_line_error(capsys, lambda: training.main(["--model", "transformer", "--scst", "--init_from",
                                                  str(tmp_path / "lstm.npz")]),
                   'holds a "lstm" model, not "transformer"', "pass --model lstm")
