import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from unite_search.cli import main


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def test_embed_prints_dim_and_vector(runner, tiny_dir, encoder):
    result = runner.invoke(main, ["embed", "--text", "a dog", "--model", str(tiny_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    header, values = result.stdout.strip().splitlines()[-2:]
    assert "dim 64" in header
    vec = np.array([float(x) for x in values.split()])
    assert vec.shape == (64,) and np.abs(vec - encoder.encode(["a dog"])[0]).max() < 1e-5


def test_embed_json_and_npy(runner, tiny_dir, media, encoder, tmp_path):
    out = tmp_path / "v.npy"
    args = [
        "embed",
        "--image",
        str(media["image"]),
        "--text",
        "what is this?",
        "--model",
        str(tiny_dir),
        "--json",
        "--out",
        str(out),
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    expected = encoder.encode([{"image": media["image"], "text": "what is this?"}])[0]
    assert payload["dim"] == 64 and np.abs(np.array(payload["vector"]) - expected).max() < 1e-5
    assert np.abs(np.load(out) - expected).max() < 1e-6


def test_embed_out_names_the_file_it_wrote_and_an_unwritable_one_in_a_line(runner, tiny_dir, tmp_path):
    base = ["embed", "--text", "a dog", "--model", str(tiny_dir), "--device", "cpu", "--out"]
    ok = runner.invoke(main, [*base, str(tmp_path / "vec"), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout.strip().splitlines()[-1])["out"] == str(tmp_path / "vec.npy")
    assert np.load(tmp_path / "vec.npy").shape == (64,)
    bad = runner.invoke(main, [*base, str(tmp_path / "no" / "such" / "v.npy")])
    assert bad.exit_code == 1 and bad.exception.__class__ is SystemExit
    assert "No such file or directory" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize("size", ["nan", "inf", "1e400", "0.5", "0", "-3G", "lots"])
def test_a_size_that_is_not_one_is_a_usage_error(runner, tmp_path, size):
    (tmp_path / "corpus").mkdir()
    out = runner.invoke(main, ["ingest", str(tmp_path / "corpus"), "--index-memory", size])
    assert out.exit_code == 2 and "is not a size such as 8G" in out.output and "Traceback" not in out.output


def test_compare_like_the_demo(runner, tiny_dir, media, encoder):
    result = runner.invoke(main, ["compare", "a dog in the snow", str(media["image"]), "--model", str(tiny_dir)])
    assert result.exit_code == 0, result.output
    a, b = encoder.encode([{"text": "a dog in the snow"}, {"image": media["image"]}])
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(float(a @ b), abs=1e-4)
    fused = runner.invoke(
        main,
        [
            "compare",
            str(media["image"]),
            str(media["image2"]),
            "--a-text",
            "Where?",
            "--b-text",
            "A beach.",
            "--model",
            str(tiny_dir),
            "--json",
        ],
    )
    assert fused.exit_code == 0, fused.output
    c, d = encoder.encode([{"image": media["image"], "text": "Where?"}, {"image": media["image2"], "text": "A beach."}])
    assert json.loads(fused.stdout.strip().splitlines()[-1])["cosine"] == pytest.approx(float(c @ d), abs=1e-4)


def test_cli_errors_are_clean(runner, tiny_dir, tmp_path):
    # a missing file is bad input (1) for every command; compare and query said it as bad usage (2)
    missing = runner.invoke(main, ["compare", "x", str(tmp_path / "nope.jpg"), "--model", str(tiny_dir)])
    assert missing.exit_code == 1 and "nope.jpg: no such file" in missing.output
    embed = runner.invoke(main, ["embed", "--image", str(tmp_path / "nope.jpg"), "--model", str(tiny_dir)])
    assert embed.exit_code == 1 and "not found" in embed.output
    query = runner.invoke(main, ["query", str(tmp_path), "--video", str(tmp_path / "nope.mp4")])
    assert query.exit_code == 1 and "--video" in query.output and "no such file" in query.output
    (tmp_path / "bad.png").write_bytes(b"garbage")
    bad = runner.invoke(main, ["embed", "--image", str(tmp_path / "bad.png"), "--model", str(tiny_dir)])
    assert bad.exit_code == 1 and "bad.png" in bad.output and "Traceback" not in bad.output
    nothing = runner.invoke(main, ["embed", "--model", str(tiny_dir)])
    assert nothing.exit_code == 2 and "at least one" in nothing.output
    unknown = runner.invoke(main, ["embed", "--text", "x", "--model", "no-such-model"])
    assert unknown.exit_code == 1 and "unknown model" in unknown.output


def test_a_file_of_the_other_kind_is_called_what_it_is_not_damaged(runner, tiny_dir, media, encoder, tmp_path):
    """A photo given as a video (or a clip as an image, a text as either) is intact: the reason says what it
    holds, as ingest and the server say it, whichever decoder read it; the decoder's words stay in ``detail``."""
    from unite_search import InputError
    from unite_search.settings import EncoderSettings
    from unite_search.video import read_frames

    shutil.copy(media["image2"], tmp_path / "photo.mp4")  # a JPEG, named as a video too
    (tmp_path / "note.jpg").write_text("a note, not a photo\n")
    cases = [("--video", media["image2"], "not a video: its content is an image"),
             ("--video", tmp_path / "photo.mp4", "not a video: its content is an image"),
             ("--image", media["video2"], "not an image: its content is a video"),
             ("--image", tmp_path / "note.jpg", "not an image: its content is text"),
             ("--video", tmp_path / "note.jpg", "not a video: its content is text")]  # fmt: skip
    for option, path, said in cases:
        out = runner.invoke(main, ["embed", option, str(path), "--model", str(tiny_dir), "--device", "cpu"])
        assert out.exit_code == 1 and out.output.strip() == f"Error: item 0 {path}: {said}", out.output
        with pytest.raises(InputError) as raised:
            encoder.encode([{option[2:]: path}])
        assert raised.value.reason == said and raised.value.detail
    decord = importlib.util.find_spec("decord") is not None
    for backend in ("av", "decord") if decord else ("av",):  # PyAV finds no frame in a JPEG, decord no length
        with pytest.raises(InputError, match="not a video: its content is an image"):
            read_frames(media["image2"], EncoderSettings(), backend)


def _corpus(root, bad=False):
    from corpora import write_photo

    root.mkdir()
    write_photo(root / "a.png", seed=1)
    (root / "note.md").write_text("a short note")
    if bad:
        (root / "broken.jpg").write_text("not an image")
    return root


def test_ingest_then_info(runner, tiny_dir, tmp_path):
    root = _corpus(tmp_path / "corpus")
    index = tmp_path / "index"
    args = ["ingest", str(root), "--index", str(index), "--model", str(tiny_dir), "--device", "cpu", "-q"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2 rows in 2 shard(s) image 1, text 1" in result.stdout
    assert "encoded 2" in result.stdout
    info = runner.invoke(main, ["info", str(index)])
    assert info.exit_code == 0, info.output
    assert "shard   image" in info.stdout and "1 rows  exact" in info.stdout
    assert "last run ok: encoded 2, removed 0, failed 0" in info.stdout
    payload = json.loads(runner.invoke(main, ["info", str(index), "--json"]).stdout)
    assert payload["shards"]["text"]["rows"] == 1 and payload["dim"] == 64
    assert payload["last_run"]["status"] == "ok" and payload["disk_bytes"] > 0
    again = runner.invoke(main, [*args, "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["encoded_items"] == 0


def test_a_rerun_without_options_takes_the_index_own_model_and_settings(runner, tiny_dir, tmp_path, monkeypatch):
    """A rerun tried the default model (a 4.4 GB download, then refused) and the default settings."""
    from corpora import write_clip

    root = _corpus(tmp_path / "corpus")
    write_clip(root / "clip.mp4", 40, fps=8)  # 5 s: two segments of 3 s
    (root / "long.txt").write_text("word " * 100)
    index = tmp_path / "index"
    built = ["ingest", str(root), "--index", str(index), "--model", str(tiny_dir), "--device", "cpu", "-q",
             "--segment-seconds", "3", "--segment-overlap", "1", "--passage-chars", "200", "--fps", "2",
             "--max-frames", "16", "--pairs", "composed", "--flat-max", "2", "--allow-outside"]  # fmt: skip
    assert runner.invoke(main, built).exit_code == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no other model fetched either
    (root / "new.txt").write_text("a note added later")
    again = runner.invoke(main, ["ingest", str(root), "--index", str(index), "--device", "cpu", "-q", "--json"])
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert report["encoded_items"] == 1 and report["status"] == "ok"
    manifest = json.loads((index / "manifest.json").read_text())  # the index kinds' options kept too
    assert manifest["indexing"] == {"flat_max": 2, "index_memory": None, "allow_outside": True}
    assert manifest["shards"]["text"]["index"]["type"] == "ivf"
    inside = runner.invoke(main, ["ingest", str(root), "--index", str(index), "--device", "cpu", "-q", "--inside-only"])
    assert (
        inside.exit_code == 0
        and json.loads((index / "manifest.json").read_text())["indexing"]["allow_outside"] is False
    )
    other = runner.invoke(main, ["ingest", str(root), "--index", str(index), "--device", "cpu", "-q", "--fps", "1"])
    assert other.exit_code == 1 and "fps" in other.output  # what is given still has to match
    same = runner.invoke(main, ["ingest", str(root), "--index", str(index), "--device", "cpu", "-q", "--fps", "2"])
    assert same.exit_code == 0, same.output  # one option given: the others stay the index's (max_frames 16)
    seconds = runner.invoke(main, ["ingest", str(root), "--index", str(index), "--device", "cpu", "-q",
                                   "--segment-seconds", "3"])  # fmt: skip
    assert seconds.exit_code == 0, seconds.output  # the index's own length: its own overlap (1), not a sixth of it


def test_ingest_exit_status_tells_skipped_from_failed(runner, tiny_dir, tmp_path):
    root = _corpus(tmp_path / "corpus", bad=True)
    base = ["ingest", str(root), "--model", str(tiny_dir), "--device", "cpu", "-q"]
    skipped = runner.invoke(main, [*base, "--index", str(tmp_path / "i1"), "--json"])
    assert skipped.exit_code == 3, skipped.output
    report = json.loads(skipped.stdout)
    assert report["status"] == "finished_with_failures" and report["failures"][0]["path"] == "broken.jpg"
    info = runner.invoke(main, ["info", str(tmp_path / "i1")])
    assert "broken.jpg [read] content is text but the extension says image" in info.stdout
    assert "last run finished with failures: encoded 2, removed 0, failed 1" in info.stdout
    refused = runner.invoke(main, [*base, "--index", str(tmp_path / "i1"), "--fps", "3"])  # another setting
    assert refused.exit_code == 1
    info = runner.invoke(main, ["info", str(tmp_path / "i1")]).stdout  # the refusal hides no failure
    assert "last run failed:" in info and "fps" in info
    assert "last finished run finished with failures: encoded 2, removed 0, failed 1" in info
    assert "broken.jpg [read] content is text but the extension says image" in info
    payload = json.loads(runner.invoke(main, ["info", str(tmp_path / "i1"), "--json"]).stdout)
    assert payload["last_run"]["status"] == "failed"
    assert payload["last_finished_run"]["failures"][0]["path"] == "broken.jpg"
    failed = runner.invoke(main, [*base, "--index", str(tmp_path / "i2"), "--on-error", "raise"])
    assert failed.exit_code == 1 and "broken.jpg" in failed.output and "nothing was published" in failed.output
    usage = runner.invoke(main, [*base, "--pairs", "everything"])
    assert usage.exit_code == 2
    overlap = runner.invoke(main, [*base, "--index", str(tmp_path / "i3"), "--segment-seconds", "5",
                                   "--segment-overlap", "5"])  # fmt: skip
    assert overlap.exit_code == 2 and "overlap" in overlap.output


def test_ingest_refusals_are_one_line_errors(runner, tiny_dir, tmp_path):
    from unite_search.store import IndexStore

    root = _corpus(tmp_path / "corpus")
    index = tmp_path / "index"
    base = ["ingest", str(root), "--index", str(index), "--model", str(tiny_dir), "--device", "cpu", "-q"]
    assert runner.invoke(main, base).exit_code == 0
    with IndexStore(index).lock():
        locked = runner.invoke(main, base)
    assert locked.exit_code == 1 and "being written by another ingest" in locked.output
    mismatch = runner.invoke(main, [*base, "--frames", "8"])
    assert mismatch.exit_code == 1 and "encoder.frames" in mismatch.output and "rm -r" in mismatch.output
    not_index = runner.invoke(main, ["info", str(root)])
    assert not_index.exit_code == 1 and "holds no unite-search index" in not_index.output


def test_readme_example_corpus_ingests_cleanly(runner, tiny_dir, tmp_path):
    """The corpus the README's first command indexes: every kind, a caption, a composed item."""
    from pathlib import Path

    corpus = Path(__file__).resolve().parents[1] / "examples" / "corpus"
    index = tmp_path / "index"
    result = runner.invoke(
        main,
        ["ingest", str(corpus), "--index", str(index), "--model", str(tiny_dir), "--device", "cpu", "-q", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["shards"] == {"image": 3, "video": 1, "text": 2, "image+text": 1}
    assert report["failures"] == [] and report["skipped"] == []


def test_query_table_json_and_explain(runner, tiny_dir, tmp_path):
    from pathlib import Path

    corpus = Path(__file__).resolve().parents[1] / "examples" / "corpus"
    index = tmp_path / "index"
    base = ["--model", str(tiny_dir), "--device", "cpu"]
    assert runner.invoke(main, ["ingest", str(corpus), "--index", str(index), "-q", *base]).exit_code == 0
    day = str(corpus / "photos/beach_day.png")
    result = runner.invoke(main, ["query", str(index), "--image", day, "-k", "2", "--explain", *base])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "route     image (default)" in result.stdout
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("rank"))
    first = lines[header + 1].split()
    assert first[:4] == ["1", "1.000", "image", "photos/beach_day.png"]
    assert "A sunny beach under a blue sky." in lines[header + 1]  # the sidecar caption
    clip = runner.invoke(
        main, ["query", str(index), "--text", "bars", "--target", "video", *base, "--dtype", "float32"]
    )
    assert "0:00.0-0:03.0" in clip.stdout  # a 3 s clip shows its time range
    payload = json.loads(
        runner.invoke(main, ["query", str(index), "--image", day, "--text", "at night", "--json", *base]).stdout
    )
    assert payload["shards"] == ["image"] and "photos/beach_day.png" not in [h["path"] for h in payload["hits"]]
    like = runner.invoke(main, ["query", str(index), "--like", payload["hits"][0]["id"], "--json"])
    assert like.exit_code == 0 and json.loads(like.stdout)["shards"] == ["image"]
    bad = runner.invoke(main, ["query", str(index), "--text", "x", "--target", "audio", *base])
    assert bad.exit_code == 1 and "unknown target 'audio'" in bad.output
    assert runner.invoke(main, ["query", str(index), *base]).exit_code == 2


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    """The real command line in a process of its own (decoders write to file descriptor 2 from C)."""
    cmd = [sys.executable, "-m", "unite_search.cli", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


DECODER_NOISE = ("moov atom", "ERROR opening", "Invalid data", "[mov,", "[h264", "video_reader.cc")


def test_decoders_print_nothing_and_their_messages_go_to_the_run_log(tiny_dir, tmp_path, capfd):
    from corpora import write_audio_only, write_damaged_mp4, write_photo, write_truncated_mp4

    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    write_truncated_mp4(root / "truncated.mp4")
    write_damaged_mp4(root / "junk.mp4")  # an MP4 header, then random bytes
    (root / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    write_audio_only(root / "audio_only.mp4")
    index = tmp_path / "index"
    proc = _cli("ingest", str(root), "--index", str(index), "--model", str(tiny_dir), "--device", "cpu")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, out + err
    for noise in DECODER_NOISE:
        assert noise not in out + err, noise
    assert "truncated.mp4 [read] truncated file" in out and "audio_only.mp4 [read] file has no video stream" in out
    assert "encode: 100%" in err  # our own output on stderr is untouched
    from unite_search.store import IndexStore

    detail = {p["path"]: p.get("detail", "") for p in IndexStore(index).last_run()["failures"]}
    assert "moov atom not found" in detail["truncated.mp4"] and "Invalid data" in detail["junk.mp4"]
    # a rerun reads the failing files again: still nothing from the decoders, at the file-descriptor level
    capfd.readouterr()
    rerun = CliRunner().invoke(main, ["ingest", str(root), "--index", str(index), "--model", str(tiny_dir)])
    assert rerun.exit_code == 3, rerun.output
    fd_out, fd_err = capfd.readouterr()
    for noise in DECODER_NOISE:
        assert noise not in rerun.output + fd_out + fd_err, noise


def test_ctrl_c_says_nothing_finished_is_lost_and_the_same_command_continues(tiny_dir, encoder, tmp_path):
    """Rows encoded and not yet committed (a commit holds up to 1,024 rows) are written as the run stops."""
    import os
    import threading

    from corpora import write_photo

    from unite_search.ingestion import ingest
    from unite_search.store import IndexStore

    root = tmp_path / "corpus"
    for i in range(24):
        write_photo(root / f"{i:02d}.png", seed=i)
    index = tmp_path / "index"
    # --memory-mb 1: every item is encoded on its own, so an interrupt finds some encoded
    args = ["ingest", str(root), "--index", str(index), "--model", str(tiny_dir), "--device", "cpu", "--memory-mb", "1"]
    # as from a terminal: Ctrl-C's default disposition, whatever the test runner's worker left for its children
    proc = _cli(*args, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    said: list[bytes] = []
    listener = threading.Thread(target=lambda: said.extend(iter(lambda: os.read(proc.stderr.fileno(), 4096), b"")))
    listener.start()
    deadline = time.time() + 120
    # the bar counts items encoded: stopped after a few, the rest of the run is still ahead (under load too)
    while not re.search(rb"encode:[^\r\n]*\| *([2-9]|\d\d)/24", b"".join(said)) and time.time() < deadline:
        assert proc.poll() is None, b"".join(said)
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    shown = int(re.findall(rb"encode:[^\r\n]*?\| *(\d+)/24", b"".join(said))[-1])  # items the bar said were done
    proc.wait(timeout=120)
    listener.join()
    out, err = proc.stdout.read(), b"".join(said).decode()
    assert proc.returncode == 130, out + err
    assert "interrupted: every item encoded so far is kept" in err and "Run the same command again" in err
    assert "Aborted!" not in err and "Traceback" not in err and out == ""
    assert IndexStore(index).last_run()["status"] == "interrupted"
    report = ingest(root, index, encoder=encoder)  # the same run again (the CLI's settings are the defaults)
    assert report.status == "ok" and report.items == 24
    assert report.unchanged_items >= shown >= 2 and report.encoded_items == 24 - report.unchanged_items


def test_device_mistakes_are_one_line_usage_errors(runner, tiny_dir, tmp_path):
    import torch

    root = _corpus(tmp_path / "corpus")
    devices = ["gpu", "cuda:x"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in devices:
        for args in (["embed", "--text", "x"], ["ingest", str(root), "--index", str(tmp_path / "i")]):
            result = runner.invoke(main, [*args, "--model", str(tiny_dir), "--device", device])
            assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("Error: ") and f"'{device}'" in lines[0], result.output
    assert not (tmp_path / "i").exists()


def test_ingest_given_a_file_says_it_takes_a_folder(runner, tiny_dir, tmp_path):
    root = _corpus(tmp_path / "corpus")
    result = runner.invoke(main, ["ingest", str(root / "a.png"), "--model", str(tiny_dir)])
    assert result.exit_code == 2, result.output
    assert "Directory" not in result.output and len(result.output.strip().splitlines()) == 1
    assert "a.png is a file; ingest takes a folder" in result.output
    assert "folder of its own" in result.output and f"unite-search embed --image {root / 'a.png'}" in result.output
    note = runner.invoke(main, ["ingest", str(root / "note.md")])
    assert note.exit_code == 2 and "unite-search embed --text" in note.output


def test_a_crash_is_one_line_naming_the_run_log(runner, tiny_dir, tmp_path, monkeypatch):
    """A bug injected into a real decode worker: one line on the console, the traceback in the run log."""
    import unite_search.pipeline as pipeline

    root = _corpus(tmp_path / "corpus")

    def bug(enc, task):
        raise AttributeError("'NoneType' object has no attribute 'shape'")

    monkeypatch.setattr(pipeline, "prepare_task", bug)
    args = ["ingest", str(root), "--index", str(tmp_path / "index"), "--model", str(tiny_dir), "-q"]
    result = runner.invoke(main, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "internal error (AttributeError" in lines[0], result.output
    log = re.search(r"traceback is in (\S+\.json)", lines[0]).group(1)
    assert "in bug" in json.loads(Path(log).read_text())["traceback"]
