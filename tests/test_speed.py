"""Speed switches (issue 17's levers) change how the forward runs, never the vectors."""

import functools
import threading

import numpy as np
import pytest

from unite_search import ConfigError, Encoder
from unite_search.speed import RUNS_ATTENTION, Speed, chunk_runs, compiled_parts, set_runs_attention

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def mixed(media):
    rng = np.random.default_rng(3)
    return [
        {"image": rng.integers(0, 256, (448, 448, 3), dtype=np.uint8)},
        {"image": rng.integers(0, 256, (448, 448, 3), dtype=np.uint8)},
        {"image": rng.integers(0, 256, (300, 600, 3), dtype=np.uint8), "text": "composed"},
        {"video": media["video"], "text": "at night"},
        {"video": media["video2"]},
        {"text": "a plain text"},
    ]


@pytest.fixture(scope="module")
def plain(tiny_dir):
    """The same weights with every switch off: transformers' own sdpa path."""
    return Encoder.load(tiny_dir, device="cpu", workers=2, speed=Speed.parse("none"))


def test_chunk_runs_follow_the_towers_chunks():
    assert chunk_runs([(1, 32, 32), (1, 32, 32), (4, 24, 24), (1, 20, 30)]) == [(1024, 2), (576, 4), (600, 1)]
    assert chunk_runs([(2, 10, 10), (1, 10, 10), (1, 12, 10)]) == [(100, 3), (120, 1)]
    assert chunk_runs([]) == []


def test_vision_runs_give_the_same_vectors_bit_for_bit(plain, mixed):
    fast = plain.with_settings(speed=Speed.parse("vision_runs"))
    base = plain.encode(mixed, token_budget=10**6)
    assert plain._model.visual.config._attn_implementation == "sdpa"
    got = fast.encode(mixed, token_budget=10**6)
    assert plain._model.visual.config._attn_implementation == RUNS_ATTENTION
    np.testing.assert_array_equal(got, base)
    # one at a time (other runs, other batch shapes): the same bits as the plain path one at a time
    singles = np.stack([fast.encode([it])[0] for it in mixed])
    np.testing.assert_array_equal(singles, np.stack([plain.encode([it])[0] for it in mixed]))
    plain.encode(mixed[:1])  # switching back restores transformers' path
    assert plain._model.visual.config._attn_implementation == "sdpa"


def test_vision_runs_make_one_attention_call_per_run_and_read_nothing_back(plain, mixed, monkeypatch):
    """Four same-size images are one run: one attention call per vision layer instead of four, and the
    chunk lengths come from the host (no read-back of the boundaries)."""
    import unite_search.speed as speed

    calls, readbacks = [], []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    counted = lambda *a, **k: calls.append(1) or sdpa(*a, **k)  # noqa: E731
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    original = speed._runs_from_boundaries
    monkeypatch.setattr(speed, "_runs_from_boundaries", lambda cu: readbacks.append(1) or original(cu))
    images = [mixed[0], mixed[1], mixed[0], mixed[1]]
    depth = len(plain._model.visual.blocks)
    layers = len(plain._model.language_model.layers)
    counts = {}
    for name in ("none", "vision_runs"):
        calls.clear()
        plain.with_settings(speed=Speed.parse(name)).encode(images, token_budget=10**6)
        counts[name] = len(calls)
    assert counts == {"none": 4 * depth + layers, "vision_runs": depth + layers}
    assert readbacks == []


def test_runs_attention_called_without_runs_reads_the_boundaries(plain, mixed):
    """A caller of the tower that passes no runs (as transformers' own model forward does) still gets
    attention within each chunk."""
    batch = plain.prepare_many(mixed[:3])
    pixels = torch.from_numpy(np.concatenate([p.image.pixel_values for p in batch]))
    grid = torch.tensor([p.image.grid_thw for p in batch])
    visual = plain._model.visual
    with torch.inference_mode():
        set_runs_attention(visual, False)
        expected = visual(pixels, grid_thw=grid).pooler_output
        set_runs_attention(visual, True)
        got = visual(pixels, grid_thw=grid).pooler_output
    set_runs_attention(visual, False)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_tower_not_under_sdpa_is_left_alone(tiny_dir, media):
    eager = Encoder.load(tiny_dir, device="cpu", attn="eager")
    assert eager.speed.vision_runs
    eager.encode([{"image": media["image"]}])
    assert eager._model.visual.config._attn_implementation == "eager"
    assert not set_runs_attention(eager._model.visual, True)


def test_overlap_assembles_the_next_batches_on_a_thread_and_keeps_the_order(plain, mixed, monkeypatch):
    overlapped = plain.with_settings(speed=Speed.parse("overlap"))
    threads = []
    host_batch = Encoder.host_batch

    def spy(self, batch, **kw):
        threads.append(threading.current_thread().name)
        return host_batch(self, batch, **kw)

    monkeypatch.setattr(Encoder, "host_batch", spy)
    base = plain.encode(mixed, token_budget=600)  # several batches
    assert threads and set(threads) == {threading.current_thread().name}
    threads.clear()
    got = overlapped.encode(mixed, token_budget=600)
    assert len(threads) > 1 and threading.current_thread().name not in threads
    np.testing.assert_array_equal(got, base)


def test_a_forward_that_raises_under_overlap_leaves_no_assembling_thread(plain, mixed, monkeypatch):
    """Its threads lived on, with the batches they had made, for as long as the exception was held."""
    overlapped = plain.with_settings(speed=Speed.parse("overlap"))
    calls = []
    forward = Encoder.forward

    def failing(self, batch):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of device memory")
        return forward(self, batch)

    monkeypatch.setattr(Encoder, "forward", failing)
    with pytest.raises(RuntimeError, match="out of device memory") as held:
        overlapped.encode(mixed, token_budget=600)
    assert held.value is not None  # the exception still referenced, as a caller or a REPL keeps it
    assert not [t.name for t in threading.enumerate() if t.name.startswith("unite-prep")]


def test_compiled_layers_give_the_same_vectors_and_can_be_switched_off(plain, mixed):
    items = [mixed[0], mixed[2], mixed[5]]
    base = plain.encode(items)
    compiled = plain.with_settings(speed=Speed.parse("compile,pooled_only"))  # the pooled last layer compiled too
    got = compiled.encode(items)
    layers = compiled_parts(plain._model)
    assert len(layers) == len(plain._model.visual.blocks) + len(plain._model.language_model.layers)
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert np.abs(got - base).max() <= 1e-5
    np.testing.assert_array_equal(plain.encode(items), base)  # off again: the eager path, same bits
    assert all(layer._compiled_call_impl is None for layer in layers)


def test_speed_switches_parse_and_say_what_is_wrong():
    assert Speed.parse("default") == Speed()
    off = dict(vision_runs=False, prefix_cache=False, pooled_only=False, overlap=False, compile=False, processes=False)
    assert Speed.parse("none") == Speed(**off)
    assert Speed.parse("compile, overlap") == Speed(**{**off, "overlap": True, "compile": True})
    known = "compile, overlap, pooled_only, prefix_cache, processes, vision_runs"
    with pytest.raises(ConfigError, match=f"unknown speed switch cuda_graphs; known: {known}"):
        Speed.parse("vision_runs,cuda_graphs")


def _widths(encoder, monkeypatch):
    """The sequence lengths the decoder runs on, recorded per call."""
    lm = encoder._model.language_model
    widths, forward = [], lm.forward

    @functools.wraps(forward)  # the same signature: the encoder reads the cache argument's name from it
    def spy(*a, **k):
        widths.append(k["inputs_embeds"].shape[1])
        return forward(*a, **k)

    monkeypatch.setattr(lm, "forward", spy)
    return widths


def test_prefix_cache_runs_only_what_follows_the_shared_prefix(plain, mixed, monkeypatch):
    items = [*mixed, {"text": "\nstarts with a newline"}, {"text": "  spaces, then ümlauts"}]
    cached = plain.with_settings(speed=Speed.parse("prefix_cache"))
    prefix = len(cached._prefix_ids())
    assert prefix > 10  # the system turn and "<|im_start|>user\n"
    base = plain.encode(items, token_budget=10**6)
    widths = _widths(plain, monkeypatch)
    got = cached.encode(items, token_budget=10**6)
    longest = max(p.length for p in plain.prepare_many(items))
    assert widths == [prefix, longest - prefix]  # the prefix once (then cached), the batch without it
    assert np.abs(got - base).max() <= 1e-6
    widths.clear()
    singles = np.stack([cached.encode([it])[0] for it in items])
    assert len(widths) == len(items)  # the prefix is not computed again
    assert np.abs(singles - base).max() <= 1e-6


def test_prefix_cache_follows_the_weights_and_stays_out_of_training(tiny_dir, mixed, monkeypatch):
    own = Encoder.load(tiny_dir, device="cpu", workers=2, speed=Speed.parse("prefix_cache"))
    full = own.with_settings(speed=Speed.parse("none"))
    items = [mixed[0], mixed[5]]
    before = own.encode(items)
    with torch.no_grad():  # as an optimiser step changes them: in place
        own._model.language_model.layers[0].mlp.up_proj.weight.mul_(1.5)
    after = own.encode(items)
    assert np.abs(after - before).max() > 1e-3  # not the stale prefix
    assert np.abs(after - full.encode(items)).max() <= 1e-6
    widths = _widths(own, monkeypatch)
    batch = own.prepare_many(items)
    own.embed(batch).sum().backward()  # gradients recorded: the whole prompt runs
    assert widths == [max(p.length for p in batch)]


def test_prefix_cache_leaves_a_batch_whose_rows_do_not_all_begin_with_the_prefix(plain):
    from unite_search.encoder import Prepared

    cached = plain.with_settings(speed=Speed.parse("prefix_cache"))
    ordinary = cached.prepare({"text": "a row with the prompt"})
    odd = Prepared(ordinary.input_ids[::-1].copy())  # same tokens, another order: no shared prefix
    got = cached.forward([ordinary, odd])
    np.testing.assert_array_equal(got, plain.forward([ordinary, odd]))


def test_the_throughput_tokenizer_takes_the_prompts_words_whole(tmp_path):
    """Random-weight throughput runs tokenize UNITE's prompt into as many tokens as Qwen2's tokenizer
    does (14 before the content, 14 after), not into bytes."""
    from transformers import AutoTokenizer

    from unite_search.prompts import render
    from unite_search.testing import TOKEN_ID, prompt_words, write_tokenizer

    words = ["dog", " dog", " runs"]
    write_tokenizer(tmp_path, prompt_words() + words)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert all(tok.convert_tokens_to_ids(t) == i for t, i in TOKEN_ID.items())  # the model's ids unchanged
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert count(render({"text"}, "dog runs")) == 28 + 2
    assert count(render({"image"})) == 28 + 3  # the vision block: start, one pad, end
    assert count(render({"image", "text"}, "dog")) == 28 + 3 + 1 + 2  # + "sentence and"
    assert tok.decode(tok("a dog runs")["input_ids"]) == "a dog runs"
    write_tokenizer(tmp_path / "bytes")
    tok = AutoTokenizer.from_pretrained(tmp_path / "bytes")
    assert count(render({"text"}, "dog runs")) > 100  # bytes alone, as the tests' tokenizer stays


def test_prefix_cache_runs_under_sdpa_and_eager_and_not_under_flash_attention(tiny_dir, mixed, monkeypatch):
    """Under eager attention the cache runs too; flash-attention 2 (untested with a cache beside
    padding, and not installable here) is left to run the whole prompt."""
    from types import SimpleNamespace

    from unite_search.speed import cache_tested

    enc = Encoder.load(tiny_dir, device="cpu", attn="eager")
    widths = _widths(enc, monkeypatch)
    got = enc.encode([mixed[5]])
    assert widths == [len(enc._prefix_ids()), enc.prepare(mixed[5]).length - len(enc._prefix_ids())]
    assert np.abs(got - enc.with_settings(speed=Speed.parse("none")).encode([mixed[5]])).max() <= 1e-6
    implementations = ("sdpa", "eager", "flash_attention_2")
    lms = [SimpleNamespace(config=SimpleNamespace(_attn_implementation=name)) for name in implementations]
    assert [cache_tested(lm) for lm in lms] == [True, True, False]
