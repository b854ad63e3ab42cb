"""Transformer building blocks written by hand in PyTorch (autograd does the backward pass).

Shape letters: N batch, S source length, T target length, E embedding dim,
nh number of heads, F feed-forward width.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal position code of "Attention Is All You Need" and applies dropout.

    pe[t, 2j] = sin(t / 10000^(2j/E)),  pe[t, 2j+1] = cos(t / 10000^(2j/E)).
    """

    def __init__(self, embed_dim, dropout=0.1, max_len=5000):
        super().__init__()
        if embed_dim % 2 != 0:
            raise ValueError(f"embed_dim must be even for the sin/cos code, got {embed_dim}")
        self.dropout = nn.Dropout(p=dropout)
        position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (max_len, 1)
        inv_freq = torch.exp(torch.arange(0, embed_dim, 2,
                                          dtype=torch.float32) * (-math.log(10000.0) / embed_dim))
        pe = torch.zeros(1, max_len, embed_dim)
        pe[0, :, 0::2] = torch.sin(position * inv_freq)
        pe[0, :, 1::2] = torch.cos(position * inv_freq)
        self.register_buffer("pe", pe)

    def forward(self, x, offset=0):
        """x (N, T, E) -> (N, T, E); offset shifts the positions (for incremental decoding)."""
        T = x.shape[1]
        if offset + T > self.pe.shape[1]:
            raise ValueError(f"sequence of {offset + T} positions exceeds "
                             f"max_len={self.pe.shape[1]}")
        return self.dropout(x + self.pe[:, offset:offset + T])


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention.

    Scores are q k^T / sqrt(E / nh); dropout is applied to the attention weights.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.1):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.key = nn.Linear(embed_dim, embed_dim)
        self.query = nn.Linear(embed_dim, embed_dim)
        self.value = nn.Linear(embed_dim, embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.attn_drop = nn.Dropout(dropout)
        self.n_head = num_heads
        self.emd_dim = embed_dim
        self.head_dim = embed_dim // num_heads

    def _heads(self, x):
        """x (N, L, E) -> (N, nh, L, E/nh)."""
        N, L, _ = x.shape
        return x.view(N, L, self.n_head, self.head_dim).transpose(1, 2)

    def forward(self, query, key, value, attn_mask=None):
        """query (N, T, E), key (N, S, E), value (N, S, E),
        attn_mask (T, S) where attn_mask[i, j] == 0 forbids target i to attend to source j, or
        (N, 1, 1, S) where attn_mask[n, 0, 0, j] == 0 forbids every target of row n to attend to
        source j (a key padding mask) -> output (N, T, E).
        """
        if query is key and key is value:  # self-attention: q, k and v from one matrix product
            weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # (3E, E)
            bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])  # (3E,)
            q, k, v = F.linear(query, weight, bias).split(self.emd_dim, dim=-1)  # each (N, T, E)
            return self._attend(self._heads(q), self._heads(k), self._heads(v), attn_mask)
        if key.shape[1] == 1 and attn_mask is None:  # one key: no scores needed (see attend)
            return self.attend(query, None, self._heads(self.value(value)))
        return self.attend(query, *self.project_kv(key, value), attn_mask=attn_mask)

    def project_kv(self, key, value):
        """key, value (N, S, E) -> per-head keys and values (N, nh, S, E/nh), e.g. for a cache."""
        return self._heads(self.key(key)), self._heads(self.value(value))

    def attend(self, query, k, v, attn_mask=None, weights_out=None):
        """query (N, T, E) against projected k, v (N, nh, S, E/nh) -> (N, T, E); weights_out: a list
        to append the attention weights (N, nh, T, S) to (before dropout), for drawing them.

        With a single key and no mask (the one image token of the captioning model) the
        softmax weights are exactly 1 whatever the query, so q and the scores are skipped:
        the weights are dropout(1), as the general path would give. k may then be None.
        """
        N, T, _ = query.shape
        if v.shape[2] == 1 and attn_mask is None:
            ones = query.new_ones(N, self.n_head, T, 1)
            if weights_out is not None:
                weights_out.append(ones)
            return self._combine(self.attn_drop(ones), v)
        return self._attend(self._heads(self.query(query)), k, v, attn_mask, weights_out)

    def _attend(self, q, k, v, attn_mask, weights_out=None):
        """q (N, nh, T, E/nh), k and v (N, nh, S, E/nh), attn_mask (T, S), (N, 1, 1, S) or None
        -> (N, T, E)."""
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (N, nh, T, S)
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask == 0, float("-inf"))
        weights = F.softmax(scores, dim=-1)
        if weights_out is not None:
            weights_out.append(weights)
        return self._combine(self.attn_drop(weights), v)

    def _combine(self, weights, v):
        """weights (N, nh, T, S), v (N, nh, S, E/nh) -> output projection of the heads (N, T, E)."""
        N, _, T, _ = weights.shape
        out = (weights @ v).transpose(1, 2).reshape(N, T, self.emd_dim)  # (N, T, E)
        return self.proj(out)


class TransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer: masked self-attention, cross-attention, feed-forward.

    Each sub-block is x = LayerNorm(x + Dropout(sublayer(x))).
    """

    def __init__(self, input_dim, num_heads, dim_feedforward=2048, dropout=0.1):
        super().__init__()
        self.self_attn = MultiHeadAttention(input_dim, num_heads, dropout)
        self.multihead_attn = MultiHeadAttention(input_dim, num_heads, dropout)
        self.linear1 = nn.Linear(input_dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, input_dim)
        self.norm1 = nn.LayerNorm(input_dim)
        self.norm2 = nn.LayerNorm(input_dim)
        self.norm3 = nn.LayerNorm(input_dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None):
        """tgt (N, T, E), memory (N, S, E), tgt_mask (T, T), memory_mask (N, 1, 1, S) bool or None
        (False: a padded memory token) -> (N, T, E)."""
        x = self.norm1(tgt + self.dropout1(self.self_attn(tgt, tgt, tgt, attn_mask=tgt_mask)))
        x = self.norm2(x + self.dropout2(self.multihead_attn(x, memory, memory,
                                                             attn_mask=memory_mask)))
        ff = self.linear2(self.dropout(F.relu(self.linear1(x))))  # (N, T, E)
        return self.norm3(x + self.dropout3(ff))

    def init_cache(self, memory, max_len, memory_mask=None):
        """Cache for incremental decoding: the projected memory (and its mask) and room for max_len
        self-attention keys/values. memory (N, S, E), memory_mask (N, 1, 1, S) or None -> dict of
        tensors."""
        N = memory.shape[0]
        mem_k, mem_v = self.multihead_attn.project_kv(memory, memory)  # (N, nh, S, E/nh)
        shape = (N, self.self_attn.n_head, max_len, self.self_attn.head_dim)
        cache = {"mem_k": mem_k, "mem_v": mem_v, "k": memory.new_zeros(shape),
                 "v": memory.new_zeros(shape)}
        if memory_mask is not None:
            cache["mem_mask"] = memory_mask
        return cache

    def step(self, x, cache, t, weights_out=None):
        """One new position t, attending to the cached positions 0..t (eval mode).

        x (N, 1, E), cache from init_cache (updated in place) -> (N, 1, E); weights_out: a list to
        append the cross-attention weights (N, nh, 1, S) to.
        """
        k, v = self.self_attn.project_kv(x, x)  # (N, nh, 1, E/nh)
        cache["k"][:, :, t:t + 1] = k
        cache["v"][:, :, t:t + 1] = v
        x = self.norm1(x + self.self_attn.attend(x, cache["k"][:, :, :t + 1],
                                                 cache["v"][:, :, :t + 1]))
        x = self.norm2(x + self.multihead_attn.attend(x, cache["mem_k"], cache["mem_v"],
                                                      attn_mask=cache.get("mem_mask"),
                                                      weights_out=weights_out))
        return self.norm3(x + self.linear2(F.relu(self.linear1(x))))


class TransformerDecoder(nn.Module):
    """A stack of num_layers decoder layers, held in `layers` (the original repository's
    `transformer.layers.{i}` parameter names).

    forward: tgt (N, T, E), memory (N, S, E), tgt_mask (T, T), memory_mask (N, 1, 1, S) or None
    -> (N, T, E).
    """

    def __init__(self, input_dim, num_heads, num_layers, dim_feedforward=2048, dropout=0.1):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(input_dim, num_heads, dim_feedforward, dropout)
            for _ in range(num_layers))

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None):
        for layer in self.layers:
            tgt = layer(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask)
        return tgt
