"""Fine-tuning's checks: what the encoder would refuse mid-run is a bad line before training, captions pair by
exact stem, an adapter loads only on the base it was trained on, dropout (eval mode after training, the
gradient cache, resume) and checkpoints that are whole or absent."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from unite_search import Encoder, Item, Modality  # noqa: E402
from unite_search.errors import ConfigError, InputError, ModelLoadError  # noqa: E402
from unite_search.train.data import Pair, load_pairs, pairs_from_folder  # noqa: E402
from unite_search.train.trainer import TrainConfig, Trainer  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread, as in test_train.py: a pool of several spins against other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pairs(n: int, tag: str = "") -> list[Pair]:
    return [Pair(Item(text=f"{tag}question number {i}"), Item(text=f"{tag}answer {i} " * (1 + i % 3)), 1, 1, 0)
            for i in range(n)]  # fmt: skip


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def _losses(log) -> list[float]:
    return [e["loss"] for e in log if "loss" in e]


# ------------------------------------------------------------------ pair files: what the encoder refuses


def test_texts_the_encoder_refuses_are_bad_lines_before_training(tmp_path, encoder):
    reserved, surrogate = "see <|vision_start|> here", "lone \ud800 surrogate"
    path = _write(tmp_path / "pairs.jsonl", [
        {"query": {"text": "a question"}, "candidate": {"text": "an answer"}},
        {"query": {"text": reserved}, "candidate": {"text": "an answer"}},
        '{"query": {"text": "a question"}, "candidate": {"text": "lone \\ud800 surrogate"}}',
    ])  # fmt: skip
    pairs, problems = load_pairs(path, on_error="skip", probe=False)
    assert [p.line for p in pairs] == [1]
    assert problems == [
        f"{path}:2: 'query.text': text contains the model's reserved token(s) ['<|vision_start|>']; remove them",
        f"{path}:3: 'candidate.text': text is not valid Unicode (a lone surrogate at character 6)",
    ]
    # the encoder's own refusals: training would have stopped at the step drawing either pair
    for text in (reserved, surrogate):
        with pytest.raises(InputError):
            encoder.prepare({"text": text})


def test_an_image_the_encoder_refuses_after_its_first_resize_is_a_bad_line(tmp_path, encoder):
    from PIL import Image

    # both are 200:1; the first resize makes 57x11400 56x11396 (203.5:1, refused) and keeps 56x11200
    Image.new("RGB", (57, 11400), (9, 99, 199)).save(tmp_path / "tall.png")
    Image.new("RGB", (56, 11200), (9, 99, 199)).save(tmp_path / "fits.png")
    path = _write(tmp_path / "pairs.jsonl", [{"query": {"text": "a banner"}, "candidate": {"image": name}}
                                             for name in ("tall.png", "fits.png")])  # fmt: skip
    pairs, problems = load_pairs(path, on_error="skip")
    assert [p.line for p in pairs] == [2]
    assert len(problems) == 1 and problems[0].startswith(f"{path}:1: 'candidate.image' {tmp_path / 'tall.png'}: ")
    assert "aspect ratio 204:1 is above 200:1" in problems[0]
    with pytest.raises(InputError, match="aspect ratio"):
        encoder.prepare({"image": str(tmp_path / "tall.png")})
    assert encoder.prepare({"image": str(tmp_path / "fits.png")}).image is not None


def test_a_placeholder_only_opens_a_text_and_only_for_media_its_side_has(tmp_path, media):
    """UNITE's prompt puts the media before the text: a placeholder later in the text, or for media the side lacks,
    would train on another input than the line says (moved, or silently text only), so it is a bad line."""
    (tmp_path / "a.png").write_bytes(Path(media["image"]).read_bytes())
    (tmp_path / "c.mp4").write_bytes(Path(media["video"]).read_bytes())
    image, video, text = {"image": "a.png"}, {"video": "c.mp4"}, {"text": "an answer"}
    lines = [
        {"query": {"text": "<|IMAGE|>\nRepresent the given image", **image}, "candidate": text},
        {"query": {"text": "<|VIDEO|> <|IMAGE|>  both", **image, **video}, "candidate": text},
        {"query": {"text": "<|IMAGE|>", **image}, "candidate": text},
        {"query": {"text": "Find a photo like <|IMAGE|> but at night", **image}, "candidate": image},
        {"query": {"text": "<|VIDEO|> what happens next?"}, "candidate": text},
        {"query": {"text": "<|IMAGE|><|IMAGE|> twice", **image}, "candidate": text},
        {"query": text, "candidate": {"text": "<|VIDEO|>", **image}},
    ]
    pairs, problems = load_pairs(_write(tmp_path / "pairs.jsonl", lines), on_error="skip", probe=False)
    assert [(p.query.text, p.query.modalities) for p in pairs] == [
        ("Represent the given image", {Modality.IMAGE, Modality.TEXT}),
        ("both", {Modality.IMAGE, Modality.VIDEO, Modality.TEXT}),
        (None, {Modality.IMAGE}),
    ]
    assert [p.split(": ", 1)[1] for p in problems] == [
        "'query.text' has <|IMAGE|> after the start: UNITE's prompt puts the image before the text, as every query "
        "and index vector has it; write it at the start or leave it out",
        "'query.text' has <|VIDEO|> but 'query' has no video",
        "'query.text' has <|IMAGE|> 2 times; an item holds one image",
        "'candidate.text' has <|VIDEO|> but 'candidate' has no video",
    ]


def test_a_name_too_long_or_json_nested_too_deep_is_that_lines_problem(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", [
        {"query": {"text": "q"}, "candidate": {"text": "c"}},
        {"query": {"text": "q"}, "candidate": {"image": "a" * 300 + ".jpg"}},
        '{"query": ' + "[" * 100000 + "]" * 100000 + ', "candidate": {"text": "c"}}',
    ])  # fmt: skip
    pairs, problems = load_pairs(path, on_error="skip", probe=False)
    assert [p.line for p in pairs] == [1]
    assert [p.split(": ", 1)[1] for p in problems] == [
        "'candidate.image' cannot be looked up: File name too long",
        "JSON nested too deeply to read",
    ]
    with pytest.raises(InputError, match="2 bad lines"):
        load_pairs(path, probe=False)


def test_a_caption_labels_only_the_media_of_exactly_its_stem(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (64, 64), (200, 10, 10))
    for name, caption in [("cat", "a cat"), ("cat.small", "a small cat"), ("photo[1]", "photo one"), ("photo1", None),
                          ("sub/clip", "a clip")]:  # fmt: skip
        (tmp_path / name).parent.mkdir(exist_ok=True)
        img.save(tmp_path / f"{name}.jpg")
        if caption:
            (tmp_path / f"{name}.txt").write_text(caption)
    (tmp_path / "sub" / "clip.MP4").write_bytes(b"not opened here")
    found = sorted((p.query.text, Path(p.candidate.image or p.candidate.video).relative_to(tmp_path).as_posix())
                   for p in pairs_from_folder(tmp_path))  # fmt: skip
    assert found == [("a cat", "cat.jpg"), ("a clip", "sub/clip.MP4"), ("a clip", "sub/clip.jpg"),
                     ("a small cat", "cat.small.jpg"), ("photo one", "photo[1].jpg")]  # fmt: skip


# ------------------------------------------------------------------------- an adapter and its base


def test_an_adapter_loads_only_on_the_base_it_was_trained_on(tiny_dir, tmp_path):
    from click.testing import CliRunner

    from unite_search.cli import main
    from unite_search.encoder import describe
    from unite_search.models import fingerprint
    from unite_search.testing import tiny_model
    from unite_search.train.merge import LINEAGE, merge_adapter

    other = tiny_model(tmp_path / "other", seed=1)  # the same shapes, other weights (base-2b against instruct-2b)
    base = Encoder.load(tiny_dir, device="cpu")
    own, theirs = base.revision, describe(other)["revision"]
    Trainer(base, _pairs(4), TrainConfig(batch_size=4, max_steps=1), tmp_path / "run").train()
    adapter = tmp_path / "run" / "adapter"
    with pytest.raises(ModelLoadError) as refused:
        Encoder.load(other, device="cpu", adapter=adapter)
    assert "\n" not in str(refused.value) and own in str(refused.value) and theirs in str(refused.value)
    with pytest.raises(ModelLoadError, match="was trained on"):
        merge_adapter(other, adapter, tmp_path / "wrong")
    out = CliRunner().invoke(main, ["merge", "-m", str(other), "--adapter", str(adapter), "-o", str(tmp_path / "w")])
    assert out.exit_code == 1 and "was trained on" in out.output and not (tmp_path / "w").exists()
    # without a model: the base the adapter records, not the default model
    assert describe(adapter=adapter)["revision"] == f"{own}+lora-{fingerprint(adapter)}"
    out = CliRunner().invoke(main, ["merge", "--adapter", str(adapter), "--output", str(tmp_path / "merged")])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "merged" / LINEAGE).read_text())["base_revision"] == own
    # also its base under the identity rule before 2026-11-29, or a folder merged from the base it records
    record = json.loads((adapter / "unite_train.json").read_text())
    for name, revision, folder in [("legacy", "local-" + fingerprint(tiny_dir, legacy=True), tiny_dir),
                                   ("stacked", f"{own}+lora-{fingerprint(adapter)}", tmp_path / "merged")]:  # fmt: skip
        shutil.copytree(adapter, tmp_path / name)
        (tmp_path / name / "unite_train.json").write_text(json.dumps({**record, "base_revision": revision}))
        assert describe(folder, adapter=tmp_path / name)["model_id"] == str(Path(folder).resolve())
        with pytest.raises(ModelLoadError, match="was trained on"):
            describe(other, adapter=tmp_path / name)
    # an adapter without the record (peft's own, or an older one) loads on any base, as before
    shutil.copytree(adapter, tmp_path / "bare")
    (tmp_path / "bare" / "unite_train.json").unlink()
    assert Encoder.load(other, device="cpu", adapter=tmp_path / "bare").model_id == str(Path(other).resolve())


# ---------------------------------------------------------------------------------------- dropout


def _randomise_lora(trainer, seed=0):
    """LoRA B starts at zero, which would leave A's gradient zero: give every adapter weight a value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainer.params:
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def test_the_model_is_in_eval_mode_after_training_even_after_an_error(tiny_dir, tmp_path):
    encoder = Encoder.load(tiny_dir, device="cpu")
    cfg = TrainConfig(batch_size=4, lr=1e-2, max_steps=2, lora_dropout=0.3, grad_cache=False)
    trainer = Trainer(encoder, _pairs(8), cfg, tmp_path / "run")
    trainer.train()
    assert not encoder._model.training
    items = ["question number 1", "answer 2"]
    vectors = trainer.encoder.encode(items)
    np.testing.assert_array_equal(vectors, trainer.encoder.encode(items))  # no dropout: the same vectors
    adapted = Encoder.load(tiny_dir, device="cpu", adapter=tmp_path / "run" / "adapter")
    np.testing.assert_allclose(vectors, adapted.encode(items), atol=1e-5)

    def failing(*args):
        raise RuntimeError("the loss failed")

    trainer._loss = failing
    with pytest.raises(RuntimeError, match="the loss failed"):
        trainer.compute_gradients(trainer.batch_at(0))
    assert not encoder._model.training


def test_the_gradient_cache_gives_the_same_gradients_with_dropout(tiny_dir, tmp_path):
    """Dropout draws from the run's seed, not from the process's random state (it did: a run's curve, and
    whether the learning test passed, hung on what the process had drawn before)."""
    pairs, grads = _pairs(8), {}
    for cached, seed, before in [(True, 3, 1), (False, 3, 2), (False, 4, 1), (False, 3, 5)]:
        cfg = TrainConfig(batch_size=8, lr=1e-3, grad_cache=cached, chunk_tokens=150, lora_dropout=0.3, seed=seed)
        trainer = Trainer(Encoder.load(tiny_dir, device="cpu"), pairs, cfg, tmp_path / f"{cached}{seed}{before}")
        _randomise_lora(trainer)
        torch.manual_seed(before)  # whatever the process drew before
        state = torch.get_rng_state()
        trainer.compute_gradients(pairs)
        assert torch.equal(torch.get_rng_state(), state)  # ... is neither used nor moved
        grads[cached, seed, before] = torch.cat([p.grad.flatten() for p in trainer.params]).numpy().copy()
    assert np.abs(grads[False, 3, 2] - grads[False, 4, 1]).max() > 1e-3  # dropout at work: other masks, other grads
    np.testing.assert_array_equal(grads[False, 3, 2], grads[False, 3, 5])
    np.testing.assert_allclose(grads[True, 3, 1], grads[False, 3, 2], rtol=1e-4, atol=1e-6)


def test_a_resumed_run_with_dropout_continues_the_same_curve(tiny_dir, tmp_path):
    cfg = TrainConfig(batch_size=4, lr=1e-2, max_steps=4, save_every=2, lora_dropout=0.3)
    torch.manual_seed(123)  # whatever the first process drew before
    full = Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(8), cfg, tmp_path / "full").train()
    torch.manual_seed(7)  # whatever the resuming process drew before
    again = Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(8), cfg, tmp_path / "again")
    again.resume(tmp_path / "full" / "checkpoint-2")
    resumed = again.train()
    np.testing.assert_allclose(_losses(resumed), _losses(full), rtol=1e-6)


def test_gradients_are_clipped_to_max_grad_norm_and_the_norm_logged(tiny_dir, tmp_path):
    """As UNITE's recipe (its trainer's default, 1.0): the LoRA gradients' total L2 norm is clipped before the
    optimizer steps, in the same direction; the norm before clipping is in every step's log line."""
    assert TrainConfig().max_grad_norm == 1.0 and TrainConfig().lora_dropout == 0.05  # UNITE's training scripts
    grads, befores = {}, {}
    for limit in (None, 1e-4):
        cfg = TrainConfig(batch_size=4, max_grad_norm=limit, lora_dropout=0.0)
        trainer = Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(4), cfg, tmp_path / str(limit))
        for p in trainer.params:  # LoRA's B starts at zero: give it weights, so that A gets gradients too
            torch.nn.init.normal_(p, std=0.05)
        loss = trainer.compute_gradients(_pairs(4))
        befores[limit] = before = torch.cat([p.grad.flatten() for p in trainer.params]).clone()
        norm = trainer.clip_gradients(loss)
        grads[limit] = torch.cat([p.grad.flatten() for p in trainer.params])
        assert norm == pytest.approx(float(before.norm()), rel=1e-5) and norm > 1e-3
    assert torch.equal(grads[None], befores[None])  # no limit: untouched
    assert float(grads[1e-4].norm()) == pytest.approx(1e-4, rel=1e-4)
    np.testing.assert_allclose(grads[1e-4] * (norm / 1e-4), befores[1e-4], rtol=1e-4, atol=1e-9)

    log = Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(4), TrainConfig(batch_size=4, max_steps=2),
                  tmp_path / "run").train()  # fmt: skip
    assert [e["step"] for e in log if e.get("grad_norm", 0) > 0] == [1, 2]
    for bad in ({"max_grad_norm": -1.0}, {"max_grad_norm": float("nan")}, {"lora_dropout": 1.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TrainConfig(**bad).resolved()


def test_a_resume_with_another_clipping_is_refused(tiny_dir, tmp_path):
    cfg = TrainConfig(batch_size=4, max_steps=2, save_every=1)
    Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(4), cfg, tmp_path / "run").train()
    other = Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(4), TrainConfig(batch_size=4, max_steps=2,
                    max_grad_norm=0.5), tmp_path / "other")  # fmt: skip
    with pytest.raises(ConfigError, match=r"max_grad_norm 1\.0 \(now 0\.5\)"):
        other.resume(tmp_path / "run" / "checkpoint-1")
    meta_path = tmp_path / "run" / "checkpoint-1" / "trainer.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["max_grad_norm"]  # saved before clipping was a setting: that run never clipped
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"max_grad_norm None \(now 1\.0\)"):
        Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(4), cfg, tmp_path / "again").resume(meta_path.parent)
    unclipped = TrainConfig(batch_size=4, max_steps=2, save_every=1, max_grad_norm=None)
    Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(4), unclipped, tmp_path / "again").resume(meta_path.parent)


# ------------------------------------------------------------------------------------ checkpoints


class Killed(BaseException):
    """The process dying mid-save (as a KeyboardInterrupt would)."""


def test_a_checkpoint_is_whole_or_absent_and_resume_refuses_damaged_ones_and_other_data(tiny_dir, tmp_path,
                                                                                         monkeypatch):  # fmt: skip
    import safetensors.torch

    out, cfg = tmp_path / "out", TrainConfig(batch_size=4, lr=1e-2, max_steps=2, save_every=2)
    Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(8, "old "), cfg, out).train()
    checkpoint = out / "checkpoint-2"
    saved = {f.name: f.read_bytes() for f in checkpoint.iterdir()}
    # a second run into the same folder (other pairs, as many), killed while saving its checkpoint-2
    real = safetensors.torch.save_file

    def dying(tensors, filename, *args, **kwargs):
        if str(filename).endswith("optimizer.safetensors"):
            raise Killed
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", dying)
    with pytest.raises(Killed):
        Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(8, "new "), cfg, out).train()
    monkeypatch.undo()
    assert {f.name: f.read_bytes() for f in checkpoint.iterdir()} == saved  # the older one, whole
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder left
    # its data is recorded by a hash, not only a count: the other pairs cannot resume it
    with pytest.raises(ConfigError, match="other training pairs"):
        Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(8, "new "), cfg, tmp_path / "x").resume(checkpoint)
    # the second run, finished this time, replaces it whole
    Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(8, "new "), cfg, out).train()
    assert (checkpoint / "lora.safetensors").read_bytes() != saved["lora.safetensors"]
    Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(8, "new "), cfg, tmp_path / "y").resume(checkpoint)
    # nor another base model (of the same shape): the curve would join two models' runs
    from unite_search.testing import tiny_model

    other = Encoder.load(tiny_model(tmp_path / "other", seed=1), device="cpu")
    with pytest.raises(ConfigError, match="the base model at revision"):
        Trainer(other, _pairs(8, "new "), cfg, tmp_path / "w").resume(checkpoint)
    # a checkpoint cut short is a clear error, not a JSONDecodeError or a missing-file traceback
    text = (checkpoint / "trainer.json").read_text()
    (checkpoint / "trainer.json").write_text(text[: len(text) // 2])
    trainer = Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(8, "new "), cfg, tmp_path / "z")
    with pytest.raises(ConfigError, match=r"is not a whole checkpoint \(trainer\.json: JSONDecodeError"):
        trainer.resume(checkpoint)
    (checkpoint / "trainer.json").write_text(text)
    (checkpoint / "optimizer.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"not a whole checkpoint \(optimizer\.safetensors: missing\)"):
        trainer.resume(checkpoint)


def test_a_step_whose_loss_is_not_finite_stops_the_run_before_it_changes_a_weight(nan_dir, tmp_path):
    from corpora import NAN_CHAR

    from unite_search import TrainingError

    encoder = Encoder.load(nan_dir, device="cpu")
    pairs = _pairs(8)
    pairs[5] = Pair(Item(text=f"question {NAN_CHAR}"), Item(text="answer"), 1, 1, 0)  # NaN in step 2's batch
    cfg = TrainConfig(batch_size=4, lr=1e-2, max_steps=3, seed=0, save_every=1)
    trainer = Trainer(encoder, pairs, cfg, tmp_path / "run")
    order = [set(map(id, trainer.batch_at(step))) for step in range(3)]
    bad = next(step for step in range(3) if id(pairs[5]) in order[step])
    before = {}

    def snapshot_at(step):
        if trainer.step == step:
            before.update({n: p.detach().clone() for n, p in trainer._trainable().items()})

    original = trainer.compute_gradients

    def watched(batch):
        snapshot_at(bad)
        return original(batch)

    trainer.compute_gradients = watched
    with pytest.raises(TrainingError, match=rf"step {bad + 1}: the loss or its gradients are not finite"):
        trainer.train()
    assert trainer.step == bad and before
    for name, param in trainer._trainable().items():  # the weights of the step before, all finite
        assert torch.equal(param, before[name]) and bool(torch.isfinite(param).all()), name
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == [f"checkpoint-{s}" for s in
                                                                            range(1, bad + 1)]  # fmt: skip


def test_held_out_recall_ranks_ties_as_the_benchmarks_do(tiny_dir, tmp_path):
    """Two held-out pairs with one candidate: each query's own candidate ties with the other's copy. Ties
    went to the earlier one, so the later pair always missed (R@1 50 for the same pair twice); the benchmarks
    count a tie in the gold's favour."""
    twice = [Pair(Item(text="where is the red kite"), Item(text="a red kite over a field"), 1, 1, 0)] * 2
    others = [Pair(Item(text=f"question {i}"), Item(text=f"answer number {i}"), 1, 1, 0) for i in range(3)]
    trainer = Trainer(Encoder.load(tiny_dir, device="cpu"), others, TrainConfig(batch_size=2, max_steps=1),
                      tmp_path / "run")  # fmt: skip
    assert trainer.held_out(twice)["eval_r1"] == 100.0
    # a candidate that truly scores higher still counts against the own one
    q = trainer.encoder.encode([p.query for p in others])
    c = trainer.encoder.encode([p.candidate for p in others])
    own_first = [float((q[i] @ c.T).argmax() == i) for i in range(3)]
    assert trainer.held_out(others)["eval_r1"] == pytest.approx(100 * np.mean(own_first))
