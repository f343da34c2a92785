"""A model that gives a vector that is not finite (float16 overflowing, damaged weights): no such vector
is returned, indexed, searched with or scored. The weights here are the tiny model's with one token's
embedding set to NaN, so every text holding that character, and only those, comes out as NaN."""

from __future__ import annotations

import numpy as np
import pytest
from corpora import NAN_CHAR as BAD
from corpora import make_nan_corpus
from fastapi.testclient import TestClient

from unite_search import EncodeError, Encoder, Index, IngestError
from unite_search.ingestion import ingest
from unite_search.server import create_app
from unite_search.store import IndexStore


@pytest.fixture(scope="module")
def nan_encoder(nan_dir):
    return Encoder.load(nan_dir, device="cpu", workers=2)


def test_encode_refuses_the_vectors_that_are_not_finite(nan_encoder, encoder):
    fine = nan_encoder.encode(["a plain sentence", "another one"])
    assert np.isfinite(fine).all()
    np.testing.assert_allclose(fine, encoder.encode(["a plain sentence", "another one"]), atol=1e-6)
    with pytest.raises(EncodeError, match=r"item\(s\) 1 \(1 of 3\): the model's output is not finite"):
        nan_encoder.encode(["a plain sentence", f"a {BAD} here", "another one"])


def test_ingest_fails_that_item_alone_and_indexes_no_such_vector(nan_encoder, tmp_path):
    root = tmp_path / "corpus"
    make_nan_corpus(root)
    index = tmp_path / "index"

    with pytest.raises(IngestError, match=r"\[encode\]: the model's output is not finite"):
        ingest(root, index, encoder=nan_encoder, on_error="raise", passage_chars=400)
    assert not IndexStore(index).read_manifest().get("shards")  # nothing published

    report = ingest(root, index, encoder=nan_encoder, passage_chars=400)
    failed = {p.path: (p.stage, p.reason) for p in report.failures}
    assert set(failed) == {"bad.txt", "long.md"}, report.summary()
    assert all(stage == "encode" and "not finite" in reason for stage, reason in failed.values())
    assert report.shards == {"text": 1, "image": 1}  # long.md's finite passages were taken out with it
    idx = Index.open(index, encoder=nan_encoder)
    for shard in ("text", "image"):
        hits = idx.query(text="harbour", target=shard, k=10)
        assert len(hits) == 1 and np.isfinite([h.score for h in hits]).all()
    with pytest.raises(EncodeError):
        idx.query(text=f"where is the {BAD}", target="text")

    with TestClient(create_app(idx)) as client:  # the server's batched forward checks each query too
        assert client.post("/search", json={"text": "harbour", "target": "text"}).status_code == 200
        r = client.post("/search", json={"text": f"the {BAD}", "target": "text"})
        assert r.status_code == 500 and "not finite" in r.json()["detail"], r.text
