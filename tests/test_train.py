"""Fine-tuning: the losses by hand, gradient cache, two processes, learning, resume, data errors, adapters."""

import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from unite_search import Encoder, Item  # noqa: E402
from unite_search.errors import ConfigError, InputError  # noqa: E402
from unite_search.settings import EncoderSettings  # noqa: E402
from unite_search.train import infonce_loss, mamcl_loss, modality_code  # noqa: E402
from unite_search.train.data import Pair, load_pairs, pairs_from_folder  # noqa: E402
from unite_search.train.trainer import TrainConfig, Trainer  # noqa: E402

TAU = 0.03


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Training tests run with one torch thread: on a loaded machine a pool of several spins against
    other processes and a test takes 10x as long (measured 19-24 min instead of 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ce(logits, label):
    return -(logits[label] - math.log(sum(math.exp(x) for x in logits)))


def test_mamcl_by_hand_mask_and_dual():
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    c = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.6, -0.8]])
    targets, cands = ["image", "text", "image"], ["image", "text", "image"]
    s = (q @ c.T / TAU).tolist()
    # row 0 looks for images: candidate 1 (text) is masked out; row 1 looks for text: only itself remains
    expected = (_ce([s[0][0], -1e9, s[0][2]], 0) + _ce([-1e9, s[1][1], -1e9], 1) + _ce([s[2][0], -1e9, s[2][2]], 2)) / 3
    got = mamcl_loss(q, c, targets, cands)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    dual = mamcl_loss(q, c, targets, cands, dual=True)
    st = list(zip(*s, strict=True))  # unmasked S.T
    c2q = sum(_ce(list(st[j]), j) for j in range(3)) / 3
    assert float(dual) == pytest.approx((expected + c2q) / 2, rel=1e-5)  # upstream: (L_q2c + L_c2q) / 2
    # the mask removes exactly the cross-modality candidates: moving the text candidate changes no image
    # row's term (row 1 keeps only itself, whose term is 0), moving an image candidate does
    moved_text, moved_image = c.clone(), c.clone()
    moved_text[1] = torch.tensor([-1.0, 0.0])
    moved_image[2] = torch.tensor([0.0, -1.0])
    assert float(mamcl_loss(q, moved_text, targets, cands)) == pytest.approx(float(got), rel=1e-6)
    assert float(mamcl_loss(q, moved_image, targets, cands)) != pytest.approx(float(got), rel=1e-3)
    # the dual term is unmasked: there, moving the text candidate does matter
    assert float(mamcl_loss(q, moved_text, targets, cands, dual=True)) != pytest.approx(float(dual), rel=1e-3)
    with pytest.raises(ValueError, match="own candidate"):
        mamcl_loss(q, c, ["video", "text", "image"], cands)


def test_mamcl_equals_infonce_term_when_all_targets_match_and_codes():
    q = torch.nn.functional.normalize(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    c = torch.nn.functional.normalize(torch.randn(5, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    s = (q @ c.T / TAU).tolist()
    by_hand = sum(_ce(s[i], i) for i in range(5)) / 5
    assert float(mamcl_loss(q, c, ["video"] * 5, ["video"] * 5)) == pytest.approx(by_hand, rel=1e-5)
    st = list(zip(*s, strict=True))
    sym = (by_hand + sum(_ce(list(st[j]), j) for j in range(5)) / 5) / 2
    assert float(infonce_loss(q, c)) == pytest.approx(sym, rel=1e-5)
    assert modality_code("text,image") == 3 and modality_code({"video"}) == 4 and modality_code("video,text") == 5
    with pytest.raises(ValueError, match="unknown modality"):
        modality_code("audio")


def _pairs(n, media=None):
    """Text -> text pairs, with some text -> image pairs mixed in when ``media`` gives images."""
    out = []
    for i in range(n):
        if media and i % 2:
            out.append(Pair(Item(text=f"picture {i}"), Item(image=media[i % len(media)]), 2, 2, 0))
        else:
            out.append(Pair(Item(text=f"question number {i}"), Item(text=f"answer {i} " * (1 + i % 3)), 1, 1, 0))
    return out


def _randomise_lora(trainer, seed=0):
    """LoRA B starts at zero, which would leave A's gradient zero: give every adapter weight a value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainer.params:
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def _grads(trainer):
    return torch.cat([p.grad.flatten() for p in trainer.params]).numpy().copy()


def test_gradient_cache_equals_one_big_batch(tiny_dir, media, tmp_path):
    pairs = _pairs(8, [str(media["image"]), str(media["image2"])])
    results = {}
    for cached in (True, False):
        enc = Encoder.load(tiny_dir, device="cpu")
        # without dropout: the two draw its masks in other orders (test_train_checks covers the cache with it)
        cfg = TrainConfig(batch_size=8, lr=1e-3, grad_cache=cached, chunk_tokens=600, lora_dropout=0.0)
        trainer = Trainer(enc, pairs, cfg, tmp_path / str(cached))
        _randomise_lora(trainer)
        loss = trainer.compute_gradients(pairs)
        results[cached] = (loss, _grads(trainer))
    (loss_a, grad_a), (loss_b, grad_b) = results[True], results[False]
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert np.abs(grad_a).max() > 0
    np.testing.assert_allclose(grad_a, grad_b, rtol=1e-4, atol=1e-6)  # float32; chunks of ~600 tokens vs all at once


def test_the_pooled_last_layer_trains_as_the_full_one(tiny_dir, media, tmp_path):
    """LoRA with activation checkpointing (the default) recomputes the last layer in the backward pass:
    the loss and the adapter's gradients are those of the full last layer (speed switch ``pooled_only``)."""
    from unite_search.speed import Speed

    pairs = _pairs(8, [str(media["image"]), str(media["image2"])])
    results = {}
    for name in ("default", "vision_runs,prefix_cache"):
        enc = Encoder.load(tiny_dir, device="cpu", speed=Speed.parse(name))
        # without dropout: the pooled layer draws masks for fewer rows than the full one
        trainer = Trainer(enc, pairs, TrainConfig(batch_size=8, lr=1e-3, lora_dropout=0.0), tmp_path / name)
        assert trainer.config.gradient_checkpointing
        _randomise_lora(trainer)
        loss = trainer.compute_gradients(pairs)
        pooled = getattr(enc._model.language_model.layers[-1], "_unite_pooled", False)
        results[name] = (loss, _grads(trainer), pooled)
    (loss_a, grad_a, pooled_a), (loss_b, grad_b, pooled_b) = results.values()
    assert (pooled_a, pooled_b) == (True, False)  # the pooled path ran in one of them only
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert np.abs(grad_a).max() > 0
    np.testing.assert_allclose(grad_a, grad_b, rtol=1e-4, atol=2e-6)


TWO_PROCESS = r"""
import json, os, sys, torch
import torch.distributed as dist
torch.set_num_threads(1)  # two processes on a small machine: no thread pool oversubscribes it
sys.path.insert(0, sys.argv[3])
from test_train import _pairs, _randomise_lora, _grads
from unite_search import Encoder
from unite_search.train.trainer import Trainer, TrainConfig
dist.init_process_group("gloo")
enc = Encoder.load(sys.argv[1], device="cpu")
pairs = _pairs(8)
config = TrainConfig(batch_size=8, lr=1e-3, lora_dropout=0.0)
trainer = Trainer(enc, pairs, config, sys.argv[2] + f"/rank{dist.get_rank()}")
_randomise_lora(trainer)
loss = trainer.compute_gradients(pairs)
if dist.get_rank() == 0:
    json.dump({"loss": loss, "grad": _grads(trainer).tolist()}, open(sys.argv[2] + "/two.json", "w"))
dist.destroy_process_group()
"""


def test_two_processes_with_gathered_negatives_match_one(tiny_dir, tmp_path):
    here = str(Path(__file__).parent)
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESS)
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")}  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tiny_dir), str(tmp_path), here],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
        )
        for r in range(2)
    ]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    two = json.loads((tmp_path / "two.json").read_text())
    # without dropout: each process draws its own masks
    cfg = TrainConfig(batch_size=8, lr=1e-3, lora_dropout=0.0)
    one = Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(8), cfg, tmp_path / "one")
    _randomise_lora(one)
    loss = one.compute_gradients(_pairs(8))
    assert two["loss"] == pytest.approx(loss, rel=1e-5)
    # float32 sums in other orders (halves of the batch in each process): up to 1.3e-6 measured
    np.testing.assert_allclose(np.array(two["grad"]), _grads(one), rtol=1e-4, atol=2e-6)


COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}
SHAPES = ("circle", "square", "triangle")


def _draw(draw, shape: str, x: int, y: int, size: int, fill) -> None:
    if shape == "circle":
        draw.ellipse([x, y, x + size, y + size], fill=fill)
    elif shape == "square":
        draw.rectangle([x, y, x + size, y + size], fill=fill)
    else:
        draw.polygon([(x, y + size), (x + size, y + size), (x + size // 2, y)], fill=fill)


def _shape(root: Path, colour: str, shape: str, seed: int) -> str:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (112, 112), tuple(int(x) for x in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(img)
    size = int(rng.integers(30, 50))
    x, y = (int(v) for v in rng.integers(5, 112 - size - 5, 2))
    _draw(draw, shape, x, y, size, COLOURS[colour])
    path = root / f"{colour}_{shape}_{seed}.png"
    img.save(path)
    return str(path)


def _shape_pairs(root: Path, seeds) -> list[Pair]:
    root.mkdir(parents=True, exist_ok=True)
    return [Pair(Item(text=f"a {c} {s}"), Item(image=_shape(root, c, s, seed)), 2, 2, 0)
            for seed in seeds for c in COLOURS for s in SHAPES]  # fmt: skip


def _clip(colour: str, shape: str, seed: int, frames: int = 4) -> np.ndarray:
    """A shape sliding right: (frames, 112, 112, 3) uint8."""
    from PIL import Image, ImageDraw

    y, size, out = int(np.random.default_rng(seed).integers(10, 60)), 34, []
    for f in range(frames):
        img = Image.new("RGB", (112, 112), (235, 235, 235))
        draw = ImageDraw.Draw(img)
        _draw(draw, shape, 5 + 18 * f, y, size, COLOURS[colour])
        out.append(np.asarray(img))
    return np.stack(out)


def _clip_pairs(seeds) -> list[Pair]:
    """Caption -> clip pairs and composed (clip + edit) -> clip triplets, all targeting video."""
    colours, out = list(COLOURS), []
    for seed in seeds:
        for c in colours:
            for s in SHAPES:
                clip = _clip(c, s, seed)
                out.append(Pair(Item(text=f"a {c} {s} moving right"), Item(video=clip), 4, 4, 0))
                other = colours[(colours.index(c) + 1) % 3]
                edited = _clip(other, s, seed + 50)
                out.append(Pair(Item(video=clip, text=f"make it {other}"), Item(video=edited), 4, 4, 0))
    return out


# 8x8 tokens an image and frame (UNITE's budget raises each to 16x16): enough for the shapes, in a quarter of the time
SMALL = EncoderSettings(min_pixels=64 * 28 * 28, max_pixels=64 * 28 * 28, video_min_pixels=64 * 28 * 28)


def test_it_learns_and_resume_continues_the_same_curve(tiny_dir, tmp_path):
    # images of coloured shapes, clips of moving shapes and composed clip + edit -> clip triplets:
    # mixed targets, so MAMCL's mask is at work in every batch
    train = _shape_pairs(tmp_path / "img", range(8)) + _clip_pairs(range(3))
    held = [_shape_pairs(tmp_path / "held", [100 + k]) for k in range(3)]  # 3 held-out sets of the 9 classes
    cfg = TrainConfig(stage=2, batch_size=18, lr=5e-3, lora_r=16, lora_alpha=32, epochs=6, warmup=0.1, save_every=40)
    trainer = Trainer(Encoder.load(tiny_dir, device="cpu", settings=SMALL), train, cfg, tmp_path / "run")
    assert trainer.total == 42
    before = np.mean([trainer.evaluate(h) for h in held])
    log = trainer.train()
    after = np.mean([trainer.evaluate(h) for h in held])
    chance = 100 / 9
    assert before <= 2 * chance  # an untrained tiny model is near chance
    assert after >= 3 * chance, (before, after)  # well above it after 42 steps (40.7% measured)
    assert np.mean([e["loss"] for e in log[-6:]]) < np.mean([e["loss"] for e in log[:6]])
    # resume from the step-40 checkpoint: the same losses for steps 41.. as the uninterrupted run
    again = Trainer(Encoder.load(tiny_dir, device="cpu", settings=SMALL), train, cfg, tmp_path / "resumed")
    again.resume(tmp_path / "run" / "checkpoint-40")
    resumed = again.train()
    np.testing.assert_allclose([e["loss"] for e in resumed[40:]], [e["loss"] for e in log[40:]], rtol=1e-4)
    assert len(resumed) == len(log)
    # ... and only with the settings and data that shape that curve
    for other, data, said in [(replace(cfg, lr=1e-3), train, "lr 0.005 (now 0.001)"),
                              (cfg, train[:-1], f"{len(train)} training pairs (now {len(train) - 1})")]:  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(said)):
            Trainer(Encoder.load(tiny_dir, device="cpu", settings=SMALL), data, other, tmp_path / "x").resume(
                tmp_path / "run" / "checkpoint-40"
            )
    # the adapter reloads as an encoder with the trained vectors and its own identity
    adapted = Encoder.load(tiny_dir, device="cpu", settings=SMALL, adapter=tmp_path / "run" / "adapter")
    items = [held[0][0].query, held[0][0].candidate]
    np.testing.assert_allclose(adapted.encode(items), trainer.encoder.encode(items), atol=1e-4)
    assert adapted.revision.startswith(trainer.encoder.revision.split("+")[0] + "+lora-")
    assert adapted.settings["revision"] != Encoder.load(tiny_dir, device="cpu", settings=SMALL).revision


def test_merged_model_equals_base_plus_adapter(tiny_dir, media, tmp_path):
    from click.testing import CliRunner

    from unite_search.cli import main

    pairs = _pairs(8, [str(media["image"])])
    trainer = Trainer(Encoder.load(tiny_dir, device="cpu"), pairs, TrainConfig(batch_size=4, lr=1e-2, max_steps=2),
                      tmp_path / "run")  # fmt: skip
    _randomise_lora(trainer)
    trainer.train()
    out = CliRunner().invoke(main, ["merge", "--model", str(tiny_dir), "--adapter", str(tmp_path / "run" / "adapter"),
                                    "--output", str(tmp_path / "merged")])  # fmt: skip
    assert out.exit_code == 0, out.output
    merged = Encoder.load(tmp_path / "merged", device="cpu")
    adapted = Encoder.load(tiny_dir, device="cpu", adapter=tmp_path / "run" / "adapter")
    items = [{"text": "question number 3"}, {"image": str(media["image"]), "text": "composed"}]
    np.testing.assert_allclose(merged.encode(items), adapted.encode(items), atol=1e-5)
    assert merged.revision != Encoder.load(tiny_dir, device="cpu").revision


def test_bad_training_data_names_the_line(tmp_path, media):
    img = tmp_path / "a.png"
    img.write_bytes(Path(media["image"]).read_bytes())
    lines = [
        {
            "query": {"text": " <|IMAGE|>\n a photo", "image": "a.png"},
            "candidate": {"image": "a.png"},
            "target_modal": "image",
        },
        {"query": {"text": "x"}, "candidate": {"image": "missing.png"}},
        {"query": {"text": "x"}, "candidate": {}},
        {"query": {"text": "x"}, "candidate": {"text": "y"}, "target_modal": "audio"},
        {"query": {"text": "x"}, "candidate": {"text": "y"}, "target_modal": "image"},
        {"query": {"image": ["a.png", "a.png"]}, "candidate": {"text": "y"}},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    with pytest.raises(InputError, match=r"pairs\.jsonl:2: 'candidate\.image' file not found"):
        load_pairs(path)
    pairs, problems = load_pairs(path, on_error="skip")
    assert len(pairs) == 1 and pairs[0].query.text == "a photo"  # the placeholder and the spaces after it removed
    assert pairs[0].target == 2 and pairs[0].line == 1
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in problems] == ["2", "3", "4", "5", "6", "7"]
    assert "empty" in problems[1] and "unknown modality 'audio'" in problems[2]
    assert "not the candidate's modalities" in problems[3] and "one per item" in problems[4] and "JSON" in problems[5]


def test_pairs_from_a_folder_of_captioned_media(tmp_path, media):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(Path(media["image"]).read_bytes())
    (tmp_path / "sub" / "a.txt").write_text("a gradient\n")
    (tmp_path / "clip.mp4").write_bytes(Path(media["video"]).read_bytes())
    (tmp_path / "clip.txt").write_text("bars counting up")
    (tmp_path / "lonely.txt").write_text("no media here")
    pairs = pairs_from_folder(tmp_path)
    assert [(p.query.text, p.target) for p in pairs] == [("bars counting up", 4), ("a gradient", 2)]


def test_cosine_schedule_with_warmup(tiny_dir, tmp_path):
    trainer = Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(40), TrainConfig(batch_size=2, lr=1.0, warmup=0.1),
                      tmp_path)  # fmt: skip
    assert trainer.total == 20 and trainer.config.lora_alpha == 64  # stage 2 default
    lrs = [trainer.lr_at(s) for s in range(20)]
    assert lrs[:2] == [0.5, 1.0]  # 2 warmup steps, linear
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 17 / 18)))
    assert all(a >= b for a, b in itertools.pairwise(lrs[2:]))
    stage1 = Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(4), TrainConfig(stage=1, batch_size=2), tmp_path)
    assert (stage1.config.lr, stage1.config.lora_alpha) == (1e-4, 16)
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(3), TrainConfig(batch_size=4), tmp_path)


def test_finetune_cli_with_held_out_evaluation(tiny_dir, tmp_path):
    from click.testing import CliRunner

    from unite_search.cli import main

    lines = [{"query": {"text": f"question {i}"}, "candidate": {"text": f"answer {i}"}} for i in range(8)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = ["finetune", "--data", str(tmp_path / "pairs.jsonl"), "--model", str(tiny_dir), "--output",
            str(tmp_path / "run"), "--batch-size", "4", "--lr", "1e-3", "--eval-data", str(tmp_path / "pairs.jsonl"),
            "--eval-every", "1", "--save-every", "1", "--device", "cpu"]  # fmt: skip
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "trained 2 steps" in out.stdout
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    saved = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer.json").read_text())
    # the held-out evaluation before the first step, then one after each step
    assert [e["step"] for e in saved["log"]] == [0, 1, 2] and all("eval_r1" in e for e in saved["log"])
    resumed = CliRunner().invoke(main, [*args, "--resume", str(tmp_path / "run" / "checkpoint-2")])
    assert resumed.exit_code == 0 and "trained 2 steps" in resumed.stdout  # nothing left to do
    reseeded = CliRunner().invoke(main, [*args, "--seed", "5", "--resume", str(tmp_path / "run" / "checkpoint-2")])
    assert reseeded.exit_code != 0 and "seed 0 (now 5)" in reseeded.output  # the CLI's seed reaches the run
    huge = CliRunner().invoke(main, [*args, "--seed", str(2**64)])  # torch's generators take 64 bits
    assert huge.exit_code == 2 and "--seed" in huge.output
    with pytest.raises(ConfigError, match="seed -1 must be a whole number"):
        TrainConfig(seed=-1).resolved()
    bad = CliRunner().invoke(main, [*args[:2], str(tmp_path / "missing.jsonl"), *args[3:]])
    assert bad.exit_code == 2
    # one of --eval-data and --eval-every without the other evaluated nothing, silently
    for cut in (args[:11] + args[13:], args[:13] + args[15:]):
        alone = CliRunner().invoke(main, cut)
        assert alone.exit_code == 2 and "--eval-data and --eval-every go together" in alone.output
    # merge writes a new folder only: into the base's own folder it overwrote the base's weights
    base_copy = tmp_path / "base-copy"
    shutil.copytree(tiny_dir, base_copy)
    weights = {p.name: p.read_bytes() for p in base_copy.glob("*.safetensors")}
    adapter = tmp_path / "run" / "adapter"
    out = CliRunner().invoke(main, ["merge", "--model", str(base_copy), "--adapter", str(adapter),
                                    "--output", str(base_copy)])  # fmt: skip
    assert out.exit_code == 2 and "not an empty folder" in out.output
    assert {p.name: p.read_bytes() for p in base_copy.glob("*.safetensors")} == weights
    (tmp_path / "empty").mkdir()
    out = CliRunner().invoke(main, ["merge", "--model", str(tiny_dir), "--adapter", str(adapter), "--output",
                                    str(tmp_path / "empty")])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert (tmp_path / "empty" / "config.json").is_file() and not list(tmp_path.glob(".empty.tmp-*"))
    (tmp_path / "target").mkdir()  # a link to an empty folder: written into that folder
    (tmp_path / "link").symlink_to(tmp_path / "target")
    out = CliRunner().invoke(main, ["merge", "--model", str(tiny_dir), "--adapter", str(adapter), "--output",
                                    str(tmp_path / "link")])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert (tmp_path / "target" / "unite-merge.json").is_file()


def test_pairs_from_an_index_and_only_language_model_adapters(tiny_dir, encoder, tmp_path):
    from unite_search.ingestion import ingest
    from unite_search.train.data import pairs_from_index

    corpus = Path(__file__).resolve().parents[1] / "examples" / "corpus"
    ingest(corpus, tmp_path / "index", encoder=encoder)
    pairs = pairs_from_index(tmp_path / "index")
    assert sorted((p.query.text, p.target) for p in pairs) == [
        ("A sunny beach under a blue sky.", 2), ("Coloured bars sliding to the right.", 4)]  # fmt: skip
    trainer = Trainer(Encoder.load(tiny_dir, device="cpu"), pairs, TrainConfig(batch_size=2), tmp_path / "run")
    names = [n for n, p in trainer.peft.named_parameters() if p.requires_grad]
    assert len(names) == 2 * 7 * 2  # 2 layers x 7 linears x (A, B)
    assert all("language_model" in n and "lora_" in n for n in names)  # vision tower and merger frozen
