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
