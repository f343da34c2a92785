"""The decoder runs only as far as the pooled vectors need (unite_search.language), with the same vectors."""

import numpy as np
import pytest

from unite_search import Encoder
from unite_search.language import POOLED
from unite_search.speed import Speed

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def items(media):
    rng = np.random.default_rng(5)
    return [
        {"text": "short"},
        {"image": rng.integers(0, 256, (448, 448, 3), dtype=np.uint8)},
        {"text": "a considerably longer sentence that pads every other row of the batch " * 3},
        {"video": media["video"], "text": "at night"},
        {"image": rng.integers(0, 256, (300, 600, 3), dtype=np.uint8), "text": "composed"},
        {"text": "ümlauts and\nnewlines"},
    ]


@pytest.fixture(scope="module")
def full(tiny_dir):
    """Every speed switch off: the last layer runs for every token."""
    return Encoder.load(tiny_dir, device="cpu", workers=2, speed=Speed.parse("none"))


def _last_layer_rows(encoder, monkeypatch):
    """The shapes the last decoder layer's MLP is called on, recorded per call."""
    mlp = encoder._model.language_model.layers[-1].mlp
    shapes, forward = [], mlp.forward
    monkeypatch.setattr(mlp, "forward", lambda x: shapes.append(tuple(x.shape)) or forward(x))
    return shapes


@pytest.mark.parametrize("switches", ["pooled_only", "pooled_only,prefix_cache", "default"])
def test_pooled_only_gives_the_full_forwards_vectors(full, items, switches, monkeypatch):
    fast = full.with_settings(speed=Speed.parse(switches))
    base = full.encode(items, token_budget=10**6)
    shapes = _last_layer_rows(fast, monkeypatch)
    got = fast.encode(items, token_budget=10**6)  # one padded batch
    # the MLP ran for one token a row (after, the first time, the prompt prefix's one row of tokens)
    assert shapes[-1] == (len(items), full.dim) and all(s[0] == 1 for s in shapes[:-1])
    assert np.abs(got - base).max() <= 1e-6
    singles = np.stack([fast.encode([it])[0] for it in items])
    assert np.abs(singles - base).max() <= 1e-6


def test_without_the_switch_the_last_layer_runs_every_token(full, items, monkeypatch):
    shapes = _last_layer_rows(full, monkeypatch)
    batch = full.prepare_many(items[:3])
    full.forward(batch)
    assert shapes == [(3, max(p.length for p in batch), full.dim)]


def test_pooled_only_under_eager_attention(tiny_dir, items):
    eager = Encoder.load(tiny_dir, device="cpu", attn="eager")
    assert eager.speed.pooled_only and eager.speed.prefix_cache
    got = eager.encode(items, token_budget=10**6)
    base = eager.with_settings(speed=Speed.parse("none")).encode(items, token_budget=10**6)
    assert np.abs(got - base).max() <= 1e-6


def test_a_row_ignores_the_padding_after_it(full, items):
    """No padding mask reaches the decoder: right padding under a causal mask is never seen, so a row's
    vector is the same beside a much longer row as alone (default switches and none)."""
    long = {"text": "padding " * 200}
    for encoder in (full, full.with_settings(speed=Speed())):
        alone = encoder.encode([items[0]])
        beside = encoder.encode([items[0], long], token_budget=10**6)[:1]
        assert np.abs(alone - beside).max() <= 1e-6


def test_the_patched_layer_runs_as_before_when_not_asked(full, items):
    """Other callers of the same model (transformers' own forward, a benchmark's plain loop) get the
    layer's own output, bit for bit, after the pooled path was installed."""
    lm = full._model.language_model
    batch = full.prepare_many(items[:3])
    ids = full.host_batch(batch)["ids"]
    with torch.inference_mode():
        embeds = full._model.get_input_embeddings()(ids)
        before = lm(inputs_embeds=embeds, use_cache=False).last_hidden_state
        full.with_settings(speed=Speed()).forward(batch)  # installs the pooled path
        assert lm.layers[-1]._unite_pooled
        after = lm(inputs_embeds=embeds, use_cache=False).last_hidden_state
    assert torch.equal(before, after)


def test_pooled_only_keeps_the_gradients(tiny_dir, items):
    """Training calls embed() with gradients: the loss and every gradient as with the full last layer."""
    enc = Encoder.load(tiny_dir, device="cpu", speed=Speed.parse("pooled_only"))
    off = enc.with_settings(speed=Speed.parse("none"))
    batch = enc.prepare_many(items)
    params = [p for p in enc._model.parameters() if p.requires_grad]
    grads = []
    for encoder in (enc, off):
        enc._model.zero_grad()
        vecs = encoder.embed(batch)
        (vecs @ vecs.T).sum().backward()
        grads.append([p.grad.clone() for p in params])
    for got, want in zip(*grads, strict=True):
        assert (got - want).norm() <= 1e-5 * want.norm()
    last = enc._model.language_model.layers[-1]
    assert last.mlp.up_proj.weight.grad.abs().sum() > 0


def test_earlier_layers_get_the_pooled_keyword_and_ignore_it(full, items, monkeypatch):
    """Every layer gets the keyword (transformers hands its extra keywords to all of them); the earlier
    layers, their attention and the cache ignore it."""
    seen = []
    first = full._model.language_model.layers[0]
    forward = first.forward
    monkeypatch.setattr(first, "forward", lambda *a, **k: seen.append(POOLED in k) or forward(*a, **k))
    fast = full.with_settings(speed=Speed.parse("pooled_only"))
    np.testing.assert_allclose(
        fast.encode(items[:2], token_budget=10**6), full.encode(items[:2], token_budget=10**6), atol=1e-6
    )
    assert seen == [True, False]


def test_a_row_of_the_prompt_prefix_alone_is_not_run_from_the_cached_prefix(full):
    """A hand-built row holding only the prompt's prefix, beside a longer row, pooled a padding column
    under prefix_cache (its vector 0.67 off): the cache is used only where every row goes on after it."""
    from unite_search.encoder import Prepared

    cached = full.with_settings(speed=Speed.parse("prefix_cache"))
    prefix = cached._prefix_ids()
    rows = [Prepared(prefix.copy()), full.prepare({"text": "hello there"})]
    np.testing.assert_allclose(cached.forward(rows), full.forward(rows), atol=1e-6)
    np.testing.assert_allclose(cached.forward(rows[:1]), full.forward(rows[:1]), atol=1e-6)
    one_more = Prepared(np.concatenate([prefix, prefix[-1:]]))  # the cache still serves a row one token longer
    np.testing.assert_allclose(cached.forward([one_more, rows[1]]), full.forward([one_more, rows[1]]), atol=1e-6)


def test_compiled_code_is_part_of_the_numerics(tiny_dir):
    """In bfloat16, compiled code rounds otherwise (vectors ~1e-2 apart): a cache of vectors tells them apart."""
    plain = Encoder.load(tiny_dir, device="cpu", workers=1, lazy=True)
    compiled = plain.with_settings(speed=Speed.parse("compile"))
    assert "compile" not in plain.numerics and compiled.numerics["compile"] == "inductor"
