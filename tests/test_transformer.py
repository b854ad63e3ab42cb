import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.model.checkpoint import load_checkpoint, save_checkpoint
from core.model.transformer import CaptioningTransformer
from core.layers.transformer_layers import MultiHeadAttention, PositionalEncoding, TransformerDecoderLayer

VOCAB = {w: i for i, w in enumerate(["<NULL>", "<START>", "<END>", "<UNK>", "cat", "dog", "sits", "runs"])}


def test_positional_encoding_values():
    pe = PositionalEncoding(6, dropout=0.0, max_len=10)
    out = pe(torch.zeros(1, 4, 6))
    for t in range(4):
        for j in range(3):
            angle = t / 10000 ** (2 * j / 6)
            assert out[0, t, 2 * j].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert out[0, t, 2 * j + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    np.testing.assert_allclose(pe(torch.zeros(1, 2, 6), offset=2).numpy(), out[:, 2:4].numpy())
    with pytest.raises(ValueError, match="max_len"):
        pe(torch.zeros(1, 11, 6))


@pytest.mark.parametrize("mode", ["cross", "self", "self_causal", "single_key"])
def test_multihead_attention_matches_sdpa(mode):
    """Every path of our attention (separate q/k/v, fused self-attention projection, the
    single-key shortcut) against F.scaled_dot_product_attention with the same weights."""
    torch.manual_seed(0)
    N, T, E, nh = 2, 5, 8, 2
    S = {"cross": 3, "single_key": 1}.get(mode, T)
    attn = MultiHeadAttention(E, nh, dropout=0.5).eval()
    assert [name for name, _ in attn.named_children()][:4] == ["key", "query", "value", "proj"]
    q = torch.randn(N, T, E)
    k, v = (q, q) if mode.startswith("self") else (torch.randn(N, S, E), torch.randn(N, S, E))
    mask = torch.tril(torch.ones(T, S)) if mode == "self_causal" else None
    out = attn(q, k, v, attn_mask=mask)

    def heads(x):
        return x.view(N, -1, nh, E // nh).transpose(1, 2)

    ref = F.scaled_dot_product_attention(heads(attn.query(q)), heads(attn.key(k)), heads(attn.value(v)),
                                         attn_mask=None if mask is None else mask.bool())
    ref = attn.proj(ref.transpose(1, 2).reshape(N, T, E))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_decoder_layer_matches_torch_transformer_decoder_layer():
    """Copy our weights into nn.TransformerDecoderLayer (post-norm, ReLU) and compare in eval mode."""
    torch.manual_seed(1)
    E, nh, Fd = 8, 2, 16
    ours = TransformerDecoderLayer(E, nh, dim_feedforward=Fd).eval()
    ref = torch.nn.TransformerDecoderLayer(E, nh, dim_feedforward=Fd, batch_first=True, norm_first=False).eval()
    with torch.no_grad():
        for mine, theirs in ((ours.self_attn, ref.self_attn), (ours.multihead_attn, ref.multihead_attn)):
            theirs.in_proj_weight.copy_(torch.cat([mine.query.weight, mine.key.weight, mine.value.weight]))
            theirs.in_proj_bias.copy_(torch.cat([mine.query.bias, mine.key.bias, mine.value.bias]))
            theirs.out_proj.weight.copy_(mine.proj.weight)
            theirs.out_proj.bias.copy_(mine.proj.bias)
        for name in ("linear1", "linear2", "norm1", "norm2", "norm3"):
            getattr(ref, name).load_state_dict(getattr(ours, name).state_dict())
    tgt, memory = torch.randn(3, 6, E), torch.randn(3, 1, E)
    mask = torch.tril(torch.ones(6, 6))
    torch_mask = torch.zeros(6, 6).masked_fill(mask == 0, float("-inf"))
    torch.testing.assert_close(ours(tgt, memory, tgt_mask=mask), ref(tgt, memory, tgt_mask=torch_mask),
                               rtol=1e-5, atol=1e-5)


def _model(**kw):
    torch.manual_seed(0)
    return CaptioningTransformer(VOCAB, input_dim=6, wordvec_dim=16, num_heads=2, num_layers=2,
                                 dim_feedforward=32, **kw)


def test_transformer_is_causal():
    model = _model().eval()
    features = torch.randn(2, 6)
    captions = torch.tensor([[1, 4, 6, 5, 7], [1, 5, 7, 4, 6]])
    changed = captions.clone()
    changed[:, 3] = 3
    with torch.no_grad():
        a, b = model(features, captions), model(features, changed)
    assert a.shape == (2, 5, len(VOCAB))
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_loss_is_summed_over_words_and_averaged_over_captions():
    model = _model().eval()
    features = torch.randn(2, 6)
    captions = torch.tensor([[1, 4, 2, 0], [1, 5, 6, 2]])
    with torch.no_grad():
        scores = model(features, captions[:, :-1])
        logp = F.log_softmax(scores, dim=-1)
        targets = captions[:, 1:]
        expected = -(logp.gather(2, targets[..., None])[..., 0] * (targets != 0)).sum() / 2
        torch.testing.assert_close(model.loss(features, captions), expected)


def test_overfits_tiny_data_and_samples_it_back():
    model = _model()
    features = torch.randn(4, 6)
    captions = torch.tensor([[1, 4, 6, 2, 0], [1, 5, 7, 2, 0], [1, 4, 7, 6, 2], [1, 5, 6, 2, 0]])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(200):
        loss = model.loss(features, captions)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first
    sampled = model.sample(features.numpy(), max_length=6)
    expected = np.zeros((4, 6), dtype=np.int64)
    expected[:, :4] = captions[:, 1:].numpy()
    np.testing.assert_array_equal(sampled, expected)
    assert model.training  # sampling restores the mode it found


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="max_length=9 needs a model built with max_length >= 9"):
        _model(max_length=8).sample(np.zeros((1, 6), dtype=np.float32), max_length=9)


def test_solver_device_plumbing_on_cpu(fake_coco):
    """What --device/--amp do, checked where CI can: amp is off off CUDA (bfloat16 autocast on the
    CPU would change every loss), batches follow the model, training lowers the loss."""
    from core.data.coco_utils import load_coco_data
    from core.training.solver_torch import TorchSolver

    data = load_coco_data(fake_coco)
    torch.manual_seed(0)
    model = CaptioningTransformer(data["word_to_idx"], input_dim=512, wordvec_dim=16, num_heads=2, num_layers=1,
                                  dim_feedforward=32, seed=0)
    solver = TorchSolver(model, data, learning_rate=1e-3, device="cpu", amp=True, num_epochs=2, batch_size=100,
                         val_samples=50, verbose=False)
    assert solver.amp is False  # the break caught: autocast asked for on the CPU
    history = solver.train()
    assert model.device.type == "cpu"
    assert history["train_loss"][1] < history["train_loss"][0]
    assert solver.learning_rate == pytest.approx(1e-3)  # lr_decay defaults to 1
    captions = model.sample(data["val_features"][:3], max_length=5)
    assert isinstance(captions, np.ndarray) and captions.shape == (3, 5)


def test_the_cross_attention_query_and_key_over_one_memory_token_are_not_trained(fake_coco):
    """Break caught: the softmax over a single key is 1 whatever the query, so these weights never
    reach the loss; they must not be counted as trained, tracked by Adam or changed."""
    from core.data.coco_utils import load_coco_data
    from core.training.solver_torch import TorchSolver

    data = load_coco_data(fake_coco, max_train=50)
    model = CaptioningTransformer(data["word_to_idx"], input_dim=512, wordvec_dim=16, num_heads=2, num_layers=2,
                                  dim_feedforward=32, seed=0)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".multihead_attn.query." in k
              or ".multihead_attn.key." in k}
    assert len(frozen) == 8  # weight and bias of query and key, two layers
    solver = TorchSolver(model, data, learning_rate=1e-2, num_epochs=1, batch_size=25, val_samples=10, verbose=False)
    tracked = {id(p) for group in solver.optimizer.param_groups for p in group["params"]}
    assert all(id(p) not in tracked for n, p in model.named_parameters() if n in frozen)
    assert len(tracked) == sum(1 for p in model.parameters() if p.requires_grad) == len(list(model.parameters())) - 8
    solver.train()
    for k, v in frozen.items():
        assert torch.equal(model.state_dict()[k], v), k
