"""Decoders over object regions (boxes): each image has its own number of boxes, padded to the
batch's most, the padding outside the mask (core/data/regions.py), and a box's geometry is projected into its feature. Padding must
change nothing, the masked gradients must be exact (centered differences, torch autograd), and a
model of one kind of features refuses the other in one line."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.bench_decoders import TorchUpDown
from core.layers.transformer_layers import MultiHeadAttention
from core.data.feature_kinds import FEATURE_KINDS
from core.data.regions import Regions
from core.model.attention_lstm import AttentionLSTM
from core.model.checkpoint import check_against_data
from core.model.registry import MODEL_TYPES
from core.model.updown import UpDown
from core.util.errors import UserError
from tests.helpers import box_rows, numeric_gradient, rel_error, tiny_data, tiny_model
from tests.test_attention_lstm import VOCAB, _captions, _train

WORDS = ["<NULL>", "<START>", "<END>", "<UNK>", "red", "green", "cat", "dog", "sits"]
BOX_DECODERS = [m for m, t in MODEL_TYPES.items() if "boxes" in t.feature_kinds]


def _loss_and_grads(model, features, captions):
    """(loss, name -> gradient) of either backend, dropout off."""
    if isinstance(model, torch.nn.Module):
        model.eval()
        model.zero_grad()
        loss = model.loss(model.inputs(features), torch.from_numpy(captions).long())
        loss.backward()
        return float(loss.detach()), {k: p.grad.numpy().copy() for k, p in model.named_parameters()
                             if p.grad is not None}
    loss, grads = model.loss(features, captions)
    return loss, grads


@pytest.mark.parametrize("name", BOX_DECODERS)
def test_padding_an_images_boxes_or_reordering_them_changes_nothing(name):
    """Padding is the mask, never a value: three more boxes per image of random features and
    geometry outside the mask change nothing. Breaks caught: a padded box attended to (the mask
    dropped, or -inf not applied), padding in the mean region or in the attention penalty's count,
    a box's place read from its position in the array instead of its geometry."""
    rng = np.random.default_rng(0)
    data = dict(tiny_data("boxes", rng, images=4), idx_to_word=WORDS)
    model = tiny_model(name, data, seed=1, alpha_c=0.5)
    features, captions = data["train_features"], data["train_captions"]
    loss, grads = _loss_and_grads(model, features, captions)
    noise = rng.standard_normal((4, 3, features.shape[2])).astype(np.float32)
    padded = Regions(np.concatenate([features.features, noise], axis=1),
                     np.concatenate([features.geometry, rng.random((4, 3, 5), np.float32)], axis=1),
                     np.concatenate([features.mask, np.zeros((4, 3), bool)], axis=1))
    shuffled = Regions(features.features.copy(), features.geometry.copy(), features.mask)
    for n, k in enumerate(features.mask.sum(axis=1)):  # each image's own boxes in another order
        order = rng.permutation(k)
        shuffled.features[n, :k] = features.features[n, order]
        shuffled.geometry[n, :k] = features.geometry[n, order]
    for other in (padded, shuffled):
        other_loss, other_grads = _loss_and_grads(model, other, captions)
        assert other_loss == pytest.approx(loss, rel=1e-5)
        for k in grads:
            np.testing.assert_allclose(other_grads[k], grads[k], rtol=1e-4, atol=1e-6, err_msg=k)
    with torch.no_grad() if isinstance(model, torch.nn.Module) else np.errstate():
        np.testing.assert_array_equal(model.sample(padded, max_length=6),
                                      model.sample(features, max_length=6))


@pytest.mark.parametrize("cls", [AttentionLSTM, UpDown])
def test_box_loss_gradients_with_padded_boxes(cls):
    """Centered differences in float64 of every weight, W_geo (the geometry's projection) included,
    over images with 1, 2 and 3 of their 3 boxes. Breaks caught: a padded box's gradient not zeroed,
    W_geo's gradient not summed over the boxes, the masked mean's backward."""
    rng = np.random.default_rng(0)
    sizes = dict(input_dim=4, wordvec_dim=5, hidden_dim=6, attention_dim=4)
    model = cls(VOCAB, dtype=np.float64, seed=0, features="boxes", **sizes)
    for k in ("b", "b1", "b2", "b_vocab", "b_att", "b_init_h"):  # zero at init: make them matter
        if k in model.params:
            model.params[k] += rng.standard_normal(model.params[k].shape)
    model.params["W_embed"] *= 100
    features = box_rows(rng.standard_normal((3, 3, 4)), counts=[1, 2, 3])
    captions = _captions(rng, 3, 5)
    _, grads = model.loss(features, captions)
    assert "W_geo" in grads and "P" not in grads
    for name, param in model.params.items():
        numeric = numeric_gradient(lambda: model.loss(features, captions)[0], param, None)
        assert rel_error(grads[name], numeric) < 1e-7, name


def test_updown_over_boxes_matches_torch_autograd():
    """The loss and every gradient of the box Up-Down against the same equations in torch autograd
    (masked softmax by -inf, masked mean, the geometry's projection)."""
    rng = np.random.default_rng(2)
    model = UpDown(VOCAB, dtype=np.float64, seed=0, features="boxes", input_dim=4, wordvec_dim=5,
                   hidden_dim=6, attention_dim=4)
    features = box_rows(rng.standard_normal((3, 4, 4)), counts=[4, 1, 2])
    captions = _captions(rng, 3, 6)
    loss, grads = model.loss(features, captions)
    oracle = TorchUpDown(model)
    expected = oracle.loss(features.map(torch.from_numpy, torch.from_numpy),
                           torch.from_numpy(captions).long())
    expected.backward()
    assert loss == pytest.approx(float(expected.detach()), rel=1e-10)
    for name, param in oracle.p.items():
        np.testing.assert_allclose(grads[name], param.grad.numpy(), rtol=1e-8, atol=1e-10,
                                   err_msg=name)


def test_key_padding_mask_matches_scaled_dot_product_attention():
    """Our multi-head attention with an (N, 1, 1, S) key padding mask against
    F.scaled_dot_product_attention with the same boolean mask, eval mode."""
    torch.manual_seed(0)
    attention = MultiHeadAttention(8, 2, dropout=0.0).eval()
    query, memory = torch.randn(3, 5, 8), torch.randn(3, 4, 8)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    ours = attention(query, memory, memory, attn_mask=mask[:, None, None, :])
    q = attention._heads(attention.query(query))
    k, v = attention.project_kv(memory, memory)
    heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    expected = attention.proj(heads.transpose(1, 2).reshape(3, 5, 8))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_the_box_decoders_read_left_then_right_from_the_boxes_geometry():
    """The ordering task with boxes: two boxes whose features say only their colour, their places
    only in their geometry, listed in random order; the caption names the left colour, then the
    right one. Learned exactly by the Up-Down decoder over boxes. Break caught: the geometry not
    added (then the order cannot be told)."""
    def task(rng, n):
        colours = rng.integers(0, 2, size=(n, 2))  # left, right: red (0) or blue (1)
        features = np.zeros((n, 2, 4))
        features[np.arange(n)[:, None], [0, 1], colours] = 1.0  # one-hot colour in dims 0-1
        left, right = features[:, 0].copy(), features[:, 1].copy()
        geometry = {0: [0.05, 0.3, 0.35, 0.7], 1: [0.6, 0.3, 0.9, 0.7]}
        rows, places = np.zeros((n, 2, 4)), np.zeros((n, 2, 5))
        swap = rng.random(n) < 0.5  # the left box listed second half of the time
        for i in range(n):
            order = (1, 0) if swap[i] else (0, 1)
            for slot, which in enumerate(order):
                box = geometry[which]
                rows[i, slot] = (left if which == 0 else right)[i]
                places[i, slot, :4] = box
                places[i, slot, 4] = (box[2] - box[0]) * (box[3] - box[1])
        words = np.array([VOCAB["red"], VOCAB["blue"]])
        captions = np.stack([np.full(n, VOCAB["<START>"]), words[colours[:, 0]],
                             words[colours[:, 1]], np.full(n, VOCAB["<END>"])], axis=1)
        return Regions(rows.astype(np.float32), places.astype(np.float32)), captions

    features, captions = task(np.random.default_rng(4), 96)
    model = UpDown(VOCAB, input_dim=4, wordvec_dim=8, hidden_dim=16, attention_dim=8, seed=0,
                   features="boxes")
    _train(model, features, captions)
    test_features, test_captions = task(np.random.default_rng(5), 48)
    predicted = model.sample(test_features, max_length=3)
    assert (predicted == test_captions[:, 1:]).all(axis=1).mean() == 1.0


def test_a_model_of_one_kind_of_features_refuses_the_other(tmp_path):
    """A grid checkpoint used with box data (or a box one with grid data) is one line naming both
    kinds."""
    rng = np.random.default_rng(0)
    data = dict(tiny_data("grid", rng), idx_to_word=WORDS)
    config = tiny_model("updown", data).config()
    assert config["features"] == "grid"
    with pytest.raises(UserError, match="trained on grid features, not boxes: train with "
                                        "--features grid"):
        check_against_data(config, "m.npz", "updown", WORDS, None, "data", 6,
                           sizes={"features": "boxes"})
    box_model = tiny_model("updown", dict(tiny_data("boxes", rng), idx_to_word=WORDS))
    with pytest.raises(ValueError, match="do not fit this model's"):
        box_model.loss(data["train_features"], data["train_captions"])


def test_a_model_refuses_other_regions_of_the_same_size(fake_coco):
    """A box checkpoint records a digest of its regions' PCA; a dataset rebuilt with other boxes
    (same sizes, same vocabulary) is refused, and so is a checkpoint that records none on a
    dataset whose boxes a trained detector gave (it predates the record: the plain proposer's).
    Breaks caught: no record written; the digest not compared; the older checkpoint let through."""
    transform = {"components": np.eye(3, 4, dtype=np.float32)}
    identity = FEATURE_KINDS["boxes"].regions_identity(transform=transform,
                                                       info={"boxes": {"source": "learned"}})
    assert identity["regions_source"] == "learned" and len(identity["regions_id"]) == 16
    other = {"components": np.eye(3, 4, dtype=np.float32) * 2}
    assert FEATURE_KINDS["boxes"].regions_identity(transform=other)["regions_id"] != identity[
        "regions_id"]
    assert FEATURE_KINDS["fc7"].regions_identity(fake_coco) == {}
    rng = np.random.default_rng(0)
    config = tiny_model("updown", dict(tiny_data("boxes", rng), idx_to_word=WORDS)).config()
    mine = {"regions_id": "a" * 16, "regions_source": "learned"}

    def check(extra, regions):
        return check_against_data(dict(config, extra=extra), "m.npz", "updown", WORDS, None,
                                  "data", 6, regions=regions)

    check({"regions_id": "a" * 16}, mine)
    check({}, dict(mine, regions_source="plain"))  # older, on the proposer's boxes: as before
    with pytest.raises(UserError, match="trained on other region features than data's"):
        check({"regions_id": "b" * 16}, mine)
    with pytest.raises(UserError, match="predates data's regions, which come from the bottom-up "
                                        "detector trained here"):
        check({}, mine)


def test_the_features_flag_is_checked_against_the_model_type(capsys, fake_coco):
    """--features names a kind the decoder reads; unset, the row's default (or the --init_from
    checkpoint's own kind)."""
    import training
    from core.training.config import settle
    from tests.helpers import one_line_error

    one_line_error(capsys, lambda: training.main(["--model", "lstm", "--features", "boxes",
                                                  "--data_dir", str(fake_coco)]),
                   "--features boxes: a lstm reads fc7 features")
    assert settle(["--model", "updown", "--data_dir", str(fake_coco)]).config.features == "grid"
    assert settle(["--model", "updown", "--features", "boxes",
                   "--data_dir", str(fake_coco)]).config.features == "boxes"
    assert settle(["--model", "gru", "--data_dir", str(fake_coco)]).config.features == "fc7"
