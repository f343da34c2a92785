"""Ingest runs with the tiny model: a kill and its resume, reruns and updates, locks, refusals,
crashes kept in the run log, the model made only when a row needs encoding, thread counts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from corpora import write_clip, write_photo
from test_ingest import OPTS, assert_same_rows, rows_by_id

from unite_search.errors import ConfigError, InputError
from unite_search.ingestion import ingest
from unite_search.store import IndexLockedError, IndexMismatchError, IndexStore

KILL_SCRIPT = """
import sys
from unite_search import Encoder
from unite_search.ingestion import ingest
enc = Encoder.load(sys.argv[1], device="cpu", workers=1)
ingest(sys.argv[2], sys.argv[3], encoder=enc, commit_rows=1, segment_seconds=4.0, segment_overlap=1.0,
       passage_chars=200)
"""


def _committed_versions(index: Path) -> int:
    return sum(
        len(list(t.glob("_versions/*.manifest"))) for t in (index / "tables").glob("*.lance") if t.name != "files.lance"
    )


def test_sigkill_mid_ingest_then_resume(tmp_path, tiny_dir, encoder):
    root = tmp_path / "corpus"
    root.mkdir()
    write_photo(root / "first.png", seed=1)
    (root / "first.txt").write_text("the first text")
    index = tmp_path / "index"
    ingest(root, index, encoder=encoder, **OPTS)
    published = rows_by_id(index)
    # a bigger second batch, killed while it is being written
    for i in range(6):
        write_photo(root / f"img/{i}.png", seed=20 + i)
        (root / f"txt/{i}.txt").parent.mkdir(exist_ok=True)
        (root / f"txt/{i}.txt").write_text(f"text number {i} " * (5 + i))
    write_clip(root / "long.mp4", 96, fps=8, seed=3)  # 12 s: 4 segments
    start = _committed_versions(index)
    env = {**os.environ, "LANCEDB_LOG": "error"}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tiny_dir), str(root), str(index)], env=env)
    deadline = time.time() + 120
    while _committed_versions(index) < start + 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "ingest finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = _committed_versions(index) - start
    assert written >= 4
    # readers still see the last published state
    assert_same_rows(published, rows_by_id(index))
    # rerun finishes the job: same rows and vectors as a clean run, each exactly once
    report = ingest(root, index, encoder=encoder, **OPTS)
    assert report.status == "ok", report.summary()
    assert 0 < report.encoded_items < report.items
    clean = tmp_path / "clean"
    ingest(root, clean, encoder=encoder, **OPTS)
    assert_same_rows(rows_by_id(clean), rows_by_id(index))
    again = ingest(root, index, encoder=encoder, **OPTS)
    assert again.encoded_items == 0 and not again.published


def test_unit_cut_short_is_redone(tmp_path, encoder):
    """A segmented video whose rows were only partly written (a crash between commits) is redone whole."""
    root = tmp_path / "corpus"
    root.mkdir()
    write_clip(root / "long.mp4", 96, fps=8, seed=3)
    index = tmp_path / "index"
    ingest(root, index, encoder=encoder, **OPTS)
    full = rows_by_id(index)
    store = IndexStore(index)
    victim = next(r["id"] for r in full.values() if r["start"] == 3.0)
    store.tables.open("video").delete(f"id = '{victim}'")
    (index / "ingest.writing").touch()  # as the killed run left it: its table writes are not published
    report = ingest(root, index, encoder=encoder, **OPTS)
    assert report.redone_items == 1 and report.encoded_rows == 4
    assert_same_rows(full, rows_by_id(index))


# -------------------------------------------------------------------------------------- safety
def test_second_ingest_is_refused_while_one_holds_the_lock(tmp_path, encoder):
    root = tmp_path / "corpus"
    root.mkdir()
    write_photo(root / "a.png", seed=1)
    store = IndexStore(tmp_path / "index")
    with store.lock(), pytest.raises(IndexLockedError, match="being written by another ingest \\(pid"):
        ingest(root, tmp_path / "index", encoder=encoder)
    assert ingest(root, tmp_path / "index", encoder=encoder).status == "ok"  # released afterwards


def test_lock_held_by_another_process(tmp_path, encoder):
    root = tmp_path / "corpus"
    root.mkdir()
    write_photo(root / "a.png", seed=1)
    index = tmp_path / "index"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom unite_search.store import IndexStore\n"
         "with IndexStore(sys.argv[1]).lock():\n    print('held', flush=True)\n    time.sleep(60)\n", str(index)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(IndexLockedError, match=f"pid {holder.pid}"):
            ingest(root, index, encoder=encoder)
    finally:
        holder.kill()
        holder.wait()
    assert ingest(root, index, encoder=encoder).status == "ok"  # the kernel dropped the dead holder's lock


def test_mismatched_model_settings_or_corpus_are_refused(tmp_path, tiny_dir, encoder):
    from unite_search import Encoder, EncoderSettings
    from unite_search.testing import tiny_model

    root = tmp_path / "corpus"
    root.mkdir()
    write_photo(root / "a.png", seed=1)
    index = tmp_path / "index"
    ingest(root, index, encoder=encoder)
    published = IndexStore(index).require_manifest()
    other_settings = Encoder.load(tiny_dir, device="cpu", settings=EncoderSettings(frames=8))
    with pytest.raises(IndexMismatchError, match=r"encoder.frames: index has None, this run 8(.|\n)*rm -r"):
        ingest(root, index, encoder=other_settings)
    other_model = Encoder.load(tiny_model(tmp_path / "other", seed=1), device="cpu")
    with pytest.raises(IndexMismatchError, match=r"encoder\.revision"):
        ingest(root, index, encoder=other_model)
    with pytest.raises(IndexMismatchError, match=r"ingest\.segment_seconds"):
        ingest(root, index, encoder=encoder, segment_seconds=10)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(IndexMismatchError, match="indexes the corpus"):
        ingest(elsewhere, index, encoder=encoder)
    # a refused run publishes nothing; its run log says why it was refused
    assert IndexStore(index).require_manifest() == published
    last = IndexStore(index).last_run()
    assert last["status"] == "failed" and "indexes the corpus" in last["error"] and last["items"] == 0
    os.symlink(root, tmp_path / "link")  # the same corpus by another name: not another corpus
    assert ingest(tmp_path / "link", index, encoder=encoder).status == "ok"


def test_default_index_dir_and_bad_arguments(tmp_path, encoder, monkeypatch):
    root = tmp_path / "photos"
    root.mkdir()
    write_photo(root / "a.png", seed=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    report = ingest("~/photos", encoder=encoder)  # ~ is expanded, as a shell would
    assert Path(report.index) == Path("indexes/photos") and report.corpus == str(root)
    assert (tmp_path / "indexes/photos/manifest.json").exists()
    with pytest.raises(ValueError, match="on_error"):
        ingest(root, encoder=encoder, on_error="ignore")
    with pytest.raises(ValueError, match="pairs"):
        ingest(root, encoder=encoder, pairs="all")
    with pytest.raises(InputError, match="not a folder"):
        ingest(tmp_path / "missing", encoder=encoder)
    for same in (root, tmp_path / "photos/."):  # its own tables, and the server's thumbnails, would be indexed
        with pytest.raises(ConfigError, match=r"the index folder cannot be the corpus folder itself"):
            ingest(root, same, encoder=encoder)
    assert not (root / "manifest.json").exists()


def test_index_inside_the_corpus_is_not_walked(tmp_path, encoder, monkeypatch):
    root = tmp_path / "corpus"
    root.mkdir()
    write_photo(root / "a.png", seed=1)
    monkeypatch.chdir(root)
    ingest(".", encoder=encoder)  # index lands in ./indexes/corpus, inside the corpus
    report = ingest(".", encoder=encoder)
    assert report.encoded_items == 0 and report.failures == []
    assert [r["path"] for r in rows_by_id(root / "indexes/corpus").values()] == ["a.png"]


def test_segments_of_a_long_video_reuse_the_read_stage_count_without_decord(tmp_path, encoder, monkeypatch):
    """With PyAV, an mkv stores no frame count: counting once per segment would make ingest quadratic."""
    from conftest import write_index_video

    import unite_search.video as video

    root = tmp_path / "corpus"
    root.mkdir()
    write_index_video(root / "long.mkv", 200, fps=10)  # 20 s: 7 segments of 4 s
    monkeypatch.setattr(video, "_backend", lambda name: "av")  # as on a machine without decord
    decoded = []
    real = video._read_av

    def counted(*args, **kwargs):
        frames, info = real(*args, **kwargs)
        decoded.append(info.decoded)
        return frames, info

    monkeypatch.setattr(video, "_read_av", counted)
    report = ingest(root, tmp_path / "index", encoder=encoder, **OPTS)
    assert report.status == "ok" and report.encoded_rows == 7 == len(decoded)
    assert sum(decoded) < 2 * 200, decoded  # each segment decodes about its own span (counting: 7 x 200)
    monkeypatch.undo()
    clean = tmp_path / "decord-index"
    ingest(root, clean, encoder=encoder, **OPTS)
    assert_same_rows(rows_by_id(clean), rows_by_id(tmp_path / "index"))  # the same frames either way


def test_an_oversized_caption_is_a_reported_failure_and_its_media_still_indexed(tmp_path, encoder):
    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    (root / "a.txt").write_text("a very long caption. " * 4000)  # 84 KB
    report = ingest(root, tmp_path / "index", encoder=encoder)
    assert [(p.path, p.stage) for p in report.failures] == [("a.txt", "read")]
    assert "above 65536" in report.failures[0].reason
    rows = IndexStore(tmp_path / "index").read_rows("image", ["path", "caption"]).to_pylist()
    assert rows == [{"path": "a.png", "caption": None}]


# ------------------------------------------------------------------------ what the report tells
def test_video_failures_are_told_in_words_the_same_every_run(tmp_path, encoder):
    """Real broken files: the reason says what is wrong (no decoder internals, times or paths), the same on
    a rerun; the decoder's own message is in the run log only."""
    from corpora import write_audio_only, write_damaged_mp4, write_truncated_mp4

    root = tmp_path / "corpus"
    root.mkdir()
    write_photo(root / "good.png", seed=1)
    write_audio_only(root / "audio_only.mp4")
    write_truncated_mp4(root / "truncated.mp4")
    (root / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    write_damaged_mp4(root / "damaged.mp4")
    expected = {
        "audio_only.mp4": "file has no video stream (audio only)",
        "truncated.mp4": "truncated file (an incomplete copy or download)",
        "noise.mp4": "not a video: its content is no known video format",
        "damaged.mp4": "damaged or not a video (no decoder can open it)",
    }
    index = tmp_path / "index"
    first = ingest(root, index, encoder=encoder)
    time.sleep(1.1)  # a decoder message with a clock in it would differ
    again = ingest(root, index, encoder=encoder)
    for report in (first, again):
        assert {p.path: p.reason for p in report.failures} == expected
        assert report.status == "finished_with_failures" and report.exit_code == 3
    summary = again.summary()
    for internal in ("moov", "Invalid data", "Errno", str(root), ".cc:"):
        assert internal not in summary, internal
    detail = {p["path"]: p.get("detail") for p in IndexStore(index).last_run()["failures"]}
    assert "moov atom not found" in detail["truncated.mp4"]  # FFmpeg's own words, kept in the run log
    assert "Invalid data" in detail["damaged.mp4"]


def test_progress_bar_counts_the_items_the_summary_counts(tmp_path, encoder, capsys):
    from corpora import LONG_TEXT

    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    write_clip(root / "long.mp4", 80, fps=8, seed=2)  # 10 s: 3 segments
    (root / "long.md").write_text(LONG_TEXT)  # several passages
    report = ingest(root, tmp_path / "index", encoder=encoder, progress=True, **OPTS)
    err = capsys.readouterr().err
    assert report.items == report.encoded_items == 3 and report.encoded_rows > 6
    done, total = re.findall(r"encode: .*?(\d+)/(\d+) \[", err)[-1]
    assert int(done) == int(total) == report.items
    assert "item/s" in err and f"items {report.items}:" in report.summary()


def test_summary_names_skipped_files(tmp_path, encoder):
    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    for i in range(22):
        (root / f".hidden{i:02d}").write_text("x")
    os.mkfifo(root / "pipe.mp4")
    summary = ingest(root, tmp_path / "index", encoder=encoder).summary()
    assert "skipped 23 (hidden, special files, links out of the corpus):" in summary
    assert "  .hidden00 [hidden]" in summary and "  .hidden19 [hidden]" in summary
    assert ".hidden20" not in summary and "  ... and 3 more (unite-search info " in summary


def test_old_run_logs_read_with_the_new_status(tmp_path, encoder):
    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    index = tmp_path / "index"
    ingest(root, index, encoder=encoder)
    log = IndexStore(index).last_run()
    log["status"] = "skipped"  # how runs before the rename recorded "finished, some inputs failed"
    (index / "runs" / "99991231T000000000000Z.json").write_text(json.dumps(log))
    assert IndexStore(index).last_run()["status"] == "finished_with_failures"


# ------------------------------------------------------------------------ errors: whose fault
def test_an_encoder_with_conflicting_arguments_is_refused(tmp_path, tiny_dir, encoder):
    from unite_search import ConfigError, EncoderSettings

    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    index = tmp_path / "index"
    conflicts = [
        ({"model": "unite-base-2b"}, "model 'unite-base-2b'"),
        ({"dtype": "bfloat16"}, "dtype 'bfloat16'"),
        ({"device": "cpu:1"}, "device 'cpu:1'"),
        ({"settings": EncoderSettings(frames=8)}, "settings"),
    ]
    for kwargs, said in conflicts:
        with pytest.raises(ConfigError, match=re.escape(said)):
            ingest(root, index, encoder=encoder, **kwargs)
    assert not index.exists()  # refused before anything was made
    same = {"model": tiny_dir, "device": "cpu", "dtype": "float32", "settings": EncoderSettings()}
    assert ingest(root, index, encoder=encoder, **same).status == "ok"


def test_a_bug_or_memory_error_stops_the_run_with_its_traceback_in_the_run_log(tmp_path, encoder, monkeypatch):
    """Faults injected into real workers: a file's I/O error fails that file, a bug or MemoryError stops the run."""
    import unite_search.pipeline as pipeline
    import unite_search.units as units
    from unite_search import IngestCrashError

    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    write_photo(root / "b.png", seed=2)
    (root / "note.txt").write_text("a short note")
    index = tmp_path / "index"
    real_prepare, real_read = pipeline.prepare_task, units.read_file

    def out_of_memory(enc, task):  # a decode worker
        if str(task.item.get("image", "")).endswith("b.png"):
            raise MemoryError
        return real_prepare(enc, task)

    def bug(entry, **kwargs):  # a read worker
        if entry.rel == "b.png":
            return None + 1
        return real_read(entry, **kwargs)

    for target, name, fake, cause, said in [
        (pipeline, "prepare_task", out_of_memory, MemoryError, "ran out of memory"),
        (units, "read_file", bug, TypeError, "internal error"),
    ]:
        with monkeypatch.context() as m:
            m.setattr(target, name, fake)
            with pytest.raises(IngestCrashError, match=said) as info:
                ingest(root, index, encoder=encoder)
        assert isinstance(info.value.__cause__, cause) and isinstance(info.value, RuntimeError)
        assert f"traceback is in {info.value.run_log}" in str(info.value) and "\n" not in str(info.value)
        log = json.loads(Path(info.value.run_log).read_text())
        assert log["status"] == "failed" and cause.__name__ in log["error"]
        assert f"in {fake.__name__}" in log["traceback"] and cause.__name__ in log["traceback"]

    def denied(path, span, source):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(units, "read_passage", denied)
    report = ingest(root, index, encoder=encoder)
    assert [(p.path, p.stage, p.reason) for p in report.failures] == [
        ("note.txt", "decode", "cannot read file: Permission denied")
    ]
    assert report.encoded_items == 2 and report.status == "finished_with_failures"


def test_user_mistakes_are_typed_errors_that_are_still_value_errors(tmp_path, tiny_dir, encoder):
    from unite_search import ConfigError, DeviceError, Encoder, EncoderSettings, InputError

    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    mistakes = [
        (lambda: EncoderSettings(fps=0), ConfigError),
        (lambda: EncoderSettings(min_frames=8, max_frames=4), ConfigError),
        (lambda: ingest(root, encoder=encoder, on_error="ignore"), ConfigError),
        (lambda: ingest(root, encoder=encoder, pairs="all"), ConfigError),
        (lambda: ingest(root, encoder=encoder, segment_seconds=5, segment_overlap=5), ConfigError),
        (lambda: ingest(root, encoder=encoder, memory_bytes=0), ConfigError),
        # a fractional or string passage length stopped the run as "a bug in unite-search" (a TypeError while
        # slicing); one of 10**9 held a 10 MB file whole (2.9 GB) while its one passage was tokenized
        (lambda: ingest(root, encoder=encoder, passage_chars=100.5), ConfigError),
        (lambda: ingest(root, encoder=encoder, passage_chars="2000"), ConfigError),
        (lambda: ingest(root, encoder=encoder, passage_chars=10**9), ConfigError),
        (lambda: ingest(root, encoder=encoder, segment_seconds="30"), ConfigError),
        (lambda: ingest(root / "a.png", encoder=encoder), InputError),
        (lambda: Encoder.load(tiny_dir, device="gpu"), DeviceError),
        (lambda: Encoder.load(tiny_dir, device="cpu", dtype="float8"), ConfigError),
        (lambda: Encoder.load(tiny_dir, device="cpu", attn="fast"), ConfigError),
        (lambda: encoder.encode(["x"], token_budget=-1), ConfigError),
    ]
    for call, kind in mistakes:
        with pytest.raises(kind) as info:
            call()
        assert isinstance(info.value, ValueError)
    with pytest.raises(InputError, match=r"is a file, and ingest takes a folder.*folder of its own.*embed"):
        ingest(root / "a.png", encoder=encoder)
    with pytest.raises(ConfigError, match=r"passage_chars must be 16 to 32,768, not 1,000,000,000"):
        ingest(root, encoder=encoder, passage_chars=10**9)
    import numpy as np

    assert ingest(root, tmp_path / "np", encoder=encoder, passage_chars=np.int64(500)).status == "ok"  # numpy's int
    assert json.loads((tmp_path / "np" / "manifest.json").read_text())["ingest"]["passage_chars"] == 500
    # the ceiling is asked of a new run: an index built before with longer passages keeps them
    manifest = json.loads((tmp_path / "np" / "manifest.json").read_text())
    manifest["ingest"]["passage_chars"] = 40_000
    (tmp_path / "np" / "manifest.json").write_text(json.dumps(manifest))
    (root / "b.txt").write_text("a new note")
    assert ingest(root, tmp_path / "np", encoder=encoder).status == "ok"


# ------------------------------------------------------------------------------ no work, no model
def test_a_rerun_that_needs_no_encoding_never_makes_the_encoder(tmp_path, tiny_dir, monkeypatch):
    from unite_search import Encoder

    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    write_photo(root / "b.png", seed=2)
    write_clip(root / "clip.mp4", 16, fps=8, seed=1)
    (root / "note.txt").write_text("a note about the harbour")
    index = tmp_path / "index"
    first = ingest(root, index, model=tiny_dir, device="cpu")
    assert first.encoded_items == 4 and first.timings["load"] > 0
    made = []
    real_load = Encoder.load.__func__

    def counting_load(cls, *args, **kwargs):
        made.append(args)
        return real_load(cls, *args, **kwargs)

    monkeypatch.setattr(Encoder, "load", classmethod(counting_load))
    same = ingest(root, index, model=tiny_dir, device="cpu")  # nothing changed: stops after the walk
    assert (same.status, same.unchanged_items, same.encoded_items, same.published) == ("ok", 4, 0, False)
    assert "read" not in same.timings and same.shards == first.shards

    (root / "b.png").rename(root / "moved.png")  # a move and a removal: a full pass, still no encoding
    (root / "note.txt").unlink()
    moved = ingest(root, index, model=tiny_dir, device="cpu")
    assert (moved.relabeled_items, moved.removed_items, moved.encoded_items) == (1, 1, 0)
    assert moved.timings["load"] == 0 and made == []
    assert ingest(root, index, model=tiny_dir, device="cpu").timings.get("read") is None  # stamped again

    os.utime(root / "a.png", ns=(5, 5))  # same bytes, new mtime: read again, nothing to encode
    touched = ingest(root, index, model=tiny_dir, device="cpu")
    assert "read" in touched.timings and touched.encoded_items == 0 and made == []

    write_photo(root / "new.png", seed=3)  # one new file: now the encoder is made, and only now
    grown = ingest(root, index, model=tiny_dir, device="cpu")
    assert grown.encoded_items == 1 and len(made) == 1 and grown.timings["load"] > 0
    hits = [h.path for h in __import__("unite_search").Index.open(index).query(image=root / "new.png", k=1)]
    assert hits == ["new.png"]

    whole = write_photo(root / "whole.jpg", seed=4)  # a file whose header reads but whose pixels do not
    (root / "cut.jpg").write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    whole.unlink()
    for _ in range(2):  # its item is tried again on every run: the tokenizer is made, the weights never read
        failing = ingest(root, index, model=tiny_dir, device="cpu")
        assert [(p.path, p.stage) for p in failing.failures] == [("cut.jpg", "decode")]
        assert failing.timings["load"] == 0 and failing.timings["setup"] > 0
        assert not [t for t in threading.enumerate() if t.name == "unite-load"]


def test_a_no_op_rerun_imports_neither_torch_nor_lancedb(tmp_path, tiny_dir):
    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    (root / "note.txt").write_text("a note")
    index = tmp_path / "index"
    ingest(root, index, model=tiny_dir)
    code = (
        "import sys; from unite_search.ingestion import ingest; "
        f"r = ingest({str(root)!r}, {str(index)!r}, model={str(tiny_dir)!r}); "
        "print(r.status, r.unchanged_items, sorted(m for m in ('torch', 'transformers', 'lancedb', 'faiss') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "ok 2 []"
    (index / "ingest.writing").touch()  # as a run killed before it published leaves it: a full pass
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok 2 ") and "lancedb" in out.stdout and "torch" not in out.stdout
    assert not (index / "ingest.writing").exists()


def test_the_encode_stage_takes_the_thread_counts_it_is_given(tmp_path, encoder, monkeypatch):
    import torch

    from unite_search.encoder import default_workers

    root = tmp_path / "corpus"
    for i in range(3):
        write_photo(root / f"p{i}.png", seed=i)
    seen, real_forward = [], encoder.forward

    def watched(batch):
        seen.append(torch.get_num_threads())
        return real_forward(batch)

    monkeypatch.setattr(encoder, "forward", watched)
    before = torch.get_num_threads()
    report = ingest(root, tmp_path / "index", encoder=encoder)
    want_torch, want_decode = before, default_workers()  # torch as it was set, decoding min(8, cores)
    assert report.threads == {"torch": want_torch, "decode": want_decode}
    assert seen and set(seen) == {want_torch} and torch.get_num_threads() == before
    write_photo(root / "p9.png", seed=9)
    seen.clear()
    torch.set_num_threads(2)
    report = ingest(root, tmp_path / "index", encoder=encoder, torch_threads=1, workers=3)
    assert report.threads == {"torch": 1, "decode": 3} and set(seen) == {1} and torch.get_num_threads() == 2
    torch.set_num_threads(before)


@pytest.mark.parametrize("drop", [False, True])
def test_a_close_interrupted_by_ctrl_c_still_ends_the_writer_before_the_run_returns(drop):
    """Ctrl-C while ingest waited for its writer left the writer thread appending rows after ingest had
    raised (under on_error="raise", after the tables were rolled back)."""
    from unite_search.pipeline import Writer

    written = []

    class Tables:
        def add_rows(self, shard, rows, vecs):
            time.sleep(0.2)
            assert len(vecs) == len(rows)
            written.extend(rows)

    class Store:
        tables = Tables()

    writer = Writer(Store(), commit_rows=3)  # rows 0-2 make a commit; row 3 is held until the writer ends
    for i in range(4):
        writer.put({"text": ([i], np.zeros((1, 4), np.float32))})
    real_join, calls = writer.thread.join, []

    def join(timeout=None):
        if not calls:
            calls.append(1)
            raise KeyboardInterrupt  # as a Ctrl-C lands in the wait
        return real_join(timeout)

    writer.thread.join = join
    with pytest.raises(KeyboardInterrupt):
        writer.close(drop_on_interrupt=drop)
    assert not writer.thread.is_alive()
    done = len(written)
    time.sleep(0.5)
    assert len(written) == done  # nothing written once close() has raised
    assert written == [0, 1, 2, 3] if not drop else done < 4  # the raise policy drops what was not written yet


def test_rows_are_committed_by_commit_rows_not_by_encoder_window(tmp_path, tiny_dir):
    """Each encoder window (a few rows when inputs are long) was one commit, one table version listing every
    fragment so far: a 100 MB text left 3,277 versions and 650 MB of version manifests."""
    from unite_search import Encoder
    from unite_search.tables import ShardTables

    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(60):
        (root / f"t{i:02d}.txt").write_text(f"note {i}: the river bends past the old mill near the {i}th bridge.")
    small_windows = Encoder.load(tiny_dir, device="cpu", workers=1, token_budget=32)  # two texts a window
    ingest(root, tmp_path / "index", encoder=small_windows, commit_rows=25)
    versions = ShardTables(tmp_path / "index/tables").open("text").list_versions()
    counts = [int(v["metadata"]["total_rows"]) for v in sorted(versions, key=lambda v: v["version"])]
    added = [n for before, n in zip([0, *counts], counts, strict=False) if n > before]
    assert added == [26, 52, 60]  # a commit once 25 rows are held (windows of two), the rest at the end


def test_the_encode_bar_counts_the_items_a_stop_keeps(tmp_path, encoder, monkeypatch, capsys):
    """The bar counted an item once decoded, and decoded rows wait in a window for their batch: stopped at
    "encode 24/24", a run had kept none of them. It counts an item once its rows are encoded (or it failed)."""
    root, index = tmp_path / "corpus", tmp_path / "index"
    for i in range(12):
        write_photo(root / f"{i:02d}.png", seed=i)
    batches = []
    real = encoder.encode_prepared

    def one_batch_then_ctrl_c(prepared):
        if batches:
            raise KeyboardInterrupt
        batches.append(len(prepared))
        return real(prepared)

    monkeypatch.setattr(encoder, "encode_prepared", one_batch_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        ingest(root, index, encoder=encoder, commit_rows=4, workers=2, progress=True)  # a window of 4 rows
    shown = [int(n) for n in re.findall(r"encode:[^\r\n]*?\| *(\d+)/12", capsys.readouterr().err)]
    assert batches == [4] and shown[-1] == 4
    monkeypatch.undo()
    assert ingest(root, index, encoder=encoder).unchanged_items == 4
