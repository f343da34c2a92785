"""The text decoder's half of UNITE's forward, run only as far as the pooled vectors need.

UNITE keeps one hidden state a row: the last layer's output at the row's last token. Three things in
the decoder's plain forward do not change that state, so they are left out (each is checked against
the plain forward in ``tests/test_language.py``):

- **The padding mask.** Rows are right-padded and attention is causal, so a real token never sees
  the pads after it; without a cached prefix, sdpa then runs its own causal path instead of reading
  a (rows, 1, tokens, tokens) mask in every layer.
- **Per-row positions.** The 1-D positions are the same for every row, so the rotary tables are
  computed for one row and broadcast.
- **The last layer for the other tokens** (speed switch ``pooled_only``). Its keys and values are
  needed for every token, but its queries, attention output and MLP only for the pooled one.

The prefix cache (speed switch ``prefix_cache``) lives here too: the prompt's opening tokens, the same
in every prompt, run once per weights, and each batch runs only what follows them.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .speed import cache_argument, weights_version

POOLED = "unite_pooled"  # the keyword that carries each row's pooled position to the decoder layers


def prefix_state(weights, model, ids: np.ndarray, device):
    """Each decoder layer's ``(keys, values)`` for the prompt prefix ``ids`` under ``model``'s weights as they
    are now, kept on ``weights`` (a :class:`~unite_search.runtime.Weights`) and computed again after
    any in-place change to them (an optimiser step)."""
    import torch
    from transformers import DynamicCache

    lm = model.language_model
    key = (id(lm), str(device), weights_version(lm), ids.tobytes())
    cached = weights.prefix
    if cached is not None and cached[0] == key:
        return cached[1]
    cache, n = DynamicCache(), len(ids)
    with torch.inference_mode():
        tokens = torch.from_numpy(ids)[None].to(device)
        positions = torch.arange(n, device=device).expand(3, 1, n)
        lm(inputs_embeds=model.get_input_embeddings()(tokens), position_ids=positions, use_cache=True,
           **{cache_argument(lm): cache})  # fmt: skip
        layers = [(layer.keys, layer.values) for layer in cache.layers]
    weights.prefix = (key, layers)
    return layers


def pooled_states(lm, embeds, lengths, *, prefix=None, pooled_only: bool = True):
    """The decoder's final hidden state at each row's last real token: (rows, hidden), in the model's
    dtype, with gradients when they are recorded.

    ``embeds``: (rows, tokens, hidden) input embeddings, right-padded, of the tokens after the prefix;
    ``lengths``: (rows,) real tokens a row, prefix included; ``prefix``: the layers' (keys, values) of
    a prompt prefix every row begins with (:func:`prefix_state`), or None.
    """
    import torch

    n, width = embeds.shape[:2]
    device = embeds.device
    skip = 0 if prefix is None else int(prefix[0][0].shape[-2])
    kwargs: dict[str, Any] = {"use_cache": prefix is not None}
    if prefix is not None:
        from transformers import DynamicCache

        past = DynamicCache()
        for layer, (k, v) in enumerate(prefix):
            past.update(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1), layer)
        kwargs[cache_argument(lm)] = past
    lengths = lengths.to(device)
    pooled = lengths - 1 - skip  # each row's pooled token among the tokens run here
    if pooled_only:
        _pool_last_layer(lm)
        kwargs[POOLED] = pooled
    attention = lm.config._attn_implementation
    mask = None  # right padding under a causal mask: the pads follow every real token, none is seen
    if attention not in ("sdpa", "eager"):  # paths not checked without it here (flash-attention) keep it
        mask = (torch.arange(skip + width, device=device) < lengths[:, None]).long()
    positions = torch.arange(skip, skip + width, device=device).expand(3, 1, width)  # 1-D, one row for all
    hidden = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, **kwargs).last_hidden_state
    if pooled_only:
        return hidden[:, 0]
    return hidden[torch.arange(n, device=device), pooled]


def _pool_last_layer(lm) -> None:
    """Give the decoder's last layer the pooled path (once per model): with :data:`POOLED` among its
    keywords it returns (rows, 1, hidden), each row's pooled token only; without, it runs as before."""
    layer = lm.layers[-1]
    if getattr(layer, "_unite_pooled", False):
        return
    layer.forward = functools.partial(_pooled_forward, layer, layer.forward, _returns_tuple(type(layer)))
    layer._unite_pooled = True


@functools.cache
def _returns_tuple(cls) -> bool:
    """Whether a decoder layer class returns ``(hidden, ...)`` (transformers 5.0) or the hidden states alone."""
    import inspect

    returned = inspect.signature(cls.forward).return_annotation
    return (returned if isinstance(returned, str) else repr(returned)).startswith("tuple")


def _pooled_forward(layer, plain, as_tuple, hidden_states, *args, **kwargs):
    pooled = kwargs.pop(POOLED, None)
    if pooled is None:
        return plain(hidden_states, *args, **kwargs)
    import torch

    attn = layer.self_attn
    n, width, _ = hidden_states.shape
    rows = torch.arange(n, device=hidden_states.device)
    cos, sin = kwargs["position_embeddings"]
    if cos.dim() == 4:  # per-axis tables (older transformers): the three axes are equal for 1-D positions
        cos, sin = cos[0], sin[0]
    heads, kv_heads, dim = attn.config.num_attention_heads, attn.config.num_key_value_heads, attn.head_dim

    normed = layer.input_layernorm(hidden_states)
    query = attn.q_proj(normed[rows, pooled]).view(n, heads, 1, dim)
    key = attn.k_proj(normed).view(n, width, kv_heads, dim).transpose(1, 2)
    value = attn.v_proj(normed).view(n, width, kv_heads, dim).transpose(1, 2)
    cos_q, sin_q = (t.expand(n, -1, -1)[rows, pooled][:, None, None] for t in (cos, sin))
    query = _rotate(query, cos_q, sin_q)
    key = _rotate(key, cos[:, None], sin[:, None])
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is not None:
        key, value = cache.update(key, value, attn.layer_idx)
    skip = key.shape[-2] - width
    seen = torch.arange(key.shape[-2], device=key.device) <= (skip + pooled)[:, None]  # causal, pads unseen
    if heads != kv_heads:
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=seen[:, None, None],
        dropout_p=attn.attention_dropout if attn.training else 0.0,
        scale=attn.scaling,
    )  # (rows, heads, 1, dim)
    hidden = hidden_states[rows, pooled] + attn.o_proj(out.reshape(n, heads * dim))
    hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return (hidden[:, None],) if as_tuple else hidden[:, None]


def _rotate(x, cos, sin):
    """Rotary position embedding of ``x`` (…, dim): the halves turned by the angles in ``cos``/``sin``."""
    import torch

    half = x.shape[-1] // 2
    turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + turned * sin
