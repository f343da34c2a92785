"""The embedding cache shared by several runs: each key always maps to its own vector.

The encoder here is a deterministic fake (vectors from the sha256 of the text): these tests are about the
cache, not the model.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from unite_search.evaluation.cache import EmbeddingCache

SETTINGS = {"model": "fake", "revision": "0", "dim": 8}


def fake_encode(batch: list[dict]) -> np.ndarray:
    """(len(batch), 8) unit vectors, a different one for every text."""
    rows = [np.frombuffer(hashlib.sha256(item["text"].encode()).digest()[:8], dtype=np.uint8) for item in batch]
    vecs = np.stack(rows).astype(np.float32) + 1.0
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def _items(prefix: str, n: int) -> list[dict]:
    return [{"text": f"{prefix} {i}"} for i in range(n)]


def test_two_runs_opened_together_keep_their_own_vectors(tmp_path):
    first, second = _items("first", 6), _items("second", 6)
    a = EmbeddingCache(tmp_path, SETTINGS, chunk=3)
    b = EmbeddingCache(tmp_path, SETTINGS, chunk=3)  # both opened before either writes
    np.testing.assert_array_equal(a.embed(first, fake_encode), fake_encode(first))
    early = EmbeddingCache(tmp_path, SETTINGS, chunk=3)  # has seen only a's chunks
    np.testing.assert_array_equal(b.embed(second, fake_encode), fake_encode(second))
    assert (a.encoded, b.encoded) == (6, 6)

    everything = first + second
    for cache in (early, EmbeddingCache(tmp_path, SETTINGS, chunk=3), a, b):
        before = cache.encoded
        np.testing.assert_array_equal(cache.embed(everything, fake_encode), fake_encode(everything))
        assert cache.encoded == before  # the other run's chunks were found on disk, nothing re-encoded
    assert len(list(a.dir.glob("chunk-*.json"))) == 2 + 2  # no chunk of one run replaced one of the other


_WORKER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import numpy as np
from test_eval_cache import fake_encode
from unite_search.evaluation.cache import EmbeddingCache

root, name = Path({root!r}), {name!r}
items = [{{"text": t}} for t in {texts!r}]
cache = EmbeddingCache(root / "cache", {settings!r}, chunk=2)
(root / f"ready-{{name}}").touch()
while not (root / "go").exists():  # both caches are open before either writes
    time.sleep(0.01)

def slow(batch):
    time.sleep(0.005)  # lets the two writers interleave
    return fake_encode(batch)

np.save(root / f"{{name}}.npy", cache.embed(items, slow))
"""


def test_two_processes_writing_into_one_cache(tmp_path):
    shared = [f"shared {i}" for i in range(6)]  # encoded by both, possibly twice: either copy is right
    texts = {name: [f"{name} {i}" for i in range(30)] + shared for name in ("left", "right")}
    procs = []
    for name, own in texts.items():
        code = _WORKER.format(tests=str(Path(__file__).parent), root=str(tmp_path), name=name, texts=own,
                              settings=SETTINGS)  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{name}").exists() for name in texts):
        assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs]
        assert time.monotonic() < deadline, "the workers never opened their cache"
        time.sleep(0.01)
    (tmp_path / "go").touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err

    for name, own in texts.items():  # what each process got back
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), fake_encode([{"text": t} for t in own]))
    everything = [{"text": t} for t in texts["left"] + texts["right"]]
    reader = EmbeddingCache(tmp_path / "cache", SETTINGS, chunk=2)
    np.testing.assert_array_equal(reader.embed(everything, fake_encode), fake_encode(everything))
    assert reader.encoded == 0
    assert len(list(reader.dir.glob("chunk-*.json"))) >= 15 + 15 + 3  # own items and shared ones, in pairs: none lost


def _chunk_holding(cache: EmbeddingCache, item: dict) -> str:
    key = cache.key(item)
    return next(f.stem for f in cache.dir.glob("chunk-*.json") if key in json.loads(f.read_text()))


def test_a_truncated_chunk_is_encoded_again_with_a_warning(tmp_path):
    items = _items("item", 6)
    EmbeddingCache(tmp_path, SETTINGS, chunk=2).embed(items, fake_encode)
    cache = EmbeddingCache(tmp_path, SETTINGS, chunk=2)
    damaged = _chunk_holding(cache, items[3])
    npy = cache.dir / f"{damaged}.npy"
    npy.write_bytes(npy.read_bytes()[:-5])  # a write cut short: the last vector lost its tail

    with pytest.warns(RuntimeWarning, match=rf"damaged embedding cache chunk .*{damaged}\.npy.*truncated"):
        reopened = EmbeddingCache(tmp_path, SETTINGS, chunk=2)
    np.testing.assert_array_equal(reopened.embed(items, fake_encode), fake_encode(items))
    assert reopened.encoded == 2  # only the two items of the damaged chunk


def test_keys_that_do_not_match_their_vectors_are_ignored(tmp_path):
    items = _items("item", 4)
    EmbeddingCache(tmp_path, SETTINGS, chunk=2).embed(items, fake_encode)
    cache = EmbeddingCache(tmp_path, SETTINGS, chunk=2)
    keys_file = cache.dir / f"{_chunk_holding(cache, items[0])}.json"
    keys_file.write_text(json.dumps([*json.loads(keys_file.read_text()), cache.key({"text": "stowaway"})]))

    with pytest.warns(RuntimeWarning, match="holds 2 vectors for 3 keys"):
        reopened = EmbeddingCache(tmp_path, SETTINGS, chunk=2)
    wanted = [*items, {"text": "stowaway"}]
    np.testing.assert_array_equal(reopened.embed(wanted, fake_encode), fake_encode(wanted))
    assert reopened.encoded == 3  # the two items of the bad chunk and the stowaway


def test_vectors_without_keys_and_old_numbered_chunks(tmp_path):
    items = _items("item", 4)
    cache = EmbeddingCache(tmp_path, SETTINGS, chunk=2)
    # written by an older version: chunk-0 with its keys, and chunk-1 whose key file a crash prevented
    np.save(cache.dir / "chunk-0.npy", fake_encode(items[:2]))
    (cache.dir / "chunk-0.json").write_text(json.dumps([cache.key(item) for item in items[:2]]))
    np.save(cache.dir / "chunk-1.npy", -fake_encode(items[2:]))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a chunk without its key file is normal after a crash: no warning
        reopened = EmbeddingCache(tmp_path, SETTINGS, chunk=2)
        np.testing.assert_array_equal(reopened.embed(items, fake_encode), fake_encode(items))
    assert reopened.encoded == 2  # chunk-0 was read, chunk-1's vectors never used
