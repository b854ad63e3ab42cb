"""Speed of the from-scratch decoders next to PyTorch's built-in layers, printed as one JSON object.

Usage:
    python benchmarks/bench_decoders.py            # the shapes of the performance issue (rnn, lstm, gru, transformer)
    python benchmarks/bench_decoders.py --quick    # fewer repetitions

Shapes: N=100 captions of 17 tokens (T=16 steps), D=512 features, W=256 word vectors,
H=512 hidden, V=1004 words, float32, 2 threads; the decoders over regions read R=49 regions of
G=64 dimensions (attention size A=256). Each figure is the median of several
repetitions after a warm-up; ours and the built-in are timed in alternating blocks, so
that a drifting machine load affects both. Ratios are ours / built-in (lower is better).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.util.memory import keep_freed_memory  # noqa: E402
from core.model.attention_lstm import AttentionLSTM  # noqa: E402
from core.model.updown import UpDown  # noqa: E402
from core.model.region_transformer import RegionTransformer  # noqa: E402
from core.model.rnn_model import CELLS, CaptioningRNN  # noqa: E402
from core.model.transformer import CaptioningTransformer  # noqa: E402
from lstm_utils import lstm_step_forward  # noqa: E402
from rnn_utils import rnn_step_forward  # noqa: E402

N, T, D, W, H, V = 100, 16, 512, 256, 512, 1004
R, G, A = 49, 64, 256  # regions (7 x 7 pool5), their PCA dimensions, attention size


def paired_seconds(ours, theirs, repeats, rounds=3):
    """Median times of two functions timed in alternating blocks (ours, theirs, ours, ...),
    each block warmed up first, so that drifting machine load hits both alike while neither
    shares the CPU with the other's thread pool -> (ours_s, theirs_s)."""
    a, b = [], []
    for _ in range(rounds):
        for fn, times in ((ours, a), (theirs, b)):
            fn()
            for _ in range(max(repeats // rounds, 1)):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def median_seconds(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def vocab():
    words = ["<NULL>", "<START>", "<END>", "<UNK>"] + [f"w{i}" for i in range(V - 4)]
    return {w: i for i, w in enumerate(words)}


def step_flops(cell_type):
    """Matrix-product FLOPs of one training step (forward + backward), counting the vocabulary
    projection at every time step as the built-in computes it (ours skips masked steps)."""
    G = CELLS[cell_type].gates * H
    proj, inproj, rec, voc = 2 * N * D * H, 2 * N * T * W * G, 2 * N * T * H * G, 2 * N * T * H * V
    forward = proj + inproj + rec + voc
    backward = 2 * voc + 2 * inproj + 2 * rec + proj
    return forward + backward


def matmul_products(cell_type, rows, rng):
    """The matrix products of one numpy training step, with their shapes and transposes and
    nothing else -> a function running them. Timing it gives the floor that numpy's BLAS sets
    for our step: the step itself adds only elementwise work on top.
    rows: caption positions with a target word (the vocabulary products use only those)."""
    G = CELLS[cell_type].gates * H

    def mat(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    features, W_proj, x, Wx, Wh = mat(N, D), mat(D, H), mat(N * T, W), mat(W, G), mat(H, G)
    h, W_vocab, dscores, da, das = mat(N * T, H), mat(H, V), mat(rows, V), mat(N, G), mat(N * T, G)

    def run():
        features @ W_proj, x @ Wx  # h0, all input projections
        for _ in range(T):
            h[:N] @ Wh
        h[:rows] @ W_vocab
        h[:rows].T @ dscores, dscores @ W_vocab.T  # dW_vocab, dh
        for _ in range(T):
            da @ Wh.T  # dh of the previous step
        das @ Wx.T, x.T @ das, h.T @ das  # dx, dWx, dWh
        features.T @ h[:N]  # dW_proj

    return run


BUILT_IN = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class TorchRecurrent(nn.Module):
    """The same captioning computation from PyTorch built-ins."""

    def __init__(self, cell_type):
        super().__init__()
        self.embed = nn.Embedding(V, W)
        self.proj = nn.Linear(D, H)
        self.rnn = BUILT_IN[cell_type](W, H, batch_first=True)
        self.out = nn.Linear(H, V)
        self.cell_type = cell_type

    def loss(self, features, captions):
        h0 = self.proj(features)[None]
        state = (h0, torch.zeros_like(h0)) if self.cell_type == "lstm" else h0
        h, _ = self.rnn(self.embed(captions[:, :-1]), state)
        scores = self.out(h)
        return F.cross_entropy(scores.reshape(-1, V), captions[:, 1:].reshape(-1), ignore_index=0,
                               reduction="sum") / captions.shape[0]


class TorchTransformer(nn.Module):
    """nn.TransformerDecoder with the sizes of our CaptioningTransformer."""

    def __init__(self, E, heads, layers):
        super().__init__()
        self.embed = nn.Embedding(V, E)
        self.proj = nn.Linear(D, E)
        layer = nn.TransformerDecoderLayer(E, heads, dim_feedforward=2048, dropout=0.1,
                                           batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.out = nn.Linear(E, V)
        self.register_buffer("pe", torch.randn(1, 50, E))

    def loss(self, features, captions):
        x = self.embed(captions[:, :-1]) + self.pe[:, :T]
        mask = nn.Transformer.generate_square_subsequent_mask(T)
        h = self.decoder(x, self.proj(features)[:, None], tgt_mask=mask, tgt_is_causal=True)
        scores = self.out(h)
        return F.cross_entropy(scores.reshape(-1, V), captions[:, 1:].reshape(-1), ignore_index=0,
                               reduction="sum") / captions.shape[0]


def torch_attention_lstm(x, a, h0, c0, p):
    """attention_lstm_utils.py's equations in torch autograd, the reference of its tests and of the
    speed rows: tensors as att_lstm_forward's arguments, p a dict of its WEIGHTS -> (h (N, T, H),
    alpha (N, T, R)). The regions' projection is computed once, as ours is."""
    H = h0.shape[1]
    a_proj = a @ p["W_att_a"] + p["b_att"]
    h, c, hs, alphas = h0, c0, [], []
    for t in range(x.shape[1]):
        e = torch.tanh(a_proj + (h @ p["W_att_h"])[:, None]) @ p["w_att"]
        alpha = torch.softmax(e, dim=1)
        z = torch.sigmoid(h @ p["w_beta"] + p["b_beta"])[:, None] * (alpha[:, :, None] * a).sum(1)
        g = x[:, t] @ p["Wx"] + z @ p["Wz"] + h @ p["Wh"] + p["b"]
        i, f, o = torch.sigmoid(g[:, :3 * H]).split(H, dim=1)
        c = f * c + i * torch.tanh(g[:, 3 * H:])
        h = o * torch.tanh(c)
        hs.append(h)
        alphas.append(alpha)
    return torch.stack(hs, 1), torch.stack(alphas, 1)


class TorchAttentionLSTM(nn.Module):
    """core/model/attention_lstm.py's model in torch autograd, same weights and shapes (the speed
    reference: torch has no fused kernel for these equations)."""

    def __init__(self, ours):
        super().__init__()
        self.p = nn.ParameterDict({k: nn.Parameter(torch.from_numpy(v.copy()))
                                   for k, v in ours.params.items()})
        self.alpha_c = ours.alpha_c

    def loss(self, regions, captions):
        p = self.p
        a = regions + p["P"]
        mean = a.mean(dim=1)
        h0 = torch.tanh(mean @ p["W_init_h"] + p["b_init_h"])
        c0 = torch.tanh(mean @ p["W_init_c"] + p["b_init_c"])
        h, alpha = torch_attention_lstm(p["W_embed"][captions[:, :-1]], a, h0, c0, p)
        mask = captions[:, 1:] != 0
        scores = h[mask] @ p["W_vocab"] + p["b_vocab"]
        loss = F.cross_entropy(scores, captions[:, 1:][mask], reduction="sum") / len(captions)
        left = 1 - (alpha * mask[:, :, None]).sum(dim=1)
        return loss + self.alpha_c * (left * left).mean()

    @torch.no_grad()
    def greedy(self, regions, max_length):
        """The same greedy decoding as ours, step by step in torch."""
        p = self.p
        a = regions + p["P"]
        a_proj = a @ p["W_att_a"] + p["b_att"]
        mean = a.mean(dim=1)
        h = torch.tanh(mean @ p["W_init_h"] + p["b_init_h"])
        c = torch.tanh(mean @ p["W_init_c"] + p["b_init_c"])
        words = torch.full((len(a),), 1, dtype=torch.long)
        H = h.shape[1]
        out = []
        for _ in range(max_length):
            alpha = torch.softmax(torch.tanh(a_proj + (h @ p["W_att_h"])[:, None]) @ p["w_att"],
                                  dim=1)
            z = torch.sigmoid(h @ p["w_beta"]
                              + p["b_beta"])[:, None] * (alpha[:, :, None] * a).sum(1)
            h, c = torch_lstm(p["W_embed"][words] @ p["Wx"] + z @ p["Wz"] + h @ p["Wh"] + p["b"], c)
            words = (h @ p["W_vocab"] + p["b_vocab"]).argmax(dim=1)
            out.append(words)
        return torch.stack(out, dim=1).numpy()


def torch_lstm(g, c):
    """The LSTM update of lstm_utils.py's gate order (i, f, o, g) in torch: gate pre-activations
    g (N, 4H), c (N, H) -> h, c (N, H)."""
    H = c.shape[1]
    i, f, o = torch.sigmoid(g[:, :3 * H]).split(H, dim=1)
    c = f * c + i * torch.tanh(g[:, 3 * H:])
    return o * torch.tanh(c), c


def torch_updown(x, v, p, mask=None):
    """updown_utils.py's equations in torch autograd, the reference of its tests and of the speed
    rows: tensors as updown_forward's arguments (mask (N, R) bool or None: an image's own regions),
    p a dict of its WEIGHTS -> (h2 (N, T, H), alpha (N, T, R)). The regions', mean region's and
    words' projections are computed once, as ours are."""
    N, T, _ = x.shape
    H = p["W1h"].shape[0]
    h1 = c1 = h2 = c2 = torch.zeros(N, H, dtype=x.dtype)
    mean = v.mean(dim=1) if mask is None else (
        (v * mask[:, :, None]).sum(dim=1) / mask.sum(dim=1, keepdim=True))
    xa1 = x @ p["W1x"] + (mean @ p["W1v"] + p["b1"])[:, None]  # (N, T, 4H)
    v_proj = v @ p["W_va"]
    outs, alphas = [], []

    for t in range(T):
        h1, c1 = torch_lstm(xa1[:, t] + h2 @ p["W1h2"] + h1 @ p["W1h"], c1)
        scores = torch.tanh(v_proj + (h1 @ p["W_ha"])[:, None]) @ p["w_a"]  # (N, R)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(scores, dim=1)
        context = (alpha[:, :, None] * v).sum(dim=1)
        h2, c2 = torch_lstm(context @ p["W2v"] + h1 @ p["W2h1"] + h2 @ p["W2h"] + p["b2"], c2)
        outs.append(h2)
        alphas.append(alpha)
    return torch.stack(outs, dim=1), torch.stack(alphas, dim=1)


class TorchUpDown(nn.Module):
    """core/model/updown.py's model in torch autograd, same weights and shapes."""

    def __init__(self, ours):
        super().__init__()
        self.p = nn.ParameterDict({k: nn.Parameter(torch.from_numpy(v.copy()))
                                   for k, v in ours.params.items()})

    def loss(self, regions, captions):
        """regions (N, R, D) tensor of a grid, or Regions of tensors (boxes: features (N, K, D),
        geometry (N, K, 5), mask (N, K)) when the model reads boxes."""
        p = self.p
        if "W_geo" in p:  # boxes: the geometry's projection, the padded rows masked
            v, mask = regions.features + regions.geometry @ p["W_geo"], regions.mask
        else:
            v, mask = regions + p["P"], None
        h2, _ = torch_updown(p["W_embed"][captions[:, :-1]], v, p, mask)
        mask = captions[:, 1:] != 0
        scores = h2[mask] @ p["W_vocab"] + p["b_vocab"]
        return F.cross_entropy(scores, captions[:, 1:][mask], reduction="sum") / len(captions)

    @torch.no_grad()
    def greedy(self, regions, max_length):
        """The same greedy decoding as ours, step by step in torch."""
        p = self.p
        v = regions + p["P"]
        v_proj, v_part = v @ p["W_va"], v.mean(dim=1) @ p["W1v"] + p["b1"]
        H = p["W1h"].shape[0]
        h1 = c1 = h2 = c2 = torch.zeros(len(v), H)
        words = torch.full((len(v),), 1, dtype=torch.long)
        out = []
        for _ in range(max_length):
            h1, c1 = torch_lstm(p["W_embed"][words] @ p["W1x"] + v_part + h2 @ p["W1h2"]
                                + h1 @ p["W1h"], c1)
            alpha = torch.softmax(torch.tanh(v_proj + (h1 @ p["W_ha"])[:, None]) @ p["w_a"], dim=1)
            context = (alpha[:, :, None] * v).sum(1)
            h2, c2 = torch_lstm(context @ p["W2v"] + h1 @ p["W2h1"] + h2 @ p["W2h"] + p["b2"], c2)
            words = (h2 @ p["W_vocab"] + p["b_vocab"]).argmax(dim=1)
            out.append(words)
        return torch.stack(out, dim=1).numpy()


def region_decoder_rows(name, ours, theirs, regions, captions, caps_t, repeats):
    """A numpy decoder over regions against the same model in torch autograd: the training step
    and greedy decoding of 100 captions of 30 words -> the two result rows."""
    regions_t = torch.from_numpy(regions)

    def torch_step():
        theirs.zero_grad(set_to_none=True)
        theirs.loss(regions_t, caps_t).backward()

    mine = ours.loss(regions, captions)[0]
    assert abs(mine - theirs.loss(regions_t, caps_t).item()) < 1e-3 * abs(mine)  # the same model
    t_ours, t_torch = paired_seconds(lambda: ours.loss(regions, captions), torch_step, repeats)
    rows = {f"{name}_train_step": {"ours_s": round(t_ours, 4), "torch_autograd_s": round(t_torch, 4),
                                   "ratio": round(t_ours / t_torch, 2)}}
    ours.params["b_vocab"][2] = -1e4  # never <END>: every caption runs the full 30 steps
    theirs.p["b_vocab"].data[2] = -1e4
    assert (ours.sample(regions, max_length=30) == theirs.greedy(regions_t, 30)).mean() > 0.99
    t_sample, t_torch = paired_seconds(lambda: ours.sample(regions, max_length=30),
                                       lambda: theirs.greedy(regions_t, 30), repeats)
    rows[f"{name}_greedy_100x30"] = {"ours_s": round(t_sample, 4), "torch_s": round(t_torch, 4),
                                     "ratio": round(t_sample / t_torch, 2)}
    return rows


def plain_greedy(model, features, max_length):
    """Greedy decoding written the way the original repository's (CS231n's) sample loop decodes:
    embed the previous word, one full step of the cell, an affine to the scores, their argmax;
    every caption runs max_length steps. The reference our decoding is compared with."""
    p = model.params
    h = features @ p["W_proj"] + p["b_proj"]
    c = np.zeros_like(h)
    words = np.full(len(features), model.start_idx)
    captions = np.full((len(features), max_length), model.null_idx)
    for t in range(max_length):
        x = p["W_embed"][words]
        if model.cell_type == "lstm":
            h, c, _ = lstm_step_forward(x, h, c, p["Wx"], p["Wh"], p["b"])
        else:
            h, _ = rnn_step_forward(x, h, p["Wx"], p["Wh"], p["b"])
        words = (h @ p["W_vocab"] + p["b_vocab"]).argmax(axis=1)
        captions[:, t] = words
    return captions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of 15")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result_memory = keep_freed_memory()  # as training.py does; it applies to both sides
    repeats = 3 if args.quick else 15
    rng = np.random.default_rng(0)
    features = rng.standard_normal((N, D)).astype(np.float32)
    captions = rng.integers(4, V, size=(N, T + 1))
    captions[:, 0] = 1
    captions[:, -3] = 2
    captions[:, -2:] = 0
    feats_t, caps_t = torch.from_numpy(features), torch.from_numpy(captions)
    result = {"shapes": dict(N=N, T=T, D=D, W=W, H=H, V=V), "threads": args.threads,
              "keep_freed_memory": result_memory,
              "torch": torch.__version__, "numpy": np.__version__}

    a = rng.standard_normal((N * T, H), dtype=np.float32)
    b = rng.standard_normal((H, 4 * H), dtype=np.float32)
    result["numpy_matmul_gflops"] = round(2 * N * T * H * 4 * H / median_seconds(lambda: a @ b,
                                                                                 repeats * 5) / 1e9,
                                          1)

    for cell in CELLS:
        ours = CaptioningRNN(vocab(), input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell,
                             seed=0)
        theirs = TorchRecurrent(cell)

        def torch_step():
            theirs.zero_grad(set_to_none=True)
            theirs.loss(feats_t, caps_t).backward()

        t_ours, t_torch = paired_seconds(lambda: ours.loss(features, captions), torch_step, repeats)
        rows = int((captions[:, 1:] != 0).sum())
        t_products = median_seconds(matmul_products(cell, rows, rng), repeats)
        result[f"{cell}_train_step"] = {"ours_s": round(t_ours, 4), "torch_s": round(t_torch, 4),
                                        "ratio": round(t_ours / t_torch, 2),
                                        "ours_gflops": round(step_flops(cell) / t_ours / 1e9, 1),
                                        "ours_matmuls_only_s": round(t_products, 4),
                                        "matmuls_only_ratio": round(t_products / t_torch, 2)}
        ours.params["b_vocab"][2] = -1e4  # never <END>: every caption runs the full 30 steps
        if cell in ("rnn", "lstm"):  # the cells the original repository has
            assert (plain_greedy(ours, features, 30) == ours.sample(features, max_length=30)).all()
            t_sample, t_plain = paired_seconds(lambda: ours.sample(features, max_length=30),
                                               lambda: plain_greedy(ours, features, 30), repeats)
            result[f"{cell}_greedy_100x30"] = {"ours_s": round(t_sample, 4),
                                               "original_loop_s": round(t_plain, 4),
                                               "ratio": round(t_sample / t_plain, 2)}
        else:
            result[f"{cell}_greedy_100x30_s"] = round(median_seconds(lambda: ours.sample(features, max_length=30),
                                                                     repeats), 4)

    regions = (0.5 * rng.standard_normal((N, R, G))).astype(np.float32)
    regions_t = torch.from_numpy(regions)
    for name, model_class, oracle in (("attention_lstm", AttentionLSTM, TorchAttentionLSTM),
                                      ("updown", UpDown, TorchUpDown)):
        ours = model_class(vocab(), input_dim=G, num_regions=R, wordvec_dim=W, hidden_dim=H,
                           attention_dim=A, seed=0)
        result.update(region_decoder_rows(name, ours, oracle(ours), regions, captions, caps_t,
                                          repeats))

    torch.manual_seed(0)
    ours_t = CaptioningTransformer(vocab(), input_dim=D, wordvec_dim=256, num_heads=2, num_layers=2)
    theirs_t = TorchTransformer(256, 2, 2)
    steps = []
    for model in (ours_t, theirs_t):
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        model.train()

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            model.loss(feats_t, caps_t).backward()
            opt.step()

        steps.append(step)
    timings = dict(zip(("ours_s", "torch_s"), paired_seconds(*steps, repeats)))
    result["transformer_train_step"] = {k: round(v, 4) for k, v in timings.items()}
    result["transformer_train_step"]["ratio"] = round(timings["ours_s"] / timings["torch_s"], 2)
    with torch.no_grad():
        ours_t.output.bias[2] = -1e4  # never <END>: every caption runs the full 30 steps
    t_cached = median_seconds(lambda: ours_t.sample(features, max_length=30), repeats)
    t_uncached = median_seconds(lambda: ours_t.sample_uncached(features, max_length=30),
                                max(repeats // 2, 2), 1)
    result["transformer_greedy_100x30"] = {"cached_s": round(t_cached, 4),
                                           "uncached_s": round(t_uncached, 4),
                                           "speedup": round(t_uncached / t_cached, 2)}
    ours_r = RegionTransformer(vocab(), input_dim=G, wordvec_dim=256, num_regions=R, num_heads=2,
                               num_layers=2)
    with torch.no_grad():
        ours_r.output.bias[2] = -1e4
    t_cached = median_seconds(lambda: ours_r.sample(regions, max_length=30), repeats)
    t_uncached = median_seconds(lambda: ours_r.sample_uncached(regions, max_length=30),
                                max(repeats // 2, 2), 1)
    result["region_transformer_greedy_100x30"] = {"cached_s": round(t_cached, 4),
                                                  "uncached_s": round(t_uncached, 4),
                                                  "speedup": round(t_uncached / t_cached, 2)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
