"""Where the model runs and how its weights are held: the device, dtype and attention implementation
an :class:`~unite_search.encoder.Encoder` is asked for, checked against this machine, and the weights,
loaded once, on first use or in the background."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .errors import ConfigError, DeviceError

DEVICE_HELP = "use auto, cpu, cuda, cuda:N (the N-th GPU) or mps"
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")


def resolve_device(device):
    """``device`` as a torch device that this machine has; :class:`DeviceError` (one line) otherwise."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"unknown device {device!r}: {DEVICE_HELP}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(f"device {str(device)!r} is not available: {why}; use cpu or auto instead")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"device {str(device)!r} is not available: this machine has {count} CUDA GPU(s), "
                              f"numbered from 0")  # fmt: skip
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"device {str(device)!r} is not available on this machine; use cpu or auto instead")
    elif dev.type != "cpu":
        raise DeviceError(f"device type {dev.type!r} is not supported: {DEVICE_HELP}")
    return dev


def resolve_dtype(dtype, device):
    """``dtype`` (auto, a name or a torch dtype) as a torch dtype for ``device``; :class:`ConfigError` otherwise."""
    import torch

    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, str):
        try:
            return {
                "float32": torch.float32,
                "fp32": torch.float32,
                "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16,
                "float16": torch.float16,
                "fp16": torch.float16,
            }[dtype]
        except KeyError:
            raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16, not {dtype!r}") from None
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
    return dtype


def nonfinite_rows(vecs) -> list[int]:
    """The rows of a forward's ``(n, dim)`` output holding a value that is not finite (NaN or infinity)."""
    import numpy as np

    return np.flatnonzero(~np.isfinite(vecs).all(axis=1)).tolist()


def nonfinite_reason(dtype) -> str:
    """Why a forward gives a vector that is not finite, and what to do, in words."""
    if str(dtype).removeprefix("torch.") == "float16":
        return "the model's output is not finite (float16 overflowed on this input): use dtype bfloat16 or float32"
    return f"the model's output is not finite under {str(dtype).removeprefix('torch.')} (damaged weights?)"


def resolve_attn(attn: str, device, dtype) -> str:
    """The attention implementation ``attn`` names; ``auto``: flash-attention 2 on CUDA in half precision
    when it is installed, else sdpa."""
    import torch

    if attn not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"attn must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, not {attn!r}")
    if attn != "auto":
        return attn
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return "sdpa"
        return "flash_attention_2"
    return "sdpa"


def resolve_options(device="auto", dtype="auto", attn="auto"):
    """(torch device, torch dtype, attention implementation) for :meth:`Encoder.load`'s arguments;
    :class:`DeviceError` or :class:`ConfigError` for a value that cannot work here."""
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    return dev, torch_dtype, resolve_attn(attn, dev, torch_dtype)


class Weights:
    """The model, or how to load it: loaded once, on first use or on :meth:`start` (in the background),
    whichever comes first; every :class:`Encoder` sharing the weights (``with_settings``) shares this."""

    def __init__(self, model=None, loader: Callable[[], Any] | None = None):
        self._model = model
        self._loader = loader
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.seconds = 0.0  # how long the load took (0 for weights given loaded)
        self.prefix: tuple[Any, Any] | None = None  # (weights' state, keys and values of the prompt prefix)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def start(self) -> None:
        """Begin loading on a thread of its own, so that decoding can run meanwhile."""
        with self._lock:
            if self._model is not None or self._thread is not None or self._error is not None:
                return  # loaded, loading, or failed: the next get() says why
            self._thread = threading.Thread(target=self._load, name="unite-load", daemon=True)
            self._thread.start()

    def _load(self) -> None:
        import time

        try:
            t = time.perf_counter()
            self._model = self._loader()
            self.seconds = time.perf_counter() - t
        except BaseException as exc:  # noqa: BLE001  raised in the thread that needs the weights
            self._error = exc

    def get(self):
        if self._model is not None:
            return self._model
        with self._lock:
            thread = self._thread
            if thread is None and self._model is None and self._error is None:
                self._load()  # here, holding the lock: other threads asking meanwhile wait for it
        if thread is not None:
            thread.join()
        if self._model is None and self._error is not None:
            raise self._error.with_traceback(None)  # each caller's own traceback, not one grown by every raise
        return self._model
