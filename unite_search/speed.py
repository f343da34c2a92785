"""How the encoder runs, never what it computes: switches that change speed, not vectors.

Each switch is measured beside the others and the plain loop by ``benchmarks/encode_throughput.py
--speeds`` and is on by default only where a recorded run showed it pays (``benchmarks/RESULTS.md``;
on the CPU so far: ``vision_runs``, ``prefix_cache`` and ``pooled_only``; the GPU run is prepared in
``benchmarks/gpu_session.sh``).

``vision_runs``
    Qwen2-VL's vision tower attends within each image and each pair of video frames separately. Under
    sdpa, transformers runs one attention call per chunk and reads the chunk lengths back from the
    device in every layer (32 host-device round trips a batch on the 2B model). With this switch, the
    tower's attention is one call per run of consecutive chunks of equal length (a batch of same-size
    images is one run), with the lengths handed over from the host. Same arithmetic per chunk; on the
    CPU the vectors are bit-identical.
``prefix_cache``
    Every prompt begins with the same tokens (the system turn and the user turn's opening: 14 of a
    32-token text's ~59 with Qwen2's tokenizer). Their keys and values are computed once per weights
    and each batch runs only the rest, at positions after them. The same arithmetic per row; on the CPU
    the vectors agree with the full forward to about 1e-7. Not used where gradients are recorded, nor
    under flash-attention 2 (its path for a cache beside padding is untested here).
``pooled_only``
    UNITE keeps the last layer's output at each row's last token only. The decoder's last layer then
    computes its keys and values for every token, as it must, but its queries, attention output and
    MLP for that token alone (``unite_search.language``): one layer's worth of work a token less, the
    same arithmetic for the row that is kept (the vectors agree with the full forward to about 1e-7 on
    the CPU).
``overlap``
    The next forward batch's tensors are assembled on a thread while the current batch runs (on CUDA in
    pinned host memory, copied without blocking).
``compile``
    ``torch.compile`` with dynamic shapes of each decoder layer and each vision block's MLP (the vision
    attention stays as above: its chunk runs are Python values, which would recompile per batch). The
    layers of a kind share one compiled graph; the first batches pay the compile. In float32 the vectors
    agree with the plain forward to about 5e-7; in bfloat16, fused kernels round their intermediates
    otherwise even with inductor's ``emulate_precision_casts`` (set here): a vector moves by up to about
    4e-3, as much as bf16 does against float32, so :attr:`Encoder.numerics` records the switch.
``processes``
    Image and video files are decoded and preprocessed in worker processes (``decodeproc.py``), one
    per decode thread, so that decoding does not take the interpreter lock from the thread that runs
    the model. The same functions run there: the pixels are the same bits. Inputs given in memory
    (PIL images, arrays, frame lists) are still prepared on the threads.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

from .errors import ConfigError

RUNS_ATTENTION = "unite_runs_flash_varlen"  # "flash" in the name: the tower hands it the chunk boundaries


@dataclass(frozen=True)
class Speed:
    """Speed switches of an :class:`~unite_search.encoder.Encoder` (see the module docstring)."""

    vision_runs: bool = True
    prefix_cache: bool = True
    pooled_only: bool = True
    overlap: bool = False
    compile: bool = False
    processes: bool = False

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)

    @classmethod
    def parse(cls, spec: str) -> Speed:
        """``"vision_runs,compile"``: those on, the others off; ``"none"``: all off; ``"default"``."""
        spec = spec.strip()
        if spec == "default":
            return cls()
        names = {f.name for f in fields(cls)}
        on = set() if spec in ("", "none") else {s.strip() for s in spec.split(",")}
        unknown = on - names
        if unknown:
            raise ConfigError(f"unknown speed switch {', '.join(sorted(unknown))}; known: {', '.join(sorted(names))}")
        return cls(**{n: n in on for n in names})


def chunk_runs(grids: Sequence[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """(length, count) runs of the vision tower's attention chunks, in order.

    The tower attends within each temporal patch of each input: ``t`` chunks of ``h * w`` patches.

    >>> chunk_runs([(1, 32, 32), (1, 32, 32), (4, 24, 24), (1, 20, 30)])
    [(1024, 2), (576, 4), (600, 1)]
    """
    return _merged((h * w, t) for t, h, w in grids)


def _runs_from_boundaries(cu_seqlens) -> list[tuple[int, int]]:
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()  # one read-back: only when no runs were given
    return _merged((length, 1) for length in lengths)


def _merged(pieces) -> list[tuple[int, int]]:
    """(length, count) pieces with consecutive equal lengths merged into one run."""
    runs: list[tuple[int, int]] = []
    for length, count in pieces:
        if runs and runs[-1][0] == length:
            runs[-1] = (length, runs[-1][1] + count)
        else:
            runs.append((length, count))
    return runs


def runs_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Attention within each chunk of a packed sequence: one sdpa call per run of equal-length chunks.

    ``query``/``key``/``value``: (1, heads, tokens, head_dim), the chunks back to back. Returns
    (1, tokens, heads, head_dim) as transformers' attention functions do.
    """
    import torch

    runs = kwargs.get("unite_runs")
    if runs is None:
        runs = _runs_from_boundaries(kwargs["cu_seq_lens_q"])
    heads, dim = query.shape[1], query.shape[-1]
    outs, start = [], 0
    for length, count in runs:
        stop = start + length * count

        def chunks(t, start=start, stop=stop, length=length, count=count):
            return t[0, :, start:stop].reshape(t.shape[1], count, length, t.shape[-1]).transpose(0, 1)

        out = torch.nn.functional.scaled_dot_product_attention(
            chunks(query), chunks(key), chunks(value), dropout_p=dropout if module.training else 0.0, scale=scaling
        )  # (count, heads, length, dim)
        outs.append(out.transpose(1, 2).reshape(length * count, heads, dim))
        start = stop
    if start != query.shape[2]:
        raise ValueError(f"chunk runs cover {start} of {query.shape[2]} vision tokens")
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out.unsqueeze(0), None


_registered = False


def set_runs_attention(visual, on: bool) -> bool:
    """Route the vision tower's attention through :func:`runs_attention` (``on``) or back to sdpa.

    Only a tower under sdpa is switched (flash-attention and eager are left as they are). Returns
    whether the tower now uses it."""
    global _registered
    config = visual.config
    current = config._attn_implementation
    if current not in ("sdpa", RUNS_ATTENTION):
        return False
    if on and not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(RUNS_ATTENTION, runs_attention)
        _registered = True
    config._attn_implementation = RUNS_ATTENTION if on else "sdpa"
    return on


def compiled_parts(model) -> list:
    """The modules :func:`set_compiled` compiles: each decoder layer, each vision block's MLP."""
    return [*model.language_model.layers, *(block.mlp for block in model.visual.blocks)]


def _emulate_precision_casts() -> None:
    """Compiled half-precision code rounds each intermediate to the dtype as eager code does (where this
    torch has the setting): without it, bf16 vectors moved by up to 1e-2."""
    import torch._inductor.config as inductor

    if hasattr(inductor, "emulate_precision_casts"):
        inductor.emulate_precision_casts = True


def set_compiled(model, on: bool) -> None:
    """``torch.compile`` the :func:`compiled_parts` in place (``on``), or drop their compiled code.

    Regional compilation: the parts of a kind share one compiled graph, so compiling is quick."""
    for part in compiled_parts(model):
        if on and part._compiled_call_impl is None:
            _emulate_precision_casts()
            part.compile(dynamic=True)
        elif not on:
            part._compiled_call_impl = None


def weights_version(module) -> int:
    """A number that changes whenever a parameter of ``module`` is changed in place (an optimiser step,
    ``load_state_dict``); parameters made under ``torch.inference_mode`` count none (they keep no count)."""
    total = 0
    for p in module.parameters():
        with contextlib.suppress(RuntimeError):  # an inference tensor
            total += p._version
    return total


def cache_tested(language_model) -> bool:
    """Whether ``prefix_cache`` may run on this decoder: under sdpa and eager, the paths tested here."""
    return language_model.config._attn_implementation in ("sdpa", "eager")


def cache_argument(language_model) -> str:
    """The name the decoder's forward takes a key/value cache by (``cache`` from transformers 5.2x)."""
    return _cache_argument_of(type(language_model))


@functools.cache
def _cache_argument_of(cls) -> str:  # read once per class, not once per batch
    import inspect

    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"
