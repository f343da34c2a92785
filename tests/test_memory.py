"""Ingest's memory bound, measured: the bytes a process holds while it decodes large inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from unite_search.memory import image_cost, prepared_bytes, video_cost
from unite_search.settings import EncoderSettings

MIB = 1 << 20

# Runs in its own process so that its peak resident memory (VmHWM, reset through clear_refs) is
# ingest's alone: one ingest under a budget, one with a budget so large it bounds nothing. glibc is
# told to map every allocation above 128 KiB on its own (MALLOC_MMAP_THRESHOLD_), so freed buffers
# leave the resident set at once and the peak measures bytes held, not bytes the allocator kept.
MEASURE = """
import json, shutil, sys
from unite_search import Encoder
from unite_search.ingestion import ingest

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))

model, corpus, work, budget = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
encoder = Encoder.load(model, device="cpu", workers=3)
ingest(f"{work}/warm", f"{work}/warm-index", encoder=encoder, workers=3)  # one-time set-up of every stage
out = {}
for name, limit in (("bounded", budget), ("unbounded", 1 << 40)):
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets the peak to the current resident size
    base = status("VmRSS:")
    report = ingest(corpus, f"{work}/{name}", encoder=encoder, workers=3, memory_bytes=limit)
    out[name] = {"growth": status("VmHWM:") - base, "peak": report.memory_peak, "status": report.status}
print(json.dumps(out))
"""


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_peak(), reason="needs Linux clear_refs")
def test_decoded_inputs_stay_within_the_memory_budget(tmp_path, tiny_dir):
    """Four 6000x6000 PNGs (under 1 MB each on disk, ~110 MB decoded) with 3 decode workers."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    Image.new("RGB", (640, 480), (200, 120, 40)).save((tmp_path / "warm").mkdir() or tmp_path / "warm/small.png")
    side = 6000
    for i in range(4):
        img = np.empty((side, side, 3), np.uint8)
        img[:] = (np.arange(side) * (i + 1) // 40 % 256).astype(np.uint8)[None, :, None]
        img[:, :, 1] = (np.arange(side) // 50 % 256).astype(np.uint8)[:, None]
        Image.fromarray(img).save(corpus / f"big{i}.png", compress_level=1)
    budget = 400 * MIB
    assert image_cost(side, side, EncoderSettings()) <= budget  # so the budget admits one at a time
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tiny_dir), str(corpus), str(tmp_path), str(budget)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "LANCEDB_LOG": "error", "MALLOC_MMAP_THRESHOLD_": "131072"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    bounded, unbounded = got["bounded"], got["unbounded"]
    assert bounded["status"] == unbounded["status"] == "ok"
    assert bounded["peak"] <= budget  # what the pipeline admitted
    # what the process really held: the budget, plus the model's forward and LanceDB's buffers
    assert bounded["growth"] <= budget + 96 * MIB, got
    # the same ingest without a bound holds several decoded images at once: the budget is what bounds it
    assert unbounded["growth"] >= 1.5 * bounded["growth"], got


def test_predictions_cover_the_prepared_patches():
    s = EncoderSettings()
    assert prepared_bytes(448, 448, 1) == 2 * 448 * 448 * 3 * 4  # a still fills both temporal slots
    assert prepared_bytes(280, 504, 4) == 4 * 280 * 504 * 3 * 4
    assert image_cost(12000, 12000, s) > 2 * 12000 * 12000 * 3  # the decode dominates a huge image
    assert image_cost(640, 480, s) < image_cost(1280, 960, s)
    assert video_cost(640, 360, 32, s) > video_cost(640, 360, 8, s)
    assert image_cost(100000, 100, s) == 2 * 100000 * 100 * 4  # refused after decoding: the decode alone
    # an odd count is read as the even one above it (two frames a temporal patch): predicted as that
    assert video_cost(640, 360, 3, s) == video_cost(640, 360, 4, s) > video_cost(640, 360, 2, s)
