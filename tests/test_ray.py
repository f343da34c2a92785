"""Ingest on Ray Data (``engine="ray"``), on a local Ray cluster started here with two encoder actors:
the same rows as a local ingest, bad files reported the same, a killed worker retried without duplicate
rows, and a killed driver resumed by a rerun."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from corpora import make_bad_corpus, make_good_corpus, make_nan_corpus, write_photo
from test_ingest import OPTS, assert_same_rows, rows_by_id

from unite_search.ingestion import ingest
from unite_search.store import IndexStore

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """A local Ray cluster of this test module: 4 logical CPUs on this machine's cores."""
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def texts(root: Path, n: int) -> None:
    (root / "notes").mkdir(parents=True)
    for i in range(n):
        (root / f"notes/n{i:03d}.txt").write_text(f"note {i}: " + "gulls over the harbour " * (1 + i % 7))


def test_a_ray_ingest_equals_a_local_one_bad_files_included(tmp_path, encoder):
    root = tmp_path / "corpus"
    root.mkdir()
    make_good_corpus(root)
    make_bad_corpus(root / "bad")
    local = ingest(root, tmp_path / "local", encoder=encoder, pairs="composed", **OPTS)
    remote = ingest(root, tmp_path / "ray", encoder=encoder, pairs="composed", engine="ray", ray_encoders=2, **OPTS)
    assert remote.status == local.status == "finished_with_failures", remote.summary()
    for field in ("items", "encoded_items", "encoded_rows", "shards"):
        assert getattr(remote, field) == getattr(local, field), field

    def failures(report):
        return sorted((p.path, p.stage, p.reason) for p in report.failures)

    assert failures(remote) == failures(local)
    assert any(stage == "decode" for _, stage, _ in failures(remote))  # found by a Ray decode task
    # two encoder actors; Ray starts them asynchronously, so on a corpus this short the first one up may
    # take every batch (it did in a CI run): one or both encoded rows
    assert remote.threads["ray_encoders"] == 2 and remote.threads["ray_encoders_busy"] in (1, 2), remote.threads
    assert {"decode", "encode", "write", "pipeline"} <= set(remote.timings)
    assert_same_rows(rows_by_id(tmp_path / "ray"), rows_by_id(tmp_path / "local"))
    again = ingest(root, tmp_path / "ray", encoder=encoder, pairs="composed", engine="ray", **OPTS)
    local_again = ingest(root, tmp_path / "local", encoder=encoder, pairs="composed", **OPTS)
    assert again.encoded_rows == local_again.encoded_rows == 0 and again.unchanged_items == local_again.unchanged_items


def test_an_item_the_model_gives_no_finite_vector_for_fails_as_in_a_local_ingest(tmp_path, nan_dir):
    from unite_search import Encoder

    encoder = Encoder.load(nan_dir, device="cpu", workers=2)
    make_nan_corpus(tmp_path / "corpus")
    local = ingest(tmp_path / "corpus", tmp_path / "local", encoder=encoder, passage_chars=400)
    remote = ingest(tmp_path / "corpus", tmp_path / "ray", encoder=encoder, passage_chars=400, engine="ray")
    told = sorted((p.path, p.stage, p.reason) for p in remote.failures)
    assert told == sorted((p.path, p.stage, p.reason) for p in local.failures)
    assert [(path, stage) for path, stage, _ in told] == [("bad.txt", "encode"), ("long.md", "encode")]
    assert remote.shards == local.shards == {"text": 1, "image": 1}
    assert remote.encoded_rows == local.encoded_rows == 2  # not long.md's finite passages, written then deleted
    assert_same_rows(rows_by_id(tmp_path / "ray"), rows_by_id(tmp_path / "local"))
    # a shard whose every row failed: none made, as locally (an empty one was published, and answered)
    for name in ("fine.txt", "long.md"):
        (tmp_path / "corpus" / name).unlink()
    local = ingest(tmp_path / "corpus", tmp_path / "local2", encoder=encoder, passage_chars=400)
    remote = ingest(tmp_path / "corpus", tmp_path / "ray2", encoder=encoder, passage_chars=400, engine="ray")
    assert remote.shards == local.shards == {"image": 1}
    assert IndexStore(tmp_path / "ray2").tables.shards() == ["image"]


@pytest.mark.parametrize(
    ("cpus", "gpus", "n"), [(1, 0, 1), (2, 0, 8), (4, 0, 16), (3, 0, 2), (3, 0, 3), (2, 0, 7), (6, 0, 9), (5, 6, 6),
                            (2, 2, 2), (8, 4, 4)],
)  # fmt: skip
def test_encoder_actors_always_leave_a_cpu_to_decoding(cpus, gpus, n):
    """A 1-CPU cluster, or more CPU actors than (CPUs - 1) x 4, left no CPU for a decode task: the run
    waited forever."""
    from unite_search.distributed import actor_resources

    actor, device, threads = actor_resources(cpus, gpus, n)
    assert cpus - n * actor["num_cpus"] >= 1  # a decode task takes one (Ray counts in 1/10,000: no rounding up)
    assert device == ("cuda" if gpus else "cpu") and actor.get("num_gpus", 0) == (1 if gpus else 0)
    assert threads is None if gpus else threads >= 1


def test_a_decode_task_never_reserves_more_memory_than_a_node_has():
    """One large input made every decode task reserve a batch of it (8 x 1.7 GiB for a 4K clip): more than
    a node had, so Ray never scheduled any, and the run waited forever."""
    from unite_search.distributed import RAY_BATCH, decode_memory

    assert decode_memory([10, 30, 20], 0) == RAY_BATCH * 30
    assert decode_memory([10, 30, 20], 10**9) == RAY_BATCH * 30
    assert decode_memory([10, 2 * 10**9], 16 * 10**9) == 16 * 10**9


def test_fragments_a_stopped_run_never_committed_are_deleted_by_the_next(tmp_path, nan_dir):
    """Under on_error="raise", the fragments the workers wrote were left as files no version references, and
    Lance's own cleanup keeps such files for a week. (The model gives NaN for one text: a failure found by
    an encoder actor, in a batch whose other rows it writes.)"""
    from corpora import NAN_CHAR

    from unite_search import Encoder
    from unite_search.errors import IngestError

    encoder = Encoder.load(nan_dir, device="cpu", workers=2)
    root, index = tmp_path / "corpus", tmp_path / "index"
    root.mkdir()
    (root / "first.txt").write_text("the first note")
    assert ingest(root, index, encoder=encoder).status == "ok"
    for i in range(20):
        (root / f"t{i:02d}.txt").write_text(f"plain sentence number {i} about a harbour")
    (root / "zz.txt").write_text(f"a sentence with a {NAN_CHAR} in it")
    with pytest.raises(IngestError, match=r"zz\.txt"):
        ingest(root, index, encoder=encoder, engine="ray", on_error="raise", commit_rows=10_000)
    assert unreferenced(index)  # written by the workers, never committed
    (root / "zz.txt").unlink()
    report = ingest(root, index, encoder=encoder)  # the next run, local or not
    assert report.status == "ok" and report.shards == {"text": 21}
    assert unreferenced(index) == []


def unreferenced(index: Path) -> list[str]:
    """The data files of the index's tables that no table version references."""
    import lance

    found = []
    for table in sorted((index / "tables").glob("*.lance")):
        dataset = lance.dataset(str(table))
        used = {f.path for v in dataset.versions() for fr in lance.dataset(str(table), version=v["version"])
                .get_fragments() for f in fr.metadata.files}  # fmt: skip
        found += [p.name for p in (table / "data").glob("*") if p.name not in used]
    return found


def actor_pids() -> list[int]:
    """Processes of this machine's encoder actors (Ray titles each worker after what it runs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if title.startswith(b"ray::") and b"_EncodeWrite" in title:
                found.append(int(entry.name))
    return found


def data_files(index: Path) -> int:
    return len(list((index / "tables").glob("*.lance/data/*.lance")))


def test_a_killed_encoder_worker_is_retried_without_duplicate_rows(tmp_path, encoder):
    root = tmp_path / "corpus"
    texts(root, 240)
    for i in range(12):
        write_photo(root / f"photos/p{i}.png", seed=i, size=(320, 240))
    index = tmp_path / "ray"
    killed: dict[str, object] = {}

    def kill_one_after_its_first_write():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "pid" not in killed:
            pids = actor_pids()
            if pids and index.exists() and data_files(index):
                os.kill(pids[0], signal.SIGKILL)
                killed.update(pid=pids[0], files=data_files(index))
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_after_its_first_write)
    killer.start()
    report = ingest(root, index, encoder=encoder, engine="ray", ray_encoders=2, commit_rows=16)
    killer.join()
    assert "pid" in killed, "no encoder actor was seen writing"
    assert data_files(index) > killed["files"]  # the run went on after the kill
    assert report.status == "ok" and report.encoded_rows == 252, report.summary()
    local = ingest(root, tmp_path / "local", encoder=encoder)
    assert_same_rows(rows_by_id(index), rows_by_id(tmp_path / "local"))  # rows_by_id fails on a duplicate
    assert local.encoded_rows == 252


DRIVER = """
import sys
from unite_search.ingestion import ingest
ingest(sys.argv[1], sys.argv[2], model=sys.argv[3], device="cpu", engine="ray", ray_encoders=1, commit_rows=8)
"""


def test_a_killed_driver_is_resumed_by_a_rerun(tmp_path, encoder, tiny_dir):
    root = tmp_path / "corpus"
    texts(root, 300)
    index = tmp_path / "index"
    env = {**os.environ, "RAY_ADDRESS": ""}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(root), str(index), str(tiny_dir)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        killed_mid_run(driver, index)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)  # the Ray processes the driver started, after it
    kept = IndexStore(index).tables.unit_states("text")
    assert 0 < len(kept) < 300  # killed mid-run, with committed rows
    again = ingest(root, index, encoder=encoder)  # the rerun, without Ray
    assert again.status == "ok", again.summary()
    assert again.unchanged_items == len(kept) and again.encoded_items == 300 - len(kept)  # one row an item
    ingest(root, tmp_path / "local", encoder=encoder)
    assert_same_rows(rows_by_id(index), rows_by_id(tmp_path / "local"))


def killed_mid_run(driver, index: Path) -> None:
    """SIGKILL the driver once its table has two commits of rows."""
    deadline = time.monotonic() + 180
    table = index / "tables/text.lance/_versions"
    while time.monotonic() < deadline and driver.poll() is None:
        if table.exists() and len(list(table.glob("*.manifest"))) >= 3:  # created, then two commits
            break
        time.sleep(0.02)
    assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    driver.send_signal(signal.SIGKILL)
    driver.wait()


def test_ctrl_c_keeps_the_rows_encoded_so_far(tmp_path, encoder, monkeypatch):
    """The encoded rows waiting for their commit (up to ``commit_rows``) were dropped on Ctrl-C."""
    import pickle

    from unite_search import distributed

    root = tmp_path / "corpus"
    texts(root, 24)
    results = []

    class Interrupted:  # the driver's Ctrl-C arrives as it takes the second result
        dumps = staticmethod(pickle.dumps)

        @staticmethod
        def loads(blob):
            results.append(blob)
            if len(results) == 2:
                raise KeyboardInterrupt
            return pickle.loads(blob)

    monkeypatch.setattr(distributed, "pickle", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest(root, tmp_path / "index", encoder=encoder, engine="ray", ray_encoders=1, commit_rows=10_000)
    kept = IndexStore(tmp_path / "index").tables.open("text").count_rows()
    assert 0 < kept < 24
    monkeypatch.undo()
    again = ingest(root, tmp_path / "index", encoder=encoder, engine="ray", ray_encoders=1)  # continued on Ray
    assert again.encoded_items == 24 - kept and again.unchanged_items == kept
    assert_same_rows(rows_by_id(tmp_path / "index"), rows_by_id(_local(root, tmp_path / "local", encoder)))


def _local(root, index, encoder):
    ingest(root, index, encoder=encoder)
    return index


def test_an_address_nothing_answers_on_is_told_before_anything_is_read(tmp_path, encoder, monkeypatch):
    from unite_search.errors import ConfigError, IngestError, MissingDependencyError

    root = tmp_path / "corpus"
    texts(root, 2)
    with pytest.raises(IngestError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1 .*ray start --head"):
        ingest(root, tmp_path / "index", encoder=encoder, engine="ray", ray_address="127.0.0.1:1")
    with pytest.raises(ConfigError, match="not a cluster address"):
        ingest(root, tmp_path / "index", encoder=encoder, engine="ray", ray_address="nonsense")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install -e '\.\[ray\]'"):
        ingest(root, tmp_path / "index", encoder=encoder, engine="ray")
    assert not (tmp_path / "index").exists()


def test_a_run_that_starts_ray_shows_our_progress_and_none_of_rays_lines(tmp_path, tiny_dir):
    """The command line in a process of its own: it starts a local Ray cluster, its stderr holds the local
    ingest's messages and progress bar only, and its stdout the report alone."""
    import json

    root = tmp_path / "corpus"
    texts(root, 6)  # one Ray Data input for two encoders: Ray warned of it on stderr
    (root / "notes/broken.txt").write_bytes(b"caf\xe9 in Latin-1, not UTF-8")
    exe = Path(sys.executable).with_name("unite-search")
    env = {**os.environ, "RAY_ADDRESS": ""}
    args = [str(exe), "ingest", str(root), "--index", str(tmp_path / "index"), "--model", str(tiny_dir), "--device",
            "cpu", "--ray", "--ray-encoders", "2", "--json"]  # fmt: skip
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr[-3000:]  # finished, one file failed
    assert "encoding 6 rows on Ray (auto)" in done.stderr and "encode: 100%" in done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "finished_with_failures" and report["encoded_rows"] == 6
    assert report["threads"]["ray_encoders"] == 2
    assert [(f["path"], f["stage"]) for f in report["failures"]] == [("notes/broken.txt", "read")]
    assert "text is not valid UTF-8" in report["failures"][0]["reason"]
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    ours = ("read:", "encode:", "6 items: 6 to encode", "encoding 6 rows", "indexing shard")
    assert [line for line in lines if not line.startswith(ours)] == []
    # nor inside a line (a log line lands after a progress bar's carriage return)
    assert not re.search(r"\[\d{4}-\d\d-\d\d[ T]\d|core_worker|raylet|WARN|ERROR", done.stderr), done.stderr
