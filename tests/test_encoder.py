import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_empty_video
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from unite_search import ConfigError, Encoder, EncoderSettings, InputError, Item, ModelLoadError
from unite_search.batching import plan_batches
from unite_search.testing import tiny_model


def test_output_contract(encoder, media):
    items = [{"text": "one"}, Item(image=media["image"]), "a bare string is a text", {"video": media["video2"]}]
    vecs = encoder.encode(items)
    assert vecs.shape == (4, encoder.dim) and vecs.dtype == np.float32 and vecs.flags["C_CONTIGUOUS"]
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    # input order preserved even though batches are sorted by length
    assert np.abs(vecs[0] - encoder.encode(["one"])[0]).max() <= 1e-5
    assert np.abs(vecs[3] - encoder.encode([{"video": media["video2"]}])[0]).max() <= 1e-5
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_image_forms_are_equivalent(encoder, media):
    from PIL import Image

    pil = Image.open(media["image"])
    arr = np.asarray(pil.convert("RGB"))
    vecs = encoder.encode([{"image": media["image"]}, {"image": str(media["image"])}, {"image": pil}, {"image": arr}])
    assert np.abs(vecs - vecs[0]).max() <= 1e-6


def test_video_file_its_sampled_frames_and_a_frame_list(encoder, media):
    """Frames read from a file first (the ingest path) encode as the file does; the same frames given
    as a plain list take upstream's list path (the image step, no video minimum), another vector."""
    from unite_search.video import SampledFrames, read_frames

    frames, _ = read_frames(media["video"], encoder.preprocessing)
    a, b, c = encoder.encode([{"video": media["video"]}, {"video": SampledFrames(frames)}, {"video": list(frames)}])
    assert np.abs(a - b).max() <= 1e-6
    assert np.abs(a - c).max() > 1e-4


def test_instruction_is_part_of_the_text(encoder, media):
    a, b, c = encoder.encode(
        [
            {"video": media["video"], "text": "make it night", "instruction": "Find a video that matches this change:"},
            {"video": media["video"], "text": "Find a video that matches this change: make it night"},
            {"video": media["video"], "text": "make it night"},
        ]
    )
    assert np.abs(a - b).max() <= 1e-6 and np.abs(a - c).max() > 1e-3


def test_settings_record_what_changes_vectors(encoder):
    s = encoder.settings
    assert s["prompt_version"] == "unite-v1" and s["positions"] == "1d" and s["pooling"] == "last-token"
    assert (s["text_ends"], s["video_resize"]) == ("stripped", "antialiased-bicubic")
    assert (s["min_pixels"], s["max_pixels"]) == (256 * 784, 1280 * 784)
    assert (s["fps"], s["max_frames"], s["video_max_pixels"], s["sampler"]) == (1.0, 32, 360 * 420, "linspace")
    assert s["dim"] == encoder.dim == 64 and s["revision"].startswith("local-")
    json.dumps(s)  # indexes store it as JSON


def test_token_budget_batches(encoder, media, monkeypatch):
    sizes = []
    real = encoder.forward

    def spy(batch):
        sizes.append([p.length for p in batch])
        return real(batch)

    monkeypatch.setattr(encoder, "forward", spy)
    items = [{"text": "x" * n} for n in (5, 80, 10, 40, 3, 60)] + [{"image": media["image"]}]
    vecs = encoder.encode(items, token_budget=200)
    assert sum(len(b) for b in sizes) == len(items)
    for batch in sizes:
        assert batch == sorted(batch, reverse=True)
        assert len(batch) == 1 or len(batch) * batch[0] <= 200
    assert max(max(b) for b in sizes) > 200  # the image alone exceeds the budget and still ran
    sizes.clear()
    encoder.encode(items, token_budget=10**6, batch_size=2)
    assert max(len(b) for b in sizes) == 2
    monkeypatch.undo()
    assert np.abs(vecs - encoder.encode(items)).max() <= 1e-5


def test_plan_batches_properties():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, 300).tolist()
    batches = plan_batches(lengths, 1000)
    assert sorted(i for b in batches for i in b) == list(range(300))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 1000 or len(b) == 1
    assert plan_batches([5000, 1], 100) == [[0], [1]]
    with pytest.raises(ValueError):
        plan_batches([1], 0)


def test_released_checkpoint_layout_loads_every_tensor(tmp_path, encoder, media):
    legacy = tiny_model(tmp_path / "legacy", seed=0, legacy=True)
    config = json.loads((legacy / "config.json").read_text())
    assert config["model_type"] == "unite_qwen2_vl" and config["architectures"] == ["UniteQwen2VL"]
    with safe_open(str(legacy / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert any(n.startswith("model.layers.") for n in names) and any(n.startswith("visual.") for n in names)
    assert "model.embed_tokens.weight" in names and "lm_head.weight" in names
    old = Encoder.load(legacy, device="cpu")  # raises on any missing or unexpected tensor
    items = [{"text": "a text"}, {"image": media["image"]}, {"video": media["video2"], "text": "edit"}]
    assert np.abs(old.encode(items) - encoder.encode(items)).max() <= 1e-6
    params = dict(old._model.named_parameters())
    visual_loaded = load_file(str(legacy / "model.safetensors"))["visual.blocks.0.attn.qkv.weight"]
    assert np.array_equal(params["visual.blocks.0.attn.qkv.weight"].detach().numpy(), visual_loaded.numpy())


@pytest.mark.parametrize("damage", ["drop", "extra"])
def test_checkpoint_that_does_not_fit_is_refused(tmp_path, damage):
    folder = tiny_model(tmp_path / "broken", seed=1, legacy=True)
    state = load_file(str(folder / "model.safetensors"))
    if damage == "drop":
        del state["model.layers.1.mlp.down_proj.weight"]
    else:
        state["model.layers.9.mlp.down_proj.weight"] = state["model.layers.1.mlp.down_proj.weight"].clone()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="down_proj"):
        Encoder.load(folder, device="cpu")


def test_unknown_model_names(tmp_path):
    with pytest.raises(ModelLoadError, match="unite-base-2b"):
        Encoder.load("unite-huge-99b")
    with pytest.raises(ModelLoadError, match="does not exist"):
        Encoder.load(str(tmp_path / "no" / "such" / "folder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        Encoder.load(tmp_path / "empty")


def test_offline_error_names_the_model_and_the_fix(tmp_path):
    code = (
        "from unite_search import Encoder, ModelLoadError\n"
        "try:\n    Encoder.load('unite-instruct-7b')\nexcept ModelLoadError as e:\n    print(e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "friedrichor/Unite-Instruct-Qwen2-VL-7B" in out.stdout
    assert "`hf download friedrichor/Unite-Instruct-Qwen2-VL-7B --local-dir DIR`" in out.stdout
    assert "Encoder.load('DIR')" in out.stdout


def test_a_fetch_that_fails_is_told_in_one_line(monkeypatch):
    """huggingface_hub's messages (a failed name lookup) run over several lines; the error is one."""
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection\n  or proxy.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(ModelLoadError) as info:
        Encoder.load("unite-base-2b")
    assert "\n" not in str(info.value) and "Check your connection or proxy." in str(info.value)


def test_bad_inputs_name_the_input(encoder, tmp_path, media):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    zero = write_empty_video(tmp_path / "zero.mp4")
    cases = [
        ({"image": tmp_path / "missing.jpg"}, "missing.jpg.*not found"),
        ({"image": tmp_path / "broken.png"}, "broken.png.*cannot read image"),
        ({"video": zero}, r"zero\.mp4: (file has no video stream|cannot decode)"),
        ({"video": tmp_path / "gone.mp4"}, "gone.mp4.*not found"),
        ({"text": ""}, "text is empty"),
        ({"text": "see <|image_pad|> here"}, "reserved token"),
        ({"image": media["image"], "text": "x", "instruction": "<|vision_start|>"}, "reserved token"),
        ({"text": "ok", "image": np.zeros((3, 3), np.float64)}, "uint8"),
        ({"text": "caf\ud800"}, "not valid Unicode .a lone surrogate at character 4"),
    ]
    for bad, pattern in cases:
        with pytest.raises(InputError, match=pattern) as info:
            encoder.encode([{"text": "fine"}, bad])
        assert "item 1" in str(info.value)


@pytest.mark.parametrize(
    "bad",
    [
        {"fps": float("nan")}, {"fps": float("inf")}, {"fetch_max_pixels": 0}, {"fetch_max_pixels": -1},
        {"fetch_min_pixels": 10**9}, {"video_min_pixels": -5}, {"video_max_pixels": float("nan")},
        {"max_pixels": float("inf")},
    ],
)  # fmt: skip
def test_settings_that_would_fail_an_encode_are_refused_when_made(bad):
    """fps nan passed (nan <= 0 is false) and the fetch bounds were not checked: each failed at encode time."""
    with pytest.raises(ConfigError):
        EncoderSettings(**bad)
    assert EncoderSettings.training().video_max_pixels < EncoderSettings().video_min_pixels  # upstream's, allowed


def test_weights_that_failed_to_load_say_why_at_every_get_and_are_not_loaded_again_behind_it():
    import traceback

    from unite_search.runtime import Weights

    calls = []

    def loader():
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk hiccup")
        return "model"

    weights = Weights(loader=loader)
    with pytest.raises(OSError, match="disk hiccup"):
        weights.get()
    weights.start()  # a second load here made a later get() raise the first error although it succeeded
    raised = []
    for _ in range(3):
        with pytest.raises(OSError, match="disk hiccup") as info:
            weights.get()
        raised.append(len(traceback.extract_tb(info.value.__traceback__)))
    assert calls == [1] and not weights.loaded and len(set(raised)) == 1  # the traceback does not grow


def test_settings_change_video_vectors(tiny_dir, media, encoder):
    fixed = Encoder.load(tiny_dir, device="cpu", settings=EncoderSettings(frames=8))
    assert fixed.settings["frames"] == 8
    a = fixed.encode([{"video": media["video"]}])[0]
    b = encoder.encode([{"video": media["video"]}])[0]
    assert np.abs(a - b).max() > 1e-4


def test_device_dtype_attn_auto_rules(monkeypatch):
    import types

    import torch

    from unite_search.runtime import resolve_attn, resolve_device, resolve_dtype

    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int3", cpu)
    assert resolve_attn("auto", cpu, torch.float32) == "sdpa"
    assert resolve_attn("eager", cpu, torch.float32) == "eager"
    cuda = torch.device("cuda")
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # not installed
    assert resolve_attn("auto", cuda, torch.bfloat16) == "sdpa"
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    assert resolve_attn("auto", cuda, torch.bfloat16) == "flash_attention_2"
    assert resolve_attn("auto", cuda, torch.float32) == "sdpa"  # flash-attention needs half precision
    assert resolve_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu


def test_bounded_map_keeps_order_and_stays_ahead_by_at_most_lookahead():
    import threading
    import time

    from unite_search.batching import bounded_map

    started, lock = [], threading.Lock()

    def work(x):
        with lock:
            started.append(x)
        time.sleep(0.001 * (x % 3))
        return x * x

    consumed = []
    for i, value in enumerate(bounded_map(work, range(40), workers=3, lookahead=5)):
        consumed.append(value)
        with lock:
            assert len(started) <= i + 1 + 5
    assert consumed == [x * x for x in range(40)]
    assert list(bounded_map(work, range(5), workers=1, lookahead=1)) == [0, 1, 4, 9, 16]


def test_encode_with_progress_and_one_worker(tiny_dir, media, capsys):
    enc = Encoder.load(tiny_dir, device="cpu", workers=1)
    vecs = enc.encode([{"text": "a"}, {"image": media["image"]}], progress=True)
    assert vecs.shape == (2, 64)
    assert "2/2" in capsys.readouterr().err


def test_encode_windows_bound_memory(encoder, media, monkeypatch):
    import unite_search.encoder as encoder_module

    windows = []
    real = encoder.encode_prepared

    def spy(prepared, **kwargs):
        windows.append(sum(p.nbytes for p in prepared))
        return real(prepared, **kwargs)

    one_image = encoder.prepare({"image": media["image"]}).nbytes
    monkeypatch.setattr(encoder_module, "WINDOW_BYTES", 2 * one_image)
    monkeypatch.setattr(encoder, "encode_prepared", spy)
    items = [{"image": media["image"], "text": f"caption {i}"} for i in range(5)]
    vecs = encoder.encode(items)
    assert len(windows) == 3 and max(windows) < 3 * one_image
    monkeypatch.undo()
    assert np.abs(vecs - encoder.encode(items)).max() <= 1e-5


def _fake_decode(spec):
    """Hold ``cost`` bytes at the peak, keep ``keep`` of them: a decoder's memory, made measurable."""
    import time

    cost, keep = spec
    transient = np.ones(cost - keep, np.uint8)  # allocated and touched, as a decoder's buffers are
    result = np.ones(keep, np.uint8)
    time.sleep(0.002)
    del transient
    return result


def _measure(run) -> int:
    """Peak bytes allocated above the baseline while ``run`` runs (numpy reports to tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_admitted_map_bounds_the_bytes_decoded_and_not_yet_encoded():
    from unite_search.batching import ByteBudget, admitted_map

    mb = 1 << 20
    specs = [(8 * mb, 3 * mb), (4 * mb, 1 * mb), (12 * mb, 6 * mb)] * 10
    limit = 40 * mb

    def run(window_cap):
        budget = ByteBudget(limit)
        window, held, order = [], [0], []

        def flush():
            window.clear()  # "encoded": the results are dropped
            budget.release(held[0])
            held[0] = 0

        for spec, result, size in admitted_map(_fake_decode, specs, 4, budget, lambda s: s[0], len, flush):
            assert size == result.nbytes == spec[1]
            order.append(spec)
            window.append(result)
            held[0] += size
            del result  # the window holds it now
            if held[0] >= window_cap:
                flush()
        flush()
        assert order == specs  # in order
        return budget

    peak = _measure(lambda: run(limit // 2))
    assert peak <= limit + mb, f"held {peak / mb:.1f} MiB for a {limit / mb:.0f} MiB budget"
    assert peak >= limit // 2  # and decoding did run ahead of the consumer
    # a consumer that only encodes when told it starves the decoders still finishes, within the budget
    peak = _measure(lambda: run(10 * limit))
    assert peak <= limit + mb


def test_admitted_map_runs_an_oversized_item_alone_and_propagates_errors():
    import threading

    from unite_search.batching import ByteBudget, admitted_map

    budget = ByteBudget(100)
    seen = []

    def fn(n):
        seen.append(budget.held)
        return n

    got = [r for _, r, _ in admitted_map(fn, [10, 500, 10], 2, budget, lambda n: n, lambda r: 0, lambda: None)]
    assert got == [10, 500, 10] and seen[1] == 500  # admitted alone: nothing else was held
    assert budget.held == 0

    def broken(n):
        if n == 3:
            raise ValueError("decoder broke")
        return n

    with pytest.raises(ValueError, match="decoder broke"):
        list(admitted_map(broken, range(6), 2, ByteBudget(10), lambda n: 1, lambda r: 1, lambda: None))
    gen = admitted_map(lambda n: n, range(10**6), 2, ByteBudget(5), lambda n: 1, lambda r: 0, lambda: None)
    assert next(gen)[1] == 0
    gen.close()  # stopping early ends the threads
    assert not [t for t in threading.enumerate() if t.name.startswith(("unite-admit", "unite-prep"))]


def test_an_animated_gif_is_its_first_frame(encoder, tmp_path):
    """A GIF is an image: an animation is indexed from its first frame (README, "What is indexed")."""
    from PIL import Image

    from unite_search.ingestion import ingest
    from unite_search.store import IndexStore

    rng = np.random.default_rng(3)
    frames = [Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)) for _ in range(3)]
    root = tmp_path / "corpus"
    root.mkdir()
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(root / "anim.gif") as gif:
        assert gif.n_frames == 3
        first = gif.convert("RGB")
        gif.seek(1)
        second = gif.convert("RGB")
    got, want, other = encoder.encode([{"image": root / "anim.gif"}, {"image": first}, {"image": second}])
    assert np.abs(got - want).max() <= 1e-6 and np.abs(got - other).max() > 1e-3
    ingest(root, tmp_path / "index", encoder=encoder)
    rows = IndexStore(tmp_path / "index").read_rows("image").to_pylist()
    assert [(r["path"], r["modality"]) for r in rows] == [("anim.gif", "image")]
    assert np.abs(np.asarray(rows[0]["vector"]) - want).max() <= 1e-5


def test_prepare_many_tokenizes_texts_in_one_call_with_the_same_results(encoder, media):
    items = [
        "a red fox",
        {"text": "the same view at night", "instruction": "Find the edited image."},
        {"image": media["image"]},
        {"image": media["image"], "text": "with snow"},
        "a " + "long " * 300 + "text",
    ]
    calls = []
    real = encoder._tokenizer

    class Counting:
        def __call__(self, text, **kw):
            calls.append(1 if isinstance(text, str) else len(text))
            return real(text, **kw)

        def __getattr__(self, name):
            return getattr(real, name)

    singles = [encoder.prepare(x) for x in items]
    encoder._tokenizer = Counting()
    try:
        many = encoder.prepare_many(items)
    finally:
        encoder._tokenizer = real
    assert calls == [4]  # the four prompts with text in one call; the image-only prompt is cached
    for a, b in zip(singles, many, strict=True):
        assert np.array_equal(a.input_ids, b.input_ids)
        assert (a.image is None) == (b.image is None)
        if a.image is not None:
            assert np.array_equal(a.image.pixel_values, b.image.pixel_values)
    with pytest.raises(InputError, match=r"item 7.*reserved token"):
        encoder.prepare_many(["fine", "bad <|image_pad|> text"], start=6)


def test_encode_groups_texts_and_keeps_the_order(encoder, media):
    from unite_search.encoder import TEXT_GROUP, _groups

    items = [f"text {i}" for i in range(TEXT_GROUP + 3)] + [{"image": media["image"]}, "last one"]
    groups = list(_groups(items))
    assert [(start, len(values)) for start, values in groups] == [(0, TEXT_GROUP), (TEXT_GROUP, 3),
                                                                  (TEXT_GROUP + 3, 1), (TEXT_GROUP + 4, 1)]  # fmt: skip
    vecs = encoder.encode(items)
    for i in (0, TEXT_GROUP - 1, TEXT_GROUP, TEXT_GROUP + 3, TEXT_GROUP + 4):
        np.testing.assert_allclose(vecs[i], encoder.encode([items[i]])[0], atol=1e-5)
