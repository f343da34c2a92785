"""A fine-tuning run as a user sees it: metrics and curves, steps past an epoch, the pairs command, bad media."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from click.testing import CliRunner  # noqa: E402

from unite_search import Encoder, Item  # noqa: E402
from unite_search.cli import main  # noqa: E402
from unite_search.train.data import Pair, load_pairs, pairs_from_folder, pairs_from_index  # noqa: E402
from unite_search.train.plot import BACKGROUND, COLOURS, SIZE  # noqa: E402
from unite_search.train.trainer import TrainConfig, Trainer  # noqa: E402


def _text_pairs(folder: Path, n: int, name: str = "pairs.jsonl") -> Path:
    lines = [
        {"query": {"text": f"question {i}"}, "candidate": {"text": f"answer {i} " * (1 + i % 3)}} for i in range(n)
    ]
    path = folder / name
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _finetune(tiny_dir, data: Path, output: Path, *extra: str):
    args = ["finetune", "--data", str(data), "--model", str(tiny_dir), "--output", str(output), "--lr", "1e-3",
            "--device", "cpu", *extra]  # fmt: skip
    return CliRunner().invoke(main, args)


def _steps(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------- 8: metrics and curves


def test_held_out_metrics_reach_the_console_a_jsonl_file_and_a_plot(tiny_dir, tmp_path):
    from PIL import Image

    data, held = _text_pairs(tmp_path, 8), _text_pairs(tmp_path, 6, "held.jsonl")
    out = _finetune(tiny_dir, data, tmp_path / "run", "--batch-size", "4", "--max-steps", "3",
                    "--eval-data", str(held), "--eval-every", "2", "--save-every", "2")  # fmt: skip
    assert out.exit_code == 0, out.output
    entries = _steps(tmp_path / "run")
    # an evaluation before the first step, a line per step; held-out numbers at steps 2 and 3 (the last)
    assert [e["step"] for e in entries] == [0, 1, 2, 3]
    assert "loss" not in entries[0] and all(np.isfinite(e["loss"]) for e in entries[1:])
    assert [e["epoch"] for e in entries[1:]] == [1, 1, 2]
    evaluated = [e["step"] for e in entries if "eval_r1" in e]
    assert evaluated == [0, 2, 3]
    for e in entries:
        if "eval_r1" in e:
            assert 0 <= e["eval_r1"] <= e["eval_r5"] <= 100 and np.isfinite(e["eval_loss"]) and e["eval_pairs"] == 6
    assert entries[1].keys() >= {"step", "epoch", "loss", "lr", "samples_s"}
    # on the console: a line per evaluation with R@1, R@5 and the held-out loss, and the training loss
    last = entries[-1]
    assert f"step 3/3 held-out R@1 {last['eval_r1']:.1f} R@5 {last['eval_r5']:.1f} loss {last['eval_loss']:.4f}" in (
        out.stderr
    )
    assert f"step 0/3 held-out R@1 {entries[0]['eval_r1']:.1f}" in out.stderr
    assert f"step 1/3 (epoch 1) loss {entries[1]['loss']:.4f}" in out.stderr
    assert f"held-out R@1 {last['eval_r1']:.1f} R@5 {last['eval_r5']:.1f}; adapter in" in out.stdout

    # the curves: a valid PNG of the expected size, the training loss drawn in the upper panel and both
    # recall curves in the lower one
    with Image.open(tmp_path / "run" / "metrics.png") as img:
        img.verify()
    with Image.open(tmp_path / "run" / "metrics.png") as img:
        assert img.format == "PNG" and img.size == SIZE
        pixels = np.asarray(img.convert("RGB"))
    assert (pixels != np.array(BACKGROUND)).any(axis=-1).mean() > 0.01
    top, bottom = pixels[: SIZE[1] // 2], pixels[SIZE[1] // 2 :]

    def drawn(area, colour) -> int:
        return int((area == np.array(colour)).all(axis=-1).sum())

    assert drawn(top, COLOURS["loss"]) > 200 and drawn(top, COLOURS["eval_loss"]) > 50
    assert drawn(bottom, COLOURS["eval_r1"]) > 50 and drawn(bottom, COLOURS["eval_r5"]) > 50
    assert drawn(bottom, COLOURS["loss"]) == 0 and drawn(top, COLOURS["eval_r1"]) == 0

    # a resumed run rewrites the file from the checkpoint's log: no step twice
    resumed = _finetune(tiny_dir, data, tmp_path / "run", "--batch-size", "4", "--max-steps", "3", "--eval-data",
                        str(held), "--eval-every", "2", "--resume", str(tmp_path / "run" / "checkpoint-2"))  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    again = _steps(tmp_path / "run")
    assert [e["step"] for e in again] == [0, 1, 2, 3]
    assert again[:3] == entries[:3]
    assert again[3]["loss"] == pytest.approx(entries[3]["loss"], rel=1e-4)


# ------------------------------------------------------------ 9: steps past an epoch


def _pairs(n: int) -> list[Pair]:
    return [Pair(Item(text=f"question number {i}"), Item(text=f"answer {i} " * (1 + i % 3)), 1, 1, 0) for i in range(n)]


def test_max_steps_runs_past_an_epoch_and_resume_continues_it(tiny_dir, tmp_path):
    pairs = _pairs(10)  # batch 4: 2 steps per epoch, 2 pairs left over each epoch
    cfg = TrainConfig(batch_size=4, lr=1e-3, max_steps=5, save_every=3)
    trainer = Trainer(Encoder.load(tiny_dir, device="cpu"), pairs, cfg, tmp_path / "run")
    assert trainer.total == 5 and trainer.leftover == 2
    assert "2 pairs left over each epoch (batch 4) are not used in that epoch" in trainer.schedule()
    assert "5 steps (2.5 epochs)" in trainer.schedule()
    # each epoch a new seeded permutation: epochs differ, the same step gives the same batch
    epochs = [[p.query.text for s in (2 * e, 2 * e + 1) for p in trainer.batch_at(s)] for e in range(3)]
    assert all(len(set(e)) == 8 for e in epochs) and epochs[0] != epochs[1] != epochs[2]
    assert [p.query.text for p in trainer.batch_at(3)] == epochs[1][4:]
    log = trainer.train()
    assert [e["step"] for e in log] == [1, 2, 3, 4, 5] and [e["epoch"] for e in log] == [1, 1, 2, 2, 3]
    assert trainer.step == 5
    # resume inside the second epoch: the same losses as the run that went on
    again = Trainer(Encoder.load(tiny_dir, device="cpu"), pairs, cfg, tmp_path / "resumed")
    again.resume(tmp_path / "run" / "checkpoint-3")
    resumed = again.train()
    np.testing.assert_allclose([e["loss"] for e in resumed[3:]], [e["loss"] for e in log[3:]], rtol=1e-4)
    # a batch that divides the pairs leaves nothing over, and says nothing about it
    whole = Trainer(Encoder.load(tiny_dir, device="cpu"), _pairs(8), TrainConfig(batch_size=4), tmp_path / "w")
    assert whole.leftover == 0 and "left over" not in whole.schedule()


def test_the_command_line_trains_max_steps_and_reports_the_pairs_left_over(tiny_dir, tmp_path):
    data = _text_pairs(tmp_path, 11)  # batch 4: 2 steps an epoch, 3 pairs left over
    out = _finetune(tiny_dir, data, tmp_path / "run", "--batch-size", "4", "--max-steps", "4", "--lora-dropout", "0.1",
                    "--max-grad-norm", "0")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "trained 4 steps" in out.stdout
    recorded = json.loads((tmp_path / "run" / "adapter" / "unite_train.json").read_text())["config"]
    assert (recorded["lora_dropout"], recorded["max_grad_norm"]) == (0.1, None)  # 0: no clipping
    assert "3 pairs left over each epoch (batch 4) are not used in that epoch" in out.stdout
    assert "3 pairs left over each epoch" in out.stderr  # said before training too
    assert [e["step"] for e in _steps(tmp_path / "run")] == [1, 2, 3, 4]
    help_text = CliRunner().invoke(main, ["finetune", "--help"]).output
    assert "--max-steps N" in help_text and "Train exactly N steps" in help_text


def test_fewer_pairs_than_a_batch_is_one_line_told_before_the_model_loads(tiny_dir, tmp_path, monkeypatch):
    with monkeypatch.context() as patched:  # the 2B weights take minutes to load: the refusal comes first
        loads = []
        patched.setattr(Encoder, "load", lambda *args, **kwargs: loads.append(args) or 1 / 0)
        out = _finetune(tiny_dir, _text_pairs(tmp_path, 3), tmp_path / "run", "--batch-size", "8")
    assert out.exit_code == 2, out.output
    assert "3 pairs are fewer than one batch of 8" in out.output and "Traceback" not in out.output
    assert loads == []
    # in Python, a Trainer refused leaves the encoder as it was: no LoRA layers put into its model
    encoder = Encoder.load(tiny_dir, device="cpu")
    with pytest.raises(ValueError, match="3 pairs are fewer than one batch of 8"):
        Trainer(encoder, _pairs(3), TrainConfig(batch_size=8), tmp_path / "py")
    assert not any("lora_" in name for name, _ in encoder._model.named_parameters())


# ------------------------------------------------------------------ 10: pairs command


def _strip_lines(pairs: list[Pair]) -> list[Pair]:
    return [Pair(p.query, p.candidate, p.target, p.candidate_code, 0) for p in pairs]


def _captioned(root: Path, media) -> Path:
    (root / "sub").mkdir(parents=True)
    shutil.copy(media["image"], root / "sub" / "a.png")
    (root / "sub" / "a.txt").write_text("a gradient\n")
    shutil.copy(media["video2"], root / "clip.mp4")
    (root / "clip.txt").write_text("bars counting up")
    shutil.copy(media["image2"], root / "b.jpg")
    (root / "b.txt").write_text('the gradient, mirrored: "quoted" and ünïcode')
    return root


def test_pairs_command_round_trips_a_folder_and_finetune_reads_it(tiny_dir, media, tmp_path):
    folder = _captioned(tmp_path / "shop", media)
    built = pairs_from_folder(folder)
    assert len(built) == 3
    out = CliRunner().invoke(main, ["pairs", str(folder), "-o", str(folder / "pairs.jsonl")])
    assert out.exit_code == 0, out.output
    assert f"wrote 3 pairs to {folder / 'pairs.jsonl'} (from the folder" in out.stdout
    assert "lies inside the media folder" in out.stderr  # an ingest of the folder would fail on it, line by line
    lines = [json.loads(x) for x in (folder / "pairs.jsonl").read_text().splitlines()]
    assert {"query": {"text": "a gradient"}, "candidate": {"image": "sub/a.png"}, "target_modal": "image"} in lines
    read, problems = load_pairs(folder / "pairs.jsonl")
    assert problems == [] and _strip_lines(read) == built

    # written outside the folder: absolute paths, said so, and read back with --allow-outside
    elsewhere = tmp_path / "elsewhere" / "pairs.jsonl"
    out = CliRunner().invoke(main, ["pairs", str(folder), "-o", str(elsewhere)])
    assert out.exit_code == 0, out.output
    assert "3 media path(s) lie outside" in out.stderr and "--allow-outside" in out.stderr
    assert "lies inside" not in out.stderr
    assert all(Path(json.loads(x)["candidate"].popitem()[1]).is_absolute() for x in elsewhere.read_text().splitlines())
    read, problems = load_pairs(elsewhere, allow_outside=True)
    assert problems == [] and _strip_lines(read) == built

    # finetune takes the file as it is
    run = _finetune(tiny_dir, folder / "pairs.jsonl", tmp_path / "run", "--batch-size", "2", "--max-steps", "1")
    assert run.exit_code == 0, run.output
    assert "trained 1 steps" in run.stdout and "1 pair left over each epoch (batch 2)" in run.stdout

    empty = tmp_path / "empty"
    empty.mkdir()
    none = CliRunner().invoke(main, ["pairs", str(empty), "-o", str(tmp_path / "none.jsonl")])
    assert none.exit_code == 1 and "no captioned image or video found" in none.output
    assert "Traceback" not in none.output and not (tmp_path / "none.jsonl").exists()


def test_pairs_command_round_trips_an_index(encoder, media, tmp_path):
    from unite_search.ingestion import ingest

    folder = _captioned(tmp_path / "corpus", media)
    ingest(folder, tmp_path / "index", encoder=encoder)
    built = pairs_from_index(tmp_path / "index")
    assert sorted(p.query.text for p in built) == sorted(p.query.text for p in pairs_from_folder(folder))
    out = CliRunner().invoke(main, ["pairs", str(tmp_path / "index"), "-o", str(folder / "pairs.jsonl")])
    assert out.exit_code == 0, out.output
    assert "wrote 3 pairs" in out.stdout and "(from the index" in out.stdout
    assert "lies inside the media folder" in out.stderr  # the index's corpus folder
    read, problems = load_pairs(folder / "pairs.jsonl")
    assert problems == [] and _strip_lines(read) == built


def test_copies_captioned_otherwise_give_the_folder_pairs_from_a_composed_index(encoder, media, tmp_path):
    """Identical files share one row, which holds one caption; a composed index keeps a row per caption, naming
    the copies that carry it, so its pairs are the folder's. Without one, the copies give one pair, with a word."""
    from unite_search.ingestion import ingest

    folder = _captioned(tmp_path / "corpus", media)  # sub/a.png, clip.mp4 and b.jpg, each captioned
    shutil.copy(folder / "sub" / "a.png", folder / "sub" / "a2.png")  # a copy captioned otherwise
    (folder / "sub" / "a2.txt").write_text("a gradient, once more")
    shutil.copy(folder / "sub" / "a.png", folder / "sub" / "a3.png")  # a copy without a caption
    shutil.copy(folder / "b.jpg", folder / "b2.jpg")
    (folder / "b2.txt").write_text("the gradient, mirrored again")
    (folder / "items.jsonl").write_text('{"id": "m1", "image": "b.jpg", "text": "a text of its own, no caption"}\n')

    def seen(pairs):
        return sorted((p.query.text, os.path.relpath(p.candidate.image or p.candidate.video, folder)) for p in pairs)

    from_folder = seen(pairs_from_folder(folder))
    assert len(from_folder) == 5 and ("a gradient, once more", "sub/a2.png") in from_folder
    ingest(folder, tmp_path / "composed", encoder=encoder, pairs="composed")
    assert seen(pairs_from_index(tmp_path / "composed")) == from_folder
    ingest(folder, tmp_path / "plain", encoder=encoder)
    with pytest.warns(UserWarning, match=r"2 captioned file\(s\) of the index have identical copies .* composed"):
        plain = seen(pairs_from_index(tmp_path / "plain"))
    assert len(plain) == 3 and set(plain) < set(from_folder)


# ----------------------------------------------------------- 11: bad media on the command line


def test_finetune_lists_every_bad_line_and_skip_trains_on_the_rest(tiny_dir, media, tmp_path):
    from conftest import write_empty_video

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        shutil.copy(media["image"], data / f"good{i}.png")
    write_empty_video(data / "zero.mp4")
    (data / "notes.jpg").write_text("not an image")
    lines = [{"query": {"text": f"picture {i}"}, "candidate": {"image": f"good{i}.png"}} for i in range(3)]
    lines.insert(1, {"query": {"text": "bars"}, "candidate": {"video": "zero.mp4"}})
    lines.append({"query": {"text": "notes"}, "candidate": {"image": "notes.jpg"}})
    lines.append({"query": {"text": "secrets"}, "candidate": {"image": "/etc/passwd"}})
    path = data / "pairs.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))

    stop = _finetune(tiny_dir, path, tmp_path / "stopped", "--batch-size", "2", "--max-steps", "1")
    assert stop.exit_code == 1 and "Traceback" not in stop.output
    assert [x.split(": ", 1)[0] for x in stop.stderr.splitlines()[:3]] == [f"{path}:{n}" for n in (2, 5, 6)]
    assert stop.stderr.splitlines()[-1] == (f"Error: 3 bad line(s) in {path}, listed above; nothing was trained "
                                            "(fix them, or pass --on-error skip to train on the rest)")  # fmt: skip
    assert not (tmp_path / "stopped").exists()

    skip = _finetune(tiny_dir, path, tmp_path / "run", "--batch-size", "2", "--max-steps", "2", "--on-error", "skip")
    assert skip.exit_code == 0, skip.output
    assert [x.split(": ", 1)[0] for x in skip.stderr.splitlines() if x.startswith("skipped ")] == [
        f"skipped {path}:{n}" for n in (2, 5, 6)]  # fmt: skip
    assert f"{path}: skipped 3 bad line(s), using 3 pairs" in skip.stderr
    assert "trained 2 steps" in skip.stdout and "3 pairs, batch 2" in skip.stdout
