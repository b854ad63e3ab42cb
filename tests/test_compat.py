"""Compatibility with the original repository (its checkpoint files, its commands) and with the
CS231n layer API."""
import functools
import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import inference
from core.evaluation import captions as captioning
import training
from core.training.config import settle
from core.model.checkpoint import load_checkpoint, save_checkpoint
from core.data.coco_utils import SAMPLE_DIR, decode_captions, load_coco_data, subset_rows
from core.util.errors import UserError
from core.evaluation.metrics import score_captions
from core.model.rnn_model import CaptioningRNN
from core.model.transformer import CaptioningTransformer
from core.layers.rnn_layers import affine_backward, affine_forward
from tests.helpers import assert_gradients

ORIGINAL = Path(__file__).resolve().parent / "data" / "original"
FILES = {"rnn": "rnn_checkpoint.npz", "lstm": "lstm_checkpoint.npz", "transformer": "transformer_model.pt"}
VOCAB = json.loads((ORIGINAL / "vocab.json").read_text())["idx_to_word"]
EXPECTED = json.loads((ORIGINAL / "expected_greedy_captions.json").read_text())


def _expected(model):
    """The original's captions without the <END> its decode_captions keeps."""
    return [re.sub(r" ?<END>$", "", c) for c in EXPECTED[model]]


@pytest.mark.parametrize("model", FILES)
def test_original_checkpoints_decode_as_the_original_does(model):
    loaded, config = load_checkpoint(ORIGINAL / FILES[model], vocabulary=VOCAB)
    assert config["format"] == "original" and config["model"] == model
    assert config["wordvec_dim"] == 16 and config["idx_to_word"] == VOCAB
    if model == "transformer":
        assert (config["num_heads"], config["num_layers"], config["max_length"], config["dim_feedforward"]) == \
            (2, 2, 30, 2048)
    else:
        assert config["hidden_dim"] == 32 and config["dtype"] == "float32"
    features = np.load(ORIGINAL / "val_features.npy")
    captions = decode_captions(loaded.sample(features, max_length=30), VOCAB)
    assert captions == _expected(model)


@pytest.fixture(scope="module")
def original_data(tmp_path_factory):
    """The sample dataset as the original checkpoints met it: its vocabulary's word order (the captions re-encoded
    into it) and the first 20 val images' features those checkpoints captioned (tests/data/original; the sample
    scenes have been drawn anew since)."""
    folder = tmp_path_factory.mktemp("original_data")
    new_words = load_coco_data(SAMPLE_DIR)["idx_to_word"]
    assert sorted(new_words) == sorted(VOCAB)  # the same words, in another order
    recode = np.array([VOCAB.index(w) for w in new_words])
    (folder / "coco2014_vocab.json").write_text(json.dumps({"idx_to_word": VOCAB,
                                                            "word_to_idx": {w: i for i, w in enumerate(VOCAB)}}))
    with h5py.File(SAMPLE_DIR / "coco2014_captions.h5") as f, h5py.File(folder / "coco2014_captions.h5", "w") as g:
        for name in f:
            g[name] = recode[f[name][()]] if name.endswith("_captions") else f[name][()]
    for split in ("train", "val", "test"):
        shutil.copy(SAMPLE_DIR / f"{split}2014_urls.txt", folder)
        features = h5py.File(SAMPLE_DIR / f"{split}2014_vgg16_fc7_pca.h5")["features"][()]
        if split == "val":
            features[:20] = np.load(ORIGINAL / "val_features.npy")
        with h5py.File(folder / f"{split}2014_vgg16_fc7_pca.h5", "w") as g:
            g["features"] = features
    return folder


@pytest.mark.parametrize("model", FILES)
def test_original_checkpoints_through_inference_eval(model, original_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(captioning, "score_captions", functools.partial(score_captions, meteor=False))
    inference.main(["--model", model, "--checkpoint", str(ORIGINAL / FILES[model]), "--data_dir",
                    str(original_data), "--eval", "--split", "val", "--out_dir", str(tmp_path), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "in the original repository's format (weights only)" in out
    report = json.loads((tmp_path / f"{Path(FILES[model]).stem}_val_greedy_eval.json").read_text())
    assert EXPECTED["val_images"] == list(range(20))
    assert [p["caption"] for p in report["predictions"][:20]] == _expected(model)


def test_original_files_need_a_vocabulary_of_their_size(tmp_path, capsys):
    with pytest.raises(UserError, match="without a vocabulary: pass the --data_dir"):
        load_checkpoint(ORIGINAL / "lstm_checkpoint.npz")
    for name in FILES.values():
        with pytest.raises(UserError, match="has a 33-word vocabulary, the data's has 34 words"):
            load_checkpoint(ORIGINAL / name, vocabulary=VOCAB + ["extra"])
    with pytest.raises(UserError, match="width 16, which --num_heads 3 does not divide"):
        load_checkpoint(ORIGINAL / "transformer_model.pt", vocabulary=VOCAB, num_heads=3)


@pytest.mark.parametrize("cell_type", ["rnn", "lstm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_files_in_the_original_rnn_layout_load_with_their_cell_and_dtype(cell_type, dtype, tmp_path):
    """Exactly the original's layout: np.savez of the eight arrays, nothing else."""
    vocab = {w: i for i, w in enumerate(VOCAB)}
    model = CaptioningRNN(vocab, input_dim=12, wordvec_dim=6, hidden_dim=5, cell_type=cell_type, dtype=dtype, seed=1)
    path = tmp_path / "orig.npz"
    np.savez(path, **model.params)
    loaded, config = load_checkpoint(path, vocabulary=VOCAB)
    assert (config["model"], config["input_dim"], config["wordvec_dim"], config["hidden_dim"]) == (cell_type, 12, 6, 5)
    assert loaded.dtype == dtype
    for k in model.params:
        np.testing.assert_array_equal(loaded.params[k], model.params[k])
    features = np.random.default_rng(0).standard_normal((4, 12)).astype(dtype)
    np.testing.assert_array_equal(loaded.sample(features, max_length=8), model.sample(features, max_length=8))


def test_a_bare_transformer_state_dict_loads_with_the_given_heads(tmp_path):
    """torch.save(model.state_dict()): this project's module now has the original's parameter names."""
    vocab = {w: i for i, w in enumerate(VOCAB)}
    torch.manual_seed(0)
    model = CaptioningTransformer(vocab, input_dim=12, wordvec_dim=16, num_heads=4, num_layers=3, max_length=20,
                                  dim_feedforward=24)
    with torch.no_grad():  # attention that is far from uniform, so that the head count matters
        for p in model.parameters():
            p.mul_(20 if p.dim() > 1 else 1)
    assert "transformer.layers.2.multihead_attn.proj.weight" in model.state_dict()
    path = tmp_path / "transformer_model.pt"
    torch.save(model.state_dict(), path)
    loaded, config = load_checkpoint(path, vocabulary=VOCAB, num_heads=4)
    assert (config["num_layers"], config["max_length"], config["dim_feedforward"]) == (3, 20, 24)
    features = torch.randn(4, 12)
    captions = torch.randint(0, len(VOCAB), (4, 9))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(features, captions), model(features, captions), rtol=0, atol=0)
        two_heads, _ = load_checkpoint(path, vocabulary=VOCAB, num_heads=2)  # loads, but is another model
        assert not torch.allclose(two_heads(features, captions), model(features, captions), atol=1e-3)


def test_this_projects_earlier_transformer_files_still_load(tmp_path):
    """Files saved before the decoder layers moved under `transformer.` (keys `layers.{i}...`)."""
    vocab = {w: i for i, w in enumerate(VOCAB)}
    torch.manual_seed(0)
    model = CaptioningTransformer(vocab, input_dim=12, wordvec_dim=16, num_heads=2, num_layers=2, max_length=20)
    old = {k.replace("transformer.layers.", "layers."): v for k, v in model.state_dict().items()}
    path = tmp_path / "old.pt"
    torch.save({"config": model.config(), "state_dict": old}, path)
    loaded, _ = load_checkpoint(path)
    features = np.random.default_rng(0).standard_normal((3, 12)).astype(np.float32)
    np.testing.assert_array_equal(loaded.sample(features, max_length=10), model.sample(features, max_length=10))


@pytest.mark.parametrize("cell_type, feature_range, expected", [("rnn", (-1.5, 0.3), 9.83235591003),
                                                                ("lstm", (-0.5, 1.7), 9.82445935443)])
def test_cs231n_notebook_losses_with_a_vocabulary_without_start_and_end(cell_type, feature_range, expected):
    N, D, W, H, T = 10, 20, 30, 40, 13
    word_to_idx = {"<NULL>": 0, "cat": 2, "dog": 3}
    model = CaptioningRNN(word_to_idx, input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell_type,
                          dtype=np.float64)
    for k, v in model.params.items():
        model.params[k] = np.linspace(-1.4, 1.3, num=v.size).reshape(*v.shape)
    features = np.linspace(*feature_range, num=N * D).reshape(N, D)
    captions = (np.arange(N * T) % len(word_to_idx)).reshape(N, T)
    loss, grads = model.loss(features, captions)
    assert abs(loss - expected) < 1e-10
    assert grads["W_embed"].shape == (3, W)
    with pytest.raises(ValueError, match="decoding needs <START> and <END>"):
        model.sample(features[:2], max_length=5)


def test_transformer_with_a_vocabulary_without_start_and_end():
    torch.manual_seed(231)
    model = CaptioningTransformer({"<NULL>": 0, "cat": 2, "dog": 3}, input_dim=20, wordvec_dim=8, num_heads=2,
                                  num_layers=2, max_length=13)
    captions = torch.as_tensor((np.arange(10 * 13) % 3).reshape(10, 13))
    loss = model.loss(torch.randn(10, 20), captions)
    assert torch.isfinite(loss) and model.embedding.weight.shape == (3, 8)
    with pytest.raises(ValueError, match="no <START> and no <END>"):
        model.sample(np.zeros((1, 20), dtype=np.float32), max_length=5)
    with pytest.raises(ValueError, match="no <START>"):
        model.sample_uncached(np.zeros((1, 20), dtype=np.float32), max_length=5)


def test_affine_takes_any_trailing_shape():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 4, 5))
    w, b = rng.standard_normal((40, 6)), rng.standard_normal(6)
    out, cache = affine_forward(x, w, b)
    np.testing.assert_allclose(out, x.reshape(3, 40) @ w + b)
    dout = rng.standard_normal((3, 6))
    grads = affine_backward(dout, cache)
    assert grads[0].shape == x.shape
    assert_gradients(lambda: affine_forward(x, w, b)[0], (x, w, b), grads, dout, 1e-8)


@pytest.mark.parametrize("cached", [True, False])
def test_a_transformer_built_for_l_positions_samples_l_words(cached):
    vocab = {w: i for i, w in enumerate(VOCAB)}
    torch.manual_seed(0)
    model = CaptioningTransformer(vocab, input_dim=6, wordvec_dim=8, num_heads=2, num_layers=1, max_length=7)
    with torch.no_grad():
        model.output.bias[vocab["<END>"]] = -100.0  # never ends: all 7 positions are used
    sample = model.sample if cached else model.sample_uncached
    features = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    captions = sample(features, max_length=7)
    assert captions.shape == (2, 7) and (captions != vocab["<NULL>"]).all()
    with pytest.raises(ValueError, match="max_length=8 needs a model built with max_length >= 8"):
        sample(features, max_length=8)


def test_the_original_small_data_command_gets_the_small_data_recipe(capsys):
    args = settle(["--model", "rnn", "--num_samples", "300"]).config
    assert (args.recipe, args.epochs, args.batch_size, args.lr_decay, args.val_samples) == ("small-data", 100, 50, 1.0,
                                                                                            100)
    args = settle(["--model", "transformer", "--num_samples", "300"]).config
    assert args.dropout == 0.0 and args.epochs == 100
    assert settle(["--model", "transformer", "--num_samples", "300", "--dropout", "0.2"]).config.dropout == 0.2
    args = settle(["--model", "rnn", "--num_samples", "300", "--epochs", "3"]).config
    assert (args.recipe, args.epochs, args.batch_size, args.lr_decay) == ("default", 3, 100, 0.95)
    args = settle(["--model", "lstm", "--num_samples", "100000"]).config
    assert (args.recipe, args.epochs, args.batch_size) == ("default", 10, 100)
    args = settle(["--model", "rnn", "--num_samples", "300", "--recipe", "default"]).config  # turned off by name
    assert (args.recipe, args.epochs, args.batch_size) == ("default", 10, 100)
    args = settle(["--model", "rnn", "--recipe", "small-data", "--batch_size", "10"]).config  # asked for by name
    assert (args.recipe, args.epochs, args.batch_size, args.lr_decay) == ("small-data", 100, 10, 1.0)
    line = settle(["--model", "rnn", "--num_samples", "300"]).config.recipe_line
    assert line == ("recipe small-data (--num_samples 300 <= 1000 with no --epochs/--batch_size/--lr_decay; "
                    "--recipe default turns it off): epochs 100, batch_size 50, lr_decay 1, val_samples 100, dropout 0")


def test_inference_draws_train_images_from_the_checkpoints_own_subset(fake_coco, tmp_path, capsys):
    training.main(["--model", "rnn", "--data_dir", str(fake_coco), "--num_samples", "12", "--hidden_dim", "8",
                   "--wordvec_dim", "8", "--epochs", "1", "--seed", "5", "--checkpoint", str(tmp_path / "r.npz"),
                   "--out_dir", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    data = load_coco_data(fake_coco)
    subset = np.unique(data["train_image_idxs"][subset_rows(300, 12, 5)])
    assert f"12 training captions of {len(subset)} images (a seeded subset; the split has 60)" in out
    image_of = {captioning.resolve_location(url, fake_coco): i for i, url in enumerate(data["train_urls"])}
    trained = set(subset.tolist())

    def shown(*extra):
        inference.main(["--model", "rnn", "--checkpoint", str(tmp_path / "r.npz"), "--data_dir", str(fake_coco),
                        "--num_images", "4", "--out_dir", str(tmp_path), *extra])
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]

    panels = shown()
    assert len(panels) == 8
    assert all(line.split("] ")[1].startswith("train, trained on: ") for line in panels[:4])
    assert {image_of[line.split(": ", 1)[1]] for line in panels[:4]} <= trained
    assert all(line.split("] ")[1].startswith("val, not trained on: ") for line in panels[4:])
    assert (tmp_path / "r_train_val_greedy_captions.png").is_file()

    panels = shown("--split", "train", "--num_samples", "200", "--num_images", "12")  # another, larger subset
    assert len(panels) == 12
    for line in panels:
        status = "trained on" if image_of[line.split(": ", 1)[1]] in trained else "not trained on"
        assert line.split("] ")[1].startswith(f"train, {status}: "), line
    assert any("not trained on" in line for line in panels)
    assert (tmp_path / "r_train_greedy_captions.png").is_file()

    shown("--split", "val", "--beam_size", "2")
    assert (tmp_path / "r_val_beam2_captions.png").is_file()  # beam search has its own figure


def test_long_captions_are_wrapped_and_cut_to_fit_their_panel():
    long = " ".join(["word"] * 60)
    title = captioning.panel_title({"label": "train, trained on", "truth": long, "predicted": long}, "lstm")
    lines = title.splitlines()
    assert lines[0] == "train, trained on" and len(lines) == 1 + 3 + 3
    assert max(len(line) for line in lines) <= 40 and lines[3].endswith("...") and lines[6].endswith("...")


def test_the_original_repositorys_image_and_optim_import_paths(tmp_path, capsys):
    """Its inference.py imports core.image_utils.image_from_url and its solver core.optim (the
    CS231n paths). Breaks caught: either module missing, image_from_url not reading a file URL or
    raising where CS231n's returns None."""
    from PIL import Image

    import core.image_utils
    import core.optim
    from core.training import optim

    assert core.optim.adam is optim.adam and core.optim.sgd_momentum is optim.sgd_momentum
    pixels = np.zeros((5, 7, 3), np.uint8)
    pixels[1, 2] = (200, 10, 30)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(core.image_utils.image_from_url((tmp_path / "a.png").as_uri()), pixels)
    assert core.image_utils.image_from_url((tmp_path / "missing.png").as_uri()) is None
    assert "cannot read an image from" in capsys.readouterr().out
