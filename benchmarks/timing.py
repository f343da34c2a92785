"""Shared timing for the benchmarks: warm-up, alternating arms, repeats, median and range, machine and load.

The project's rule for every benchmark comparison: warm both arms up on the shapes they are timed on,
alternate the arms (A B, then B A, ...), repeat at least 3 times, report the median and the range, and
record the machine and its load. One sequential timing per arm on a shared machine is not a figure:
whatever else runs there lands on one arm only.

    from timing import compare, ratio, machine, load

    res = compare({"ours": lambda: ours(items), "plain": lambda: plain(items)}, repeats=5, sync=sync)
    res["ours"]["median"], res["ours"]["min"], res["ours"]["max"]   # seconds per call
    ratio(res, "ours", "plain")   # {"median": plain/ours medians, "min"/"max": of the per-round ratios}

``python benchmarks/timing.py`` runs a self-check (two sleeps of 10 and 20 ms).

Nothing heavy is imported at module level: ``machine()`` looks torch up only when called.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model, core counts, Python, torch and its threads, GPU."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch  # only when asked, and only if installed
        except ImportError:
            torch = None
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    return info


def load() -> tuple[float, float, float]:
    """The 1, 5 and 15-minute load averages (``os.getloadavg()``); NaNs where the OS has none."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return (float("nan"),) * 3
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of some values."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def compare(
    arms: Mapping[str, Callable[[], Any]],
    repeats: int = 5,
    warmup: int = 1,
    sync: Callable[[], None] = lambda: None,
    keep_going: bool = False,
) -> dict[str, Any]:
    """Time every arm ``repeats`` times, alternating their order, after ``warmup`` untimed calls of each.

    Warm-up calls each arm ``warmup`` times first (arm by arm), so every arm has met the shapes it will
    be timed on (kernel choice, allocator growth, lazily opened files). Then round ``r`` runs the arms
    in the given order for even ``r`` and in reverse for odd ``r`` (A B, B A, A B, ...), so slow drift
    in the machine's load lands on every arm alike. Each call is timed with ``time.perf_counter()``
    between two ``sync()`` calls (``torch.cuda.synchronize`` on a GPU).

    Returns ``{arm: {"times", "median", "min", "max", "warmup_times"}, "order": [...], "repeats": n,
    "warmup": w}``, times in seconds; ``times[r]`` is the arm's call in round ``r``; ``order`` lists
    every timed call's arm in the order run (warm-up calls not included), to check the alternation.

    ``keep_going``: an arm that raises is dropped from the rounds that follow and from the result, and
    its error is kept under ``"failed"`` (``{arm: "Type: message"}``), so one arm that cannot run (a
    compile error, memory) does not cost the others' figures on a rare machine. Otherwise it raises.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, not {repeats}")
    names = list(arms)
    if not names:
        raise ValueError("compare() needs at least one arm")

    def timed(name: str) -> float:
        sync()
        t = time.perf_counter()
        arms[name]()
        sync()
        return time.perf_counter() - t

    failed: dict[str, str] = {}

    def attempt(name: str) -> float | None:
        try:
            return timed(name)
        except Exception as exc:  # kept, named, and the arm dropped
            if not keep_going:
                raise
            failed[name] = f"{type(exc).__name__}: {exc}"[:2000]
            print(f"arm {name!r} failed and is dropped: {failed[name][:300]}", flush=True)
            return None

    warm: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        for _ in range(warmup):
            if name not in failed and (t := attempt(name)) is not None:
                warm[name].append(t)
    times: dict[str, list[float]] = {name: [] for name in names}
    order: list[str] = []
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            if name not in failed and (t := attempt(name)) is not None:
                times[name].append(t)
                order.append(name)
    kept = [name for name in names if name not in failed]
    out: dict[str, Any] = {
        name: {"times": times[name], **summary(times[name]), "warmup_times": warm[name]} for name in kept
    }
    out.update(order=[name for name in order if name in kept], repeats=repeats, warmup=warmup)
    if keep_going:
        out["failed"] = failed
    return out


def ratio(result: Mapping[str, Any], a: str, b: str) -> dict[str, float]:
    """How many times slower ``b`` is than ``a``: the ratio of their medians, and the range of the
    per-round ratios ``b_r / a_r`` (each pair timed in the same round, back to back)."""
    per_round = [tb / ta for ta, tb in zip(result[a]["times"], result[b]["times"], strict=True)]
    return {"median": result[b]["median"] / result[a]["median"], "min": min(per_round), "max": max(per_round)}


def per_round(result: Mapping[str, Any], fn: Callable[..., float], *arms: str) -> dict[str, float]:
    """Median and range over rounds of ``fn(t_arm1_r, t_arm2_r, ...)``, e.g. a difference in ms."""
    values = [fn(*ts) for ts in zip(*(result[a]["times"] for a in arms), strict=True)]
    return {**summary(values), "values": values}


def span(stats: Mapping[str, float], scale: float = 1.0, fmt: str = ".1f") -> str:
    """``"median (min..max)"`` of a summary dict, each multiplied by ``scale``."""
    lo, hi = stats["min"] * scale, stats["max"] * scale
    return f"{stats['median'] * scale:{fmt}} ({lo:{fmt}}..{hi:{fmt}})"


def rate(result_arm: Mapping[str, Any], items: int) -> dict[str, float]:
    """Items per second of one arm's timed calls: median and range (min from the slowest call)."""
    return summary([items / t for t in result_arm["times"]])


def scratch(prefix: str) -> Path:
    """A temporary folder removed when the process exits (models, tokenizers and media a run writes)."""
    import atexit
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def repeats_arg(value: str) -> int:
    """An argparse ``type=`` for ``--repeats``: an int, at least 3 (the project's rule)."""
    import argparse

    n = int(value)
    if n < 3:
        raise argparse.ArgumentTypeError(f"at least 3 repeats (the project's rule), not {n}")
    return n


def _self_check() -> None:
    res = compare({"10ms": lambda: time.sleep(0.010), "20ms": lambda: time.sleep(0.020)}, repeats=4)
    r = ratio(res, "10ms", "20ms")
    print(f"machine {machine()}")
    print(f"load {load()}")
    print(f"order {res['order']}")
    for name in ("10ms", "20ms"):
        print(f"{name:>5}: {span(res[name], 1e3, '.2f')} ms  times {[round(t * 1e3, 2) for t in res[name]['times']]}")
    print(f"ratio 20ms/10ms: {span(r, 1.0, '.2f')}")
    assert res["order"] == ["10ms", "20ms", "20ms", "10ms", "10ms", "20ms", "20ms", "10ms"], res["order"]
    assert all(len(res[n]["times"]) == 4 and len(res[n]["warmup_times"]) == 1 for n in ("10ms", "20ms"))
    assert 1.5 < r["median"] < 2.5, r

    def fails_in_round_two(calls=[]):  # noqa: B006  counts its calls
        calls.append(1)
        if len(calls) == 3:  # warm-up, round 1, then this
            raise RuntimeError("out of memory")

    res = compare({"ok": lambda: None, "bad": fails_in_round_two}, repeats=3, keep_going=True)
    assert res["failed"] == {"bad": "RuntimeError: out of memory"} and "bad" not in res, res
    assert len(res["ok"]["times"]) == 3 and res["order"] == ["ok", "ok", "ok"], res
    print("self-check ok")


if __name__ == "__main__":
    _self_check()
