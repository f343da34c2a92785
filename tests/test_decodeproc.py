"""The speed switch ``processes``: image and video files decoded in worker processes, the same bits."""

from __future__ import annotations

import dataclasses
import os
import signal
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_empty_video
from corpora import make_bad_corpus, write_clip, write_damaged_mp4, write_photo, write_truncated_mp4
from test_ingest import OPTS, assert_same_rows, rows_by_id

from unite_search import decodeproc
from unite_search.errors import InputError
from unite_search.ingestion import ingest
from unite_search.speed import Speed
from unite_search.store import IndexStore


@pytest.fixture(scope="module")
def fast(encoder):
    return encoder.with_settings(speed=dataclasses.replace(encoder.speed, processes=True))


def _answer_files() -> list[str]:
    mine = f"{decodeproc.PREFIX}{os.getpid()}-"
    return [f for f in os.listdir(decodeproc.shared_dir()) if f.startswith(mine)]


def test_processes_give_the_same_pixels_and_vectors(encoder, fast, media):
    rng = np.random.default_rng(5)
    items = [
        {"image": media["image"]},
        {"image": str(media["image2"]), "text": "the same, upside down"},
        {"video": media["video"]},
        {"video": media["video2"], "text": "at night"},
        {"image": rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)},  # in memory: prepared on a thread
        {"text": "a plain text"},
    ]
    assert Speed.parse("processes").processes and not Speed().processes
    for item in items:
        a, b = encoder.prepare(item), fast.prepare(item)
        np.testing.assert_array_equal(b.input_ids, a.input_ids)
        for name in ("image", "video"):
            va, vb = getattr(a, name), getattr(b, name)
            assert (va is None) == (vb is None)
            if va is not None:
                assert vb.grid_thw == va.grid_thw and vb.pixel_values.dtype == va.pixel_values.dtype
                np.testing.assert_array_equal(vb.pixel_values, va.pixel_values)
                assert vb.pixel_values.flags.writeable
    assert fast.prepare(items[2]).video.pixel_values.nbytes > decodeproc.INLINE_BYTES
    assert any(w.buffer is not None for w in decodeproc.pool()._all)  # it came through a worker's buffer
    np.testing.assert_array_equal(fast.encode(items), encoder.encode(items))
    assert _answer_files() == []  # a buffer's name is unlinked once the caller has opened it


def test_bad_files_fail_with_the_same_words_in_processes(encoder, fast, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    cases = [
        {"image": tmp_path / "missing.jpg"},
        {"image": tmp_path / "broken.png"},
        {"video": write_empty_video(tmp_path / "zero.mp4")},
        {"video": tmp_path / "gone.mp4"},
        {"video": write_truncated_mp4(tmp_path / "truncated.mp4")},  # the decoder's words in ``detail``
    ]
    for bad in cases:
        errors = []
        for enc in (encoder, fast):
            with pytest.raises(InputError) as info:
                enc.encode([{"text": "fine"}, bad])
            errors.append(info.value)
        a, b = errors
        assert str(b) == str(a) and "item 1" in str(b)
        assert (b.reason, b.source, b.detail) == (a.reason, a.source, a.detail)
    assert b.detail.startswith("InvalidDataError: ")  # the last case's: the decoder's own words


def _hooked_pool(tmp_path, monkeypatch, code: str) -> decodeproc.DecodePool:
    """A fresh pool whose workers start with ``code`` as their ``sitecustomize`` (run at their start)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(code))
    monkeypatch.setenv("PYTHONPATH", str(hooks))
    pool = decodeproc.DecodePool()
    monkeypatch.setattr(decodeproc, "_pool", pool)
    monkeypatch.setattr(decodeproc, "_pool_pid", os.getpid())
    return pool


def test_a_forked_child_gets_its_own_decoding_processes():
    parent = decodeproc.pool()
    assert decodeproc.pool() is parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its parent's pool would share the parent's pipes
        try:
            os.write(write, b"own" if decodeproc.pool() is not parent and decodeproc.pool().size == 0 else b"shared")
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"own"
    os.close(read)


def test_a_full_shared_memory_sends_the_pixels_inside_the_answer(encoder, fast, media, tmp_path, monkeypatch):
    pool = _hooked_pool(
        tmp_path,
        monkeypatch,
        """
        import errno, os

        def full(fd, offset, length):
            raise OSError(errno.ENOSPC, "No space left on device")

        os.posix_fallocate = full
        """,
    )
    try:
        item = {"video": media["video"], "text": "at night"}
        got = fast.prepare(item).video.pixel_values
        assert got.nbytes > decodeproc.INLINE_BYTES and pool.size == 1
        assert all(w.buffer is None for w in pool._all)  # nothing came through a buffer
        np.testing.assert_array_equal(got, encoder.prepare(item).video.pixel_values)
    finally:
        pool.close()
    assert _answer_files() == []  # the worker removed the buffer file it could not reserve


def test_a_decoder_that_dies_fails_its_file_and_the_rest_goes_on(fast, media, tmp_path, monkeypatch):
    """A real worker death: the workers run with a ``sitecustomize`` that kills the process (SIGKILL)
    on any file named crash*. Another file in the same call is encoded; the workers are replaced."""
    pool = _hooked_pool(
        tmp_path,
        monkeypatch,
        """
        import os, signal
        import unite_search.image as image

        real = image.preprocess_image

        def dying(source, settings):
            if os.path.basename(str(source)).startswith("crash"):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(source, settings)

        image.preprocess_image = dying
        """,
    )
    crash = write_photo(tmp_path / "crash.png", seed=3)
    try:
        good = fast.encode([{"image": media["image"]}])
        with pytest.raises(InputError, match=r"crash\.png: the decoder crashed on this file") as info:
            fast.encode([{"image": media["image2"]}, {"image": crash}])
        assert "killed by signal 9" in info.value.detail
        before = set(pool.pids())
        for pid in before:  # killed from outside while idle: the next call starts others and succeeds
            os.kill(pid, signal.SIGKILL)
        np.testing.assert_array_equal(fast.encode([{"image": media["image"]}]), good)
        assert pool.size >= 1 and not before & set(pool.pids())
    finally:
        pool.close()
    assert pool.size == 0


def test_ingest_in_processes_writes_the_same_rows_and_reports_the_same_failures(encoder, fast, tmp_path):
    root = tmp_path / "corpus"
    write_photo(root / "a.png", seed=1)
    write_photo(root / "b.jpg", seed=2)
    write_clip(root / "long.mp4", 80, fps=8, seed=2)  # 10 s: segments, each decoded with its span
    expected = make_bad_corpus(root / "bad")
    write_damaged_mp4(root / "bad" / "damaged.mp4")
    procs = ingest(root, tmp_path / "procs", encoder=fast, **OPTS)
    threads = ingest(root, tmp_path / "threads", encoder=encoder, **OPTS)
    assert procs.encoded_rows == threads.encoded_rows > 3
    assert_same_rows(rows_by_id(tmp_path / "procs"), rows_by_id(tmp_path / "threads"))
    got = {p.path: p.reason for p in procs.failures}
    left_alone = ("locked.png", "vanishing.png")  # bad only when a test locks or deletes them
    assert got == {p.path: p.reason for p in threads.failures}
    assert set(got) == {f"bad/{rel}" for rel in expected if rel not in left_alone} | {"bad/damaged.mp4"}
    # a decoder's own words reach the run log from a worker as from a thread (the read stage's failures
    # happen in this process either way)
    details = [
        {p["path"]: p.get("detail") for p in IndexStore(index).last_run()["failures"] if p["stage"] == "decode"}
        for index in (tmp_path / "procs", tmp_path / "threads")
    ]
    assert details[0] == details[1] and "bad/truncated.jpg" in details[0]


class _TwoArgError(Exception):
    """Pickles, but cannot be rebuilt from its args (its __init__ takes two)."""

    def __init__(self, what, why):
        super().__init__(f"{what}: {why}")


def test_an_error_that_cannot_be_rebuilt_travels_as_one_that_can(tmp_path, monkeypatch, media):
    """It reached the caller as a TypeError from unpickling, and its worker was neither reused nor closed."""
    import pickle

    from unite_search import image
    from unite_search.settings import EncoderSettings

    def broken(source, settings):
        raise _TwoArgError("decoder", "state lost")

    monkeypatch.setattr(image, "preprocess_image", broken)
    with pytest.raises(TypeError):
        pickle.loads(pickle.dumps(_TwoArgError("a", "b")))
    status, (exc, trace), _ = decodeproc._answer(
        ("image", str(media["image"]), EncoderSettings(), {}, False), decodeproc._Buffer(str(tmp_path))
    )
    assert status == "raise" and type(exc) is RuntimeError and "_TwoArgError: decoder: state lost" in str(exc)
    assert "state lost" in trace and type(pickle.loads(pickle.dumps(exc))) is RuntimeError


def test_a_decoding_process_that_cannot_start_stops_the_run_instead_of_failing_each_file(fast, media, monkeypatch):
    """Too many open files made every image and video "cannot read file", and the run published without them."""

    def refused(self):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(decodeproc._Worker, "__init__", refused)
    monkeypatch.setattr(decodeproc, "_pool", decodeproc.DecodePool())  # no idle worker to reuse
    monkeypatch.setattr(decodeproc, "_pool_pid", os.getpid())
    with pytest.raises(RuntimeError, match=r"cannot start a decoding process: .*Too many open files"):
        fast.encode([{"image": media["image"]}])


def _decoding_children() -> list[int]:
    """Our child processes still running the decoding worker (zombies not counted)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = (Path(entry.path) / "stat").read_text().rsplit(")", 1)[1].split()
            command = (Path(entry.path) / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and stat[0] != "Z" and b"unite_search.decodeproc" in command:
            found.append(int(entry.name))
    return found


def test_ctrl_c_in_the_wait_for_a_decode_leaves_no_process_or_answer_file(encoder, tmp_path, monkeypatch):
    """Ctrl-C landing while the caller waits for a worker (as in ``prepare`` on the main thread): the worker
    was left in the pool, never reused nor ended, its answer file left in shared memory, at every interrupt."""
    from unite_search.settings import EncoderSettings

    photo = write_photo(tmp_path / "big.png", seed=4, size=(1600, 1200))  # answered through shared memory
    before = set(_decoding_children())
    pool = decodeproc.DecodePool()
    try:
        real = decodeproc._receive

        def interrupted(stream):
            raise KeyboardInterrupt  # the request is sent: the worker decodes while the caller is interrupted

        monkeypatch.setattr(decodeproc, "_receive", interrupted)
        for _ in range(2):
            with pytest.raises(KeyboardInterrupt):
                pool.run("image", str(photo), EncoderSettings())
        monkeypatch.setattr(decodeproc, "_receive", real)
        assert pool.pids() == []
        deadline = time.monotonic() + 30  # each ends by itself once its answer meets the closed pipe
        while (set(_decoding_children()) - before or _answer_files()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not set(_decoding_children()) - before and _answer_files() == []
        visual = pool.run("image", str(photo), EncoderSettings())  # a new worker answers
        np.testing.assert_array_equal(visual.pixel_values, encoder.prepare({"image": str(photo)}).image.pixel_values)
    finally:
        pool.close()
    assert _answer_files() == []
