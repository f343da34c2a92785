"""Each benchmark end to end on a tiny fixture in its official format, against an independent computation."""

import dataclasses
import json

import bench_fixtures
import numpy as np
import pytest
from click.testing import CliRunner

from unite_search.cli import main
from unite_search.evaluation import DatasetError, run_benchmark
from unite_search.evaluation.loaders import carebench, mmeb, urban1k, webvid_covr


def ranks_by_argsort(scores, positives):
    """An independent rank: position of the first positive in a stable descending sort."""
    out = []
    for row, pos in zip(scores, positives, strict=True):
        order = np.argsort(-row, kind="stable").tolist()
        out.append(1 + min(order.index(p) for p in pos))
    return np.array(out)


def check_two_way(result, texts, items, text_item, encoder):
    t = encoder.encode([{"text": x} for x in texts])
    x = encoder.encode(items)
    scores = t @ x.T
    t2x = ranks_by_argsort(scores, [[i] for i in text_item])
    x2t = ranks_by_argsort(scores.T, [[j for j, i in enumerate(text_item) if i == item] for item in range(len(items))])
    forward, backward = result["metrics"].values()
    for k in (1, 5, 10):
        assert forward[f"R@{k}"] == pytest.approx(100 * np.mean(t2x <= k))
        assert backward[f"R@{k}"] == pytest.approx(100 * np.mean(x2t <= k))


def test_urban1k_nested_root_and_stray_files(tmp_path, encoder):
    data = bench_fixtures.urban1k(tmp_path / "data")
    ds = urban1k(data)
    assert ds.item_ids == ["1", "2", "3", "4", "5", "6"] and ds.missing == []
    assert ds.texts[0] == "picture number 1 with stripes"  # first line, stripped
    result = run_benchmark("urban1k", data, encoder=encoder, cache_dir=tmp_path / "cache")
    assert set(result["metrics"]) == {"T2I", "I2T"} and result["counts"]["texts"] == 6
    check_two_way(result, ds.texts, ds.items, ds.text_item, encoder)
    assert result["reference"]["Long-CLIP-L"]["T2I R@1"] == 86.1


def test_the_vector_cache_lives_where_the_other_caches_do(tmp_path, encoder, monkeypatch):
    """It was always ~/.cache/unite-search/embeddings, whatever $XDG_CACHE_HOME said."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    run_benchmark("urban1k", bench_fixtures.urban1k(tmp_path / "data"), encoder=encoder)
    assert any((tmp_path / "xdg" / "unite-search" / "embeddings").rglob("*.npy"))


def test_urban1k_takes_the_first_line_as_a_file_reads_it_and_skips_names_int_cannot_read(tmp_path):
    data = bench_fixtures.urban1k(tmp_path / "data")
    captions = data / "Urban1k" / "Urban1k" / "caption"
    (captions / "1.txt").write_text("a street at dusk\u2028with neon\x0cand a tram\r\nsecond line\n", newline="")
    (captions / "2.txt").write_text("old mac line\rsecond", newline="")
    (captions / "\u00b2.txt").write_text("a stray: '\u00b2' is a digit to str.isdigit, not to int()")
    ds = urban1k(data)
    assert ds.texts[:2] == ["a street at dusk\u2028with neon\x0cand a tram", "old mac line"]
    assert ds.item_ids == ["1", "2", "3", "4", "5", "6"]


def test_missing_media_is_counted_not_dropped_silently(tmp_path, encoder):
    data = bench_fixtures.urban1k(tmp_path / "data")
    (data / "Urban1k" / "Urban1k" / "image" / "3.jpg").unlink()
    result = run_benchmark("urban1k", data, encoder=encoder, cache_dir=tmp_path / "cache")
    assert result["counts"] == {"texts": 5, "items": 5, "skipped_missing_media": 1}
    assert result["missing"] == ["3"]
    runner = CliRunner()
    out = runner.invoke(main, ["bench", "urban1k", "--data", str(data), "--model", str(encoder.model_id),
                               "--device", "cpu", "--cache", str(tmp_path / "cache")])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "scored 5 queries; skipped 1 with missing media" in out.stdout
    # an --out it cannot write: the result is shown first, then one line (it was a traceback, result lost)
    out = runner.invoke(main, ["bench", "urban1k", "--data", str(data), "--model", str(encoder.model_id),
                               "--device", "cpu", "--cache", str(tmp_path / "cache"),
                               "--out", str(tmp_path / "no" / "such" / "r.json")])  # fmt: skip
    assert out.exit_code == 1 and "scored 5 queries" in out.stdout and "No such file or directory" in out.output
    assert "Traceback" not in out.output and isinstance(out.exception, SystemExit)


def test_carebench_subfolders_variants_and_its_sampler(tmp_path, encoder):
    data = bench_fixtures.carebench(tmp_path / "data")
    ds = carebench(data, variant="temporal")
    assert ds.frames == 32 and ds.sampler == "segment-middle"
    assert ds.texts == [f"clip {i} temporal" for i in range(4)] and ds.items[1]["video"].endswith("sub/b.mp4")
    general = carebench(data)
    assert general.text_item == [0, 1, 1, 2, 3]  # a list caption gives the video two texts
    result = run_benchmark("carebench", data, encoder=encoder, variant="general", cache_dir=tmp_path / "c")
    assert result["settings"]["frames"] == 32 and result["settings"]["sampler"] == "segment-middle"
    assert set(result["metrics"]) == {"T2V", "V2T"}
    bench_encoder = encoder.with_settings(
        dataclasses.replace(encoder.preprocessing, frames=32, sampler="segment-middle")
    )
    check_two_way(result, general.texts, general.items, general.text_item, bench_encoder)
    assert "Unite-Base-2B, 32 frames (paper)" in result["reference"]
    with pytest.raises(DatasetError, match="variant"):
        carebench(data, variant="audio")


@pytest.mark.parametrize(("name", "build", "count"), [
    ("sharegpt4v", bench_fixtures.sharegpt4v, 3),
    ("docci", bench_fixtures.docci, 4),
    ("msrvtt", bench_fixtures.msrvtt, 4),
])  # fmt: skip
def test_image_and_video_sets(tmp_path, encoder, name, build, count):
    from unite_search.evaluation.loaders import LOADERS

    data = build(tmp_path / "data")
    kwargs = {"limit": 3} if name == "sharegpt4v" else {}
    ds = LOADERS[name](data, **kwargs)
    assert len(ds.items) == count
    if name == "sharegpt4v":  # the first records in file order; newlines become spaces
        assert ds.item_ids == ["sa_1000", "sa_1001", "sa_1002"] and ds.texts[0] == "Image 0. With lines."
    if name == "docci":  # only the test split
        assert all(i.startswith("test_") for i in ds.item_ids)
    result = run_benchmark(name, data, encoder=encoder, cache_dir=tmp_path / "cache", **kwargs)
    enc = encoder
    if name == "msrvtt":
        assert result["settings"]["frames"] == 48
        enc = encoder.with_settings(dataclasses.replace(encoder.preprocessing, frames=48))
        assert {"MdR", "MnR"} <= set(result["metrics"]["T2V"])
    check_two_way(result, ds.texts, ds.items, ds.text_item, enc)


def test_webvid_covr_mask_duplicates_and_extra_columns(tmp_path, encoder):
    from unite_search.evaluation import metrics

    data = bench_fixtures.webvid_covr(tmp_path / "data")
    ds = webvid_covr(data)
    assert ds.target_ids == ["1001/12", "1002/22", "1003/31"]  # unique pth2, sorted
    assert ds.queries[0]["text"] == "make it red" and ds.frames == 16
    result = run_benchmark("webvid-covr", data, encoder=encoder, cache_dir=tmp_path / "cache")
    enc = encoder.with_settings(dataclasses.replace(encoder.preprocessing, frames=16))
    q, g = enc.encode(ds.queries), enc.encode(ds.gallery)
    sim = q @ g.T
    sim[2, 0] = -10.0  # query 2's reference 1001/12 is row 0's target: the mask, by hand
    ranks = ranks_by_argsort(sim, [[0], [1], [2]])
    got = result["metrics"]["V+T2V"]
    for k in (1, 5, 10, 50):
        assert got[f"R@{k}"] == pytest.approx(100 * np.mean(ranks <= k))
    assert got == metrics.covr(q @ g.T, ds.reference_ids, ds.target_ids)
    (data / "datasets/WebVid/8M/train/1002/21.mp4").unlink()
    assert run_benchmark("webvid-covr", data, encoder=encoder, cache_dir=tmp_path / "cache")["counts"] == {
        "queries": 2, "skipped_missing_media": 1}  # fmt: skip


def test_mmeb_local_reranking_and_image_token(tmp_path, encoder):
    data = bench_fixtures.mmeb(tmp_path / "data")
    ds = mmeb(data)
    query, cands = ds.datasets["ImageNet-1K"][0]
    assert query["text"] == "Represent the given image for classification 0" and "image" in query
    assert [c["text"] for c in cands] == ["goldfish", "tabby cat", "tractor"]
    result = run_benchmark("mmeb", data, encoder=encoder, cache_dir=tmp_path / "cache")
    per = result["metrics"]["per_dataset"]
    for name, rows in ds.datasets.items():
        correct = 0
        for q, cs in rows:
            qv, cv = encoder.encode([q])[0], encoder.encode(cs)
            correct += int(np.argmax(cv @ qv) == 0)
        assert per[name] == pytest.approx(100 * correct / len(rows))
    summary = result["metrics"]["summary"]
    assert summary["Classification"] == per["ImageNet-1K"] and summary["Retrieval"] == per["CIRR"]
    assert summary["Overall"] == pytest.approx((per["ImageNet-1K"] + per["CIRR"]) / 2)
    only = run_benchmark("mmeb", data, encoder=encoder, cache_dir=tmp_path / "cache", subsets=["CIRR"])
    assert list(only["metrics"]["per_dataset"]) == ["CIRR"]


def test_cache_makes_a_rerun_free_and_identical(tmp_path, encoder):
    data = bench_fixtures.urban1k(tmp_path / "data")
    first = run_benchmark("urban1k", data, encoder=encoder, cache_dir=tmp_path / "cache")
    again = run_benchmark("urban1k", data, encoder=encoder, cache_dir=tmp_path / "cache")
    assert first["encoded_items"] == 12 and again["encoded_items"] == 0
    assert again["metrics"] == first["metrics"]
    # other settings never reuse these vectors (the namespace is the whole settings, texts included)
    other = encoder.with_settings(dataclasses.replace(encoder.preprocessing, max_pixels=300 * 28 * 28))
    assert run_benchmark("urban1k", data, encoder=other, cache_dir=tmp_path / "cache")["encoded_items"] == 12


def test_vectors_of_other_numerics_or_of_weights_in_training_are_never_reused(tmp_path, tiny_dir):
    from unite_search import Encoder, Item
    from unite_search.train.data import Pair
    from unite_search.train.trainer import TrainConfig, Trainer

    data, cache = bench_fixtures.urban1k(tmp_path / "data"), tmp_path / "cache"
    mine = Encoder.load(tiny_dir, device="cpu")  # trained below: not the session's shared encoder
    first = run_benchmark("urban1k", data, encoder=mine, cache_dir=cache)
    assert first["encoded_items"] == 12 and first["numerics"]["dtype"] == "float32"
    half = run_benchmark("urban1k", data, encoder=Encoder.load(tiny_dir, device="cpu", dtype="bfloat16"),
                         cache_dir=cache)  # fmt: skip
    assert half["encoded_items"] == 12 and half["numerics"]["dtype"] == "bfloat16"
    pairs = [Pair(Item(text=f"question {i}"), Item(text=f"answer {i} " * (1 + i % 3)), 1, 1, 0) for i in range(8)]
    trainer = Trainer(mine, pairs, TrainConfig(batch_size=8, lr=5e-2, max_steps=2), tmp_path / "run")
    trainer.train()
    assert mine.revision == trainer.encoder.revision and mine.revision.startswith(f"{first['revision']}+unsaved-lora-")
    tuned = run_benchmark("urban1k", data, encoder=mine, cache_dir=cache)  # its weights moved: encoded anew
    assert tuned["encoded_items"] == 12 and tuned["revision"].endswith("-step2")
    saved = json.loads((tmp_path / "run/adapter/unite_train.json").read_text())
    assert saved["base_revision"] == first["revision"]


def test_wrong_folder_is_a_clear_error(tmp_path, encoder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no caption and image found"):
        run_benchmark("urban1k", tmp_path / "empty", encoder=encoder, cache_dir=tmp_path / "cache")
    with pytest.raises(DatasetError, match="unknown benchmark"):
        run_benchmark("imagenet", tmp_path, encoder=encoder)


def test_a_crash_mid_benchmark_keeps_the_finished_chunks(tmp_path, encoder):
    from unite_search.evaluation.cache import EmbeddingCache

    items = [{"text": f"caption {i}"} for i in range(10)]
    calls = []

    def dying(batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise RuntimeError("killed")
        return encoder.encode(batch)

    with pytest.raises(RuntimeError, match="killed"):
        EmbeddingCache(tmp_path, encoder.settings, chunk=3).embed(items, dying)
    resumed = EmbeddingCache(tmp_path, encoder.settings, chunk=3)
    vecs = resumed.embed(items, encoder.encode)
    assert resumed.encoded == 4  # 2 chunks of 3 survived the crash
    np.testing.assert_allclose(vecs, encoder.encode(items), atol=1e-6)
