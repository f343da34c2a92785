"""What the evaluation harness refuses: dataset files that name media outside the folder the user gave,
damaged files (a number from part of a record would be silently wrong), and non-finite vectors."""

from __future__ import annotations

import csv
import json
import os

import bench_fixtures
import numpy as np
import pytest
from click.testing import CliRunner
from corpora import write_clip, write_photo

from unite_search.cli import main
from unite_search.evaluation import DatasetError, format_result, metrics, run_benchmark
from unite_search.evaluation.cache import EmbeddingCache
from unite_search.evaluation.loaders import (
    SHAREGPT4V_FILE,
    carebench,
    docci,
    mmeb,
    msrvtt,
    sharegpt4v,
    urban1k,
    webvid_covr,
)

COVR = "annotation/webvid-covr/webvid8m-covr_test.csv"


def _edit_json(path, change):
    records = json.loads(path.read_text())
    change(records)
    path.write_text(json.dumps(records))


def _rewrite_csv(path, change):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    change(rows)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


# ------------------------------------------------------------------------------------ confinement
def test_media_named_outside_the_dataset_folder_are_never_read(tmp_path):
    secret = tmp_path / "secret"
    write_clip(secret / "private.mp4", 10, fps=5)
    write_photo(secret / "private.jpg", seed=1)

    data = bench_fixtures.carebench(tmp_path / "care")
    meta = data / "CaReBench" / "json" / "metadata.json"
    _edit_json(meta, lambda r: r[0].update(video="../../../secret/private.mp4"))
    with pytest.raises(DatasetError, match=r"json/metadata.json record 1: .* leads outside the dataset folder"):
        carebench(data)
    assert carebench(data, allow_outside=True).items[0]["video"].endswith("private.mp4")  # when asked for

    data = bench_fixtures.sharegpt4v(tmp_path / "share")
    _edit_json(data / SHAREGPT4V_FILE, lambda r: r[1].update(image=str(secret / "private.jpg")))
    with pytest.raises(DatasetError, match=r"record 2: .* is an absolute path"):
        sharegpt4v(data)

    data = bench_fixtures.docci(tmp_path / "docci")
    os.symlink(secret / "private.jpg", data / "images" / "link.jpg")  # a link inside that leads out
    lines = (data / "docci_descriptions.jsonlines").read_text().splitlines()
    record = json.loads(lines[1])
    lines[1] = json.dumps({**record, "image_file": "link.jpg"})
    (data / "docci_descriptions.jsonlines").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="leads outside"):
        docci(data)

    data = bench_fixtures.webvid_covr(tmp_path / "covr")
    _rewrite_csv(data / COVR, lambda rows: rows[2].__setitem__(0, "../../../../../secret/private"))
    with pytest.raises(DatasetError, match=r"webvid8m-covr_test.csv:3: .* leads outside"):
        webvid_covr(data)

    data = bench_fixtures.mmeb(tmp_path / "mmeb")
    _mmeb_first_query_image(data, "../../../secret/private.jpg")
    with pytest.raises(DatasetError, match=r"ImageNet-1K/test-00000-of-00001.parquet row 1, query: .* leads outside"):
        mmeb(data)

    data = bench_fixtures.urban1k(tmp_path / "urban")
    caption = data / "Urban1k" / "Urban1k" / "caption" / "2.txt"
    caption.unlink()
    (secret / "note.txt").write_text("a secret note\n")
    os.symlink(secret / "note.txt", caption)
    with pytest.raises(DatasetError, match=r"caption/2.txt: .* leads outside"):
        urban1k(data)


def _mmeb_first_query_image(data, image_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = data / "MMEB-eval" / "ImageNet-1K" / "test-00000-of-00001.parquet"
    table = pq.read_table(part).to_pydict()
    table["qry_img_path"][0] = image_path
    pq.write_table(pa.table(table), part)


# ------------------------------------------------------------------------------------ damaged files
def test_damaged_dataset_files_are_errors_naming_the_record(tmp_path):
    data = bench_fixtures.carebench(tmp_path / "care")
    meta = data / "CaReBench" / "json" / "metadata.json"
    meta.write_text(meta.read_text()[:-40])  # a download cut short
    with pytest.raises(DatasetError, match=r"metadata.json: not valid JSON"):
        carebench(data)
    meta.write_text(json.dumps([{"caption": "no video field"}]))
    with pytest.raises(DatasetError, match="record 1: field 'video' is missing"):
        carebench(data)

    data = bench_fixtures.sharegpt4v(tmp_path / "share")
    _edit_json(data / SHAREGPT4V_FILE, lambda r: r[2].update(conversations=[r[2]["conversations"][0]]))
    with pytest.raises(DatasetError, match="record 3: 'conversations' has no second turn"):
        sharegpt4v(data)

    data = bench_fixtures.docci(tmp_path / "docci")
    with open(data / "docci_descriptions.jsonlines", "a") as fh:
        fh.write('{"example_id": "cut", "split": "te')
    with pytest.raises(DatasetError, match=r"docci_descriptions.jsonlines:8: not a JSON record"):
        docci(data)

    # a CSV row cut short: the edit would be None and the query encoded from its video alone
    data = bench_fixtures.webvid_covr(tmp_path / "covr")
    _rewrite_csv(data / COVR, lambda rows: rows.__setitem__(2, rows[2][:2]))
    with pytest.raises(DatasetError, match=r"webvid8m-covr_test.csv:3: 2 fields where the header names 7"):
        webvid_covr(data)
    data = bench_fixtures.msrvtt(tmp_path / "msr")
    _rewrite_csv(data / "MSRVTT_JSFUSION_test.csv", lambda rows: rows[3].__setitem__(3, " "))
    with pytest.raises(DatasetError, match=r"MSRVTT_JSFUSION_test.csv:4: empty sentence"):
        msrvtt(data)
    assert len(msrvtt(data, limit=2).texts) == 2  # only the rows a run uses are checked

    data = bench_fixtures.mmeb(tmp_path / "mmeb")
    part = data / "MMEB-eval" / "CIRR" / "test-00000-of-00001.parquet"
    part.write_bytes(part.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"CIRR/test-00000-of-00001.parquet: not a readable parquet file"):
        mmeb(data)

    runner = CliRunner()  # the command says it in one line
    out = runner.invoke(main, ["bench", "carebench", "--data", str(tmp_path / "care"), "--device", "cpu"])
    assert out.exit_code != 0 and "record 1: field 'video' is missing" in out.output
    assert "Traceback" not in out.output


def test_an_image_without_its_caption_is_counted_not_dropped(tmp_path):
    data = bench_fixtures.urban1k(tmp_path / "urban")
    (data / "Urban1k" / "Urban1k" / "caption" / "4.txt").unlink()  # a partial unzip
    ds = urban1k(data)
    assert ds.item_ids == ["1", "2", "3", "5", "6"] and ds.missing == ["4 (no caption)"]


def test_mmeb_means_over_part_of_its_datasets_say_so(tmp_path, encoder):
    import shutil

    data = bench_fixtures.mmeb(tmp_path / "mmeb")
    shutil.rmtree(data / "MMEB-eval" / "eval_images" / "CIRR")  # no CIRR row can be scored
    result = run_benchmark("mmeb", data, encoder=encoder, cache_dir=tmp_path / "cache")
    assert list(result["metrics"]["per_dataset"]) == ["ImageNet-1K"]
    covers = result["metrics"]["summary_datasets"]
    assert covers["Overall"] == (1, 36) and covers["Classification"] == (1, 10) and covers["Retrieval"] == (0, 12)
    text = format_result(result)
    assert "CIRR" in text and "none: no row with its media" in text
    assert "Overall " in text and "(1 of 36 datasets)" in text and "Classification " in text
    every = {n: 50.0 for names in metrics.MMEB_CATEGORIES.values() for n in names}
    assert metrics.mmeb_coverage(every)["Overall"] == (36, 36)
    assert metrics.mmeb_coverage({**every, "MyOwnSet": 1.0})["Overall"] == (37, 37)


# ------------------------------------------------------------------------------------ not finite
def test_vectors_that_are_not_finite_are_never_scored_or_served_from_the_cache(tmp_path, encoder):
    with pytest.raises(ValueError, match="not finite"):
        metrics.two_way(np.full((2, 4), np.nan), np.eye(2, 4), [0, 1])
    with pytest.raises(ValueError, match="not finite"):
        metrics.mmeb_correct(np.full(4, np.nan), np.eye(3, 4))
    with pytest.raises(ValueError, match="not finite"):
        metrics.covr(np.full((2, 2), np.nan), ["a", "b"], ["c", "d"])

    items = [{"text": f"caption {i}"} for i in range(5)]
    cache = EmbeddingCache(tmp_path, encoder.settings, chunk=3)
    clean = cache.embed(items, encoder.encode)
    (chunk,) = [p for p in tmp_path.glob("*/chunk-*.npy") if len(np.load(p)) == 3]
    vecs = np.load(chunk)
    vecs[1, 0] = np.nan  # a damaged cache file that keeps its shape
    np.save(chunk, vecs)
    again = EmbeddingCache(tmp_path, encoder.settings, chunk=3)
    with pytest.warns(RuntimeWarning, match="not finite"):
        out = again.embed(items, encoder.encode)
    assert again.encoded == 3 and np.isfinite(out).all()
    np.testing.assert_allclose(out, clean, atol=1e-6)

    with pytest.raises(ValueError, match="not finite"):  # nor is an encoder's NaN cached
        EmbeddingCache(tmp_path / "other", encoder.settings).embed(items, lambda b: np.full((len(b), 4), np.nan))
    assert not list((tmp_path / "other").glob("*/chunk-*.json"))
