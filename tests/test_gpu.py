"""The CUDA path of the encoder (bf16, sdpa or flash-attention 2); skipped where no GPU is present."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture(scope="module")
def gpu_items(media):
    return [
        {"text": "a short text"},
        {"text": "a much longer text that makes the other rows of the batch carry padding " * 4},
        {"image": media["image"]},
        {"video": media["video"], "text": "at night"},
        {"image": media["image2"], "text": "composed"},
    ]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_matches_cpu_and_is_batch_invariant(tiny_dir, encoder, gpu_items, dtype):
    from unite_search import Encoder

    gpu = Encoder.load(tiny_dir, device="cuda", dtype=dtype)
    assert gpu.device.type == "cuda"
    batched = gpu.encode(gpu_items, token_budget=10**6)
    singles = np.stack([gpu.encode([it])[0] for it in gpu_items])
    cpu = encoder.encode(gpu_items)
    tol = 1e-4 if dtype == "float32" else 3e-2  # bf16 keeps 8 bits of mantissa
    assert np.abs(batched - singles).max() <= tol
    assert np.abs(batched - cpu).max() <= tol


def test_gpu_ingest_matches_cpu(tiny_dir, encoder, tmp_path):
    """Ingest on CUDA stores the same rows and vectors as on the CPU (the example corpus, every kind)."""
    from pathlib import Path

    from unite_search import Encoder, ingest
    from unite_search.store import IndexStore

    corpus = Path(__file__).resolve().parents[1] / "examples" / "corpus"
    gpu = Encoder.load(tiny_dir, device="cuda", dtype="float32")
    tables = {}
    for name, enc in (("cpu", encoder), ("gpu", gpu)):
        report = ingest(corpus, tmp_path / name, encoder=enc)
        assert report.status == "ok", report.summary()
        store = IndexStore(tmp_path / name)
        tables[name] = {
            (shard, row["id"]): np.asarray(row["vector"])
            for shard in store.require_manifest()["shards"]
            for row in store.read_rows(shard, ["id", "vector"]).to_pylist()
        }
    assert sorted(tables["cpu"]) == sorted(tables["gpu"]) and len(tables["cpu"]) == 7
    # cuDNN runs float32 convolutions (the vision patch embedding) in TF32 by default: 1.1e-4 was
    # measured on an H100 for this corpus
    assert max(np.abs(tables["cpu"][k] - tables["gpu"][k]).max() for k in tables["cpu"]) <= 5e-4


SWITCHES = ["none", "vision_runs", "prefix_cache", "pooled_only", "overlap", "compile", "processes"]
SWITCHES.append(",".join(SWITCHES[1:]))  # all of them


@pytest.mark.parametrize("switches", SWITCHES)
def test_each_speed_switch_keeps_gpu_bf16_vectors_faithful_and_batch_invariant(tiny_dir, encoder, gpu_items, switches):
    """Issue 17's levers change speed, not vectors: bf16 on CUDA against CPU float32, batched against one
    at a time, within the tolerance above."""
    from unite_search import Encoder
    from unite_search.speed import RUNS_ATTENTION, Speed

    gpu = Encoder.load(tiny_dir, device="cuda", dtype="bfloat16", speed=Speed.parse(switches))
    batched = gpu.encode(gpu_items * 3, token_budget=10**6)[: len(gpu_items)]
    singles = np.stack([gpu.encode([it])[0] for it in gpu_items])
    cpu = encoder.encode(gpu_items)
    assert np.abs(batched - singles).max() <= 3e-2
    assert np.abs(batched - cpu).max() <= 3e-2
    if gpu._model.language_model.config._attn_implementation == "sdpa":  # flash-attention 2 is left alone
        assert (gpu._model.visual.config._attn_implementation == RUNS_ATTENTION) == ("vision_runs" in switches)
