"""Tiny copies of each benchmark in its official on-disk format, with the quirks users meet."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from corpora import write_clip, write_photo


def urban1k(data: Path, n: int = 6) -> Path:
    root = data / "Urban1k" / "Urban1k"  # the zip's extra top-level folder
    for i in range(1, n + 1):
        write_photo(root / "image" / f"{i}.jpg", seed=i, size=(80 + 8 * i, 60))
        (root / "caption").mkdir(parents=True, exist_ok=True)
        (root / "caption" / f"{i}.txt").write_text(f"  picture number {i} with stripes  \nsecond line ignored\n")
    (root / "caption" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / "image" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / "caption" / "notes.txt").write_text("not a numbered caption")
    return data


def carebench(data: Path) -> Path:
    root = data / "CaReBench"
    entries = []
    for i, rel in enumerate(["a.mp4", "sub/b.mp4", "sub/deeper/c.mp4", "d.mp4"]):
        write_clip(root / "videos" / rel, 12 + 4 * i, fps=8, seed=i)
        entries.append({
            "video": rel,
            "caption": f"clip {i} general" if i != 1 else [f"clip {i} general", f"clip {i} other general"],
            "spatial_caption": f"clip {i} spatial",
            "temporal_caption": f"clip {i} temporal",
            "events": [], "objects": [],
        })  # fmt: skip
    (root / "json").mkdir(parents=True)
    (root / "json" / "metadata.json").write_text(json.dumps(entries))
    (root / "data.config").write_text('{"a": 1,}')  # invalid JSON, as shipped: must not be read
    return data


def sharegpt4v(data: Path, n: int = 5) -> Path:
    records = []
    for i in range(n):
        rel = f"sam/images/sa_{1000 + i}.jpg"
        write_photo(data / rel, seed=i)
        talk = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": f"Image {i}.\nWith lines."}]
        records.append({"id": f"sa_{1000 + i}", "image": rel, "conversations": talk})
    (data / "share-captioner_coco_lcs_sam_1246k_1107.json").write_text(json.dumps(records))
    return data


def docci(data: Path) -> Path:
    lines = []
    for i, split in enumerate(["train", "test", "qual_dev", "test", "test", "qual_test", "test"]):
        name = f"{split}_{i:05d}.jpg"
        write_photo(data / "images" / name, seed=i)
        lines.append({"example_id": f"{split}_{i}", "split": split, "image_file": name,
                      "description": f"a {split} picture, number {i}"})  # fmt: skip
    (data / "docci_descriptions.jsonlines").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return data


def msrvtt(data: Path, n: int = 4) -> Path:
    rows = []
    for i in range(n):
        write_clip(data / "MSRVTT" / "videos" / "all" / f"video{7000 + i}.mp4", 10, fps=5, seed=i)
        rows.append({"key": f"ret{i}", "vid_key": f"msr{7000 + i}", "video_id": f"video{7000 + i}",
                     "sentence": f"a clip of moving bars number {i}"})  # fmt: skip
    with open(data / "MSRVTT_JSFUSION_test.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["key", "vid_key", "video_id", "sentence"])
        writer.writeheader()
        writer.writerows(rows)
    return data


def webvid_covr(data: Path) -> Path:
    videos = data / "datasets" / "WebVid" / "8M" / "train"
    ids = ["1001/11", "1001/12", "1002/21", "1002/22", "1003/31"]
    for i, vid in enumerate(ids):
        write_clip(videos / f"{vid}.mp4", 10, fps=5, seed=i)
    rows = [  # (pth1 reference, pth2 target); row 3's reference is row 1's target
        ("1001/11", "1001/12", "make it red"),
        ("1002/21", "1002/22", "add a sun"),
        ("1001/12", "1003/31", "zoom out"),
        ("1001/11", "1001/12", "duplicate target: ignored"),
    ]
    (data / "annotation" / "webvid-covr").mkdir(parents=True)
    with open(data / "annotation" / "webvid-covr" / "webvid8m-covr_test.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["pth1", "pth2", "edit", "txt1", "txt2", "scores", "extra_column"])
        for p1, p2, edit in rows:
            writer.writerow([p1, p2, edit, "caption one", "caption two", "[0.5]", "x"])
    return data


def mmeb(data: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = data / "MMEB-eval"
    for i in range(4):
        write_photo(root / "eval_images" / "ImageNet-1K" / f"q{i}.jpg", seed=i)
        write_photo(root / "eval_images" / "CIRR" / f"t{i}.jpg", seed=10 + i)
    classification = {
        "qry_text": [f"<|image_1|>\nRepresent the given image for classification {i}" for i in range(4)],
        "qry_img_path": [f"ImageNet-1K/q{i}.jpg" for i in range(4)],
        "tgt_text": [["goldfish", "tabby cat", "tractor"]] * 4,
        "tgt_img_path": [["", "", ""]] * 4,
    }
    retrieval = {
        "qry_text": [f"Find an image that matches: picture {i}" for i in range(3)],
        "qry_img_path": ["", "", ""],
        "tgt_text": [["<|image_1|>\nRepresent the given image.", "<|image_1|>\nRepresent the given image."]] * 3,
        "tgt_img_path": [[f"CIRR/t{i}.jpg", f"CIRR/t{(i + 1) % 4}.jpg"] for i in range(3)],
    }
    for name, table in (("ImageNet-1K", classification), ("CIRR", retrieval)):
        (root / name).mkdir(parents=True)
        pq.write_table(pa.table(table), root / name / "test-00000-of-00001.parquet")
    return data
