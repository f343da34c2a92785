"""Server under load: latency, QPS, micro-batching and memory of ``unite-search serve``, over real HTTP.

    python benchmarks/serve_load.py                          # tiny random model, a few minutes on 2 cores
    python benchmarks/serve_load.py --requests 96 --soak 2000 --json out.json   # quicker
    python benchmarks/serve_load.py --index DIR              # an index at DIR (built there if DIR holds none)

A small index is built with a tiny random Qwen2-VL (photos, clips and texts in a temporary folder), or
reused with ``--index``. The real server, ``python -m unite_search.cli serve INDEX``, runs in a
subprocess on a free loopback port; this process is the load generator: 1, 8 and 32 client threads
(``--levels``), each with its own keep-alive ``http.client`` connection, for three kinds of query:

- text: ``{"text": ..., "k": 10}``, every request a different text;
- upload: multipart with a small JPEG (``image``) and ``k``, cycling over 8 different photos;
- like: ``{"like": <row id>, "k": 10}``, ids taken from a first search (no encoder work).

Each (level, kind) sends ``--requests`` requests in all, split evenly over the clients, which start
together. The sequence of levels is run ``--rounds`` times (every other round in reverse order, the
kinds within a level too), so
one noisy moment on a shared machine does not decide a figure: QPS is given as the median over the
rounds with its range, latency percentiles over every request of every round. Encoder batches per
request and queries per forward pass come from ``/metrics`` read before and after each phase; server
CPU time from ``/proc/<pid>/stat``. Any non-200 answer or client exception counts as an error, and
the script exits with status 1 if there was one.

Then a soak: ``--soak`` requests (text and like, alternating; ``--soak-kinds``) from 32 clients, with
the server's resident set (``VmRSS`` in ``/proc/<pid>/status``) read before, during (every second) and after.

Targets (issue: serve under load, tiny model): QPS with 32 clients >= 3x QPS with 1 client for text
queries; no error; no unbounded memory growth in the soak. Client and server share the machine's
cores, so on a small machine the client's own CPU use is part of what is measured.

Diagnostics: ``--server-env NAME=VALUE`` (e.g. ``OMP_NUM_THREADS=1``) and ``--server-switch-interval S``
(the same CLI started with ``sys.setswitchinterval(S)``) change the server process only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from timing import repeats_arg  # noqa: E402

KINDS = ("text", "upload", "like")
SUBJECTS = [
    "a red fox", "an old lighthouse", "two children", "a sailing boat", "a mountain village", "a black cat",
    "a city tram", "a wheat field", "a jazz band", "a stone bridge", "a desert road", "a snowy forest",
]  # fmt: skip
SCENES = [
    "at dawn", "in the rain", "under neon light", "seen from above", "at night", "in autumn", "in a storm",
    "on a summer afternoon", "in black and white", "through a window",
]  # fmt: skip
K = 10


# ------------------------------------------------------------------------------------------ the index
def build_index(index: Path, model: Path, corpus: Path, photos: int, clips: int, texts: int) -> dict:
    """A tiny random model at ``model``, a generated corpus at ``corpus``, ingested into ``index``."""
    import av  # noqa: F401  PyAV before decord (see tests/conftest.py)
    from corpora import write_clip, write_photo

    from unite_search import Encoder
    from unite_search.ingestion import ingest
    from unite_search.testing import tiny_model

    t = time.perf_counter()
    tiny_model(model, seed=0)
    for i in range(photos):
        write_photo(corpus / "photos" / f"p{i:03d}.jpg", seed=i, size=(96 + 16 * (i % 8), 72 + 8 * (i % 5)))
    for i in range(clips):
        write_clip(corpus / "clips" / f"c{i:02d}.mp4", 16, fps=8, seed=i)
    for i in range(texts):
        words = " ".join(SUBJECTS[(i + j) % len(SUBJECTS)] for j in range(3))
        (corpus / "notes").mkdir(parents=True, exist_ok=True)
        (corpus / "notes" / f"n{i:03d}.txt").write_text(f"Note {i}: {words}, {SCENES[i % len(SCENES)]}.\n")
    report = ingest(corpus, index, encoder=Encoder.load(model, device="cpu"))
    if report.status != "ok":
        raise SystemExit(f"ingest did not finish cleanly:\n{report.summary()}")
    return {"photos": photos, "clips": clips, "texts": texts, "build_s": round(time.perf_counter() - t, 1)}


# ----------------------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m unite_search.cli serve`` in a subprocess, its log in a file."""

    def __init__(
        self, index: Path, device: str, window_ms: float, log: Path, extra_env: dict[str, str], switch: float | None
    ):
        self.port = free_port()
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115  closed in stop()
        launch = ["-m", "unite_search.cli"]
        if switch is not None:  # diagnostic: the same CLI, with another GIL switch interval
            code = f"import sys; sys.setswitchinterval({switch!r}); from unite_search.cli import main; main()"
            launch = ["-c", code]
        cmd = [sys.executable, *launch, "serve", str(index), "--port", str(self.port),
               "--device", device, "--batch-window-ms", str(window_ms)]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "UNITE_SEARCH_TOKEN"} | extra_env
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 180) -> float:
        start = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return time.monotonic() - start
            except OSError:
                pass
            if time.monotonic() - start > timeout:
                raise SystemExit(f"the server did not answer /healthz in {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, n: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def rss_mb(self) -> float:
        return _status_kb(self.pid, "VmRSS") / 1024

    def hwm_mb(self) -> float:
        return _status_kb(self.pid, "VmHWM") / 1024

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def threads(self) -> int:
        return _status_kb(self.pid, "Threads")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def metrics(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for name in ("unite_search_encoder_batches_total", "unite_search_encoder_batch_size_sum",
                 "unite_search_encoder_seconds_total"):  # fmt: skip
        m = re.search(rf"^{name} ([0-9.eE+-]+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


# ---------------------------------------------------------------------------------------- the clients
class Requests:
    """The request bodies of each kind, handed out in turn (thread-safe)."""

    def __init__(self, like_ids: list[str], images: list[bytes]):
        self._lock = threading.Lock()
        self._n = 0
        self.like_ids = like_ids
        self.uploads = [_multipart(img, i) for i, img in enumerate(images)]

    def next(self, kind: str) -> tuple[bytes, str]:
        with self._lock:
            i = self._n
            self._n += 1
        if kind == "text":
            text = f"{SUBJECTS[i % len(SUBJECTS)]} {SCENES[(i // len(SUBJECTS)) % len(SCENES)]}, query {i}"
            return json.dumps({"text": text, "k": K}).encode(), "application/json"
        if kind == "like":
            return json.dumps({"like": self.like_ids[i % len(self.like_ids)], "k": K}).encode(), "application/json"
        body, boundary = self.uploads[i % len(self.uploads)]
        return body, f"multipart/form-data; boundary={boundary}"


def _multipart(image: bytes, i: int) -> tuple[bytes, str]:
    boundary = f"----serveload{i:04d}x7d1f"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n{K}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q{i}.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), boundary


def run_clients(port: int, n_clients: int, total: int, kinds: list[str], requests: Requests) -> dict:
    """``total`` requests from ``n_clients`` threads (each its own keep-alive connection), started together;
    request j of a client has kind ``kinds[j % len(kinds)]``. Latencies in seconds, errors, wall time."""
    shares = [total // n_clients + (1 if c < total % n_clients else 0) for c in range(n_clients)]
    latencies: list[list[float]] = [[] for _ in range(n_clients)]
    errors: list[list[str]] = [[] for _ in range(n_clients)]
    barrier = threading.Barrier(n_clients + 1)

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.connect()
        barrier.wait()
        for j in range(shares[c]):
            body, ctype = requests.next(kinds[j % len(kinds)])
            t = time.perf_counter()
            try:
                conn.request("POST", "/search", body, {"Content-Type": ctype})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200 or not data.startswith(b'{"hits":'):
                    errors[c].append(f"{resp.status}: {data[:200]!r}")
            except Exception as exc:  # noqa: BLE001  counted as an error, the connection reopened
                errors[c].append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                continue
            latencies[c].append(time.perf_counter() - t)
        conn.close()

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(n_clients)]
    for th in threads:
        th.start()
    barrier.wait()
    start = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    return {"latencies": [x for xs in latencies for x in xs], "errors": [e for es in errors for e in es],
            "wall_s": wall, "requests": total}  # fmt: skip


def phase(server: ServerProcess, n_clients: int, total: int, kinds: list[str], requests: Requests) -> dict:
    before, cpu0, own0 = metrics(server.port), server.cpu_s(), time.process_time()
    out = run_clients(server.port, n_clients, total, kinds, requests)
    cpu1, own1, after = server.cpu_s(), time.process_time(), metrics(server.port)
    batches = after["unite_search_encoder_batches_total"] - before["unite_search_encoder_batches_total"]
    encoded = after["unite_search_encoder_batch_size_sum"] - before["unite_search_encoder_batch_size_sum"]
    out.update(
        qps=total / out["wall_s"],
        batches=int(batches),
        encoded=int(encoded),
        server_cpu_s=cpu1 - cpu0,
        client_cpu_s=own1 - own0,
        rss_mb=round(server.rss_mb(), 1),
        encoder_s=after["unite_search_encoder_seconds_total"] - before["unite_search_encoder_seconds_total"],
    )
    return out


def pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    ms = np.asarray(values) * 1000
    return {f"p{p}_ms": round(float(np.percentile(ms, p)), 2) for p in (50, 95, 99)}


# --------------------------------------------------------------------------------------------- main
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--index",
        type=Path,
        help="serve this index; where DIR holds none, a tiny one is built there (its model in DIR-build)",
    )
    ap.add_argument("--requests", type=int, default=192, help="requests per level and kind in each round")
    ap.add_argument("--levels", default="1,8,32", help="concurrent clients, comma-separated")
    ap.add_argument("--rounds", type=repeats_arg, default=3, help="runs of the sequence of levels (alternating order)")
    ap.add_argument("--soak", type=int, default=10000, help="text/like requests from 32 clients for the RSS check")
    ap.add_argument("--soak-clients", type=int, default=32)
    ap.add_argument("--soak-kinds", default="text,like", help="query kinds of the soak, in turn (text, upload, like)")
    ap.add_argument("--photos", type=int, default=36)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--texts", type=int, default=24)
    ap.add_argument("--device", default="cpu", help="the server's --device")
    ap.add_argument("--batch-window-ms", type=float, default=5.0, help="the server's --batch-window-ms")
    ap.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the server process (e.g. OMP_NUM_THREADS=1); repeatable",
    )
    ap.add_argument(
        "--server-switch-interval",
        type=float,
        metavar="S",
        help="diagnostic: run the server with sys.setswitchinterval(S) (Python's default: 0.005)",
    )
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    server_env = dict(item.split("=", 1) for item in args.server_env if "=" in item)
    soak_kinds = [x.strip() for x in args.soak_kinds.split(",") if x.strip()]
    if not soak_kinds or set(soak_kinds) - set(KINDS):
        ap.error(f"--soak-kinds takes {', '.join(KINDS)}")
    if args.requests < max(levels):
        ap.error(f"--requests must be at least the largest level ({max(levels)})")

    import av  # noqa: F401  PyAV before decord
    from corpora import write_photo

    started = time.time()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="unite-serve-load-"))
    server = None
    try:
        built = None
        if args.index is not None and (args.index / "manifest.json").is_file():
            index = args.index
        else:
            index = args.index or work / "index"
            home = index.parent / f"{index.name}-build" if args.index else work
            built = build_index(index, home / "model", home / "corpus", args.photos, args.clips, args.texts)
            print(f"built {index}: {built['photos']} photos, {built['clips']} clips, {built['texts']} texts "
                  f"in {built['build_s']} s", flush=True)  # fmt: skip

        images = []
        for i in range(8):
            path = write_photo(work / "queries" / f"q{i}.jpg", seed=1000 + i, size=(160, 120))
            images.append(path.read_bytes())

        server = ServerProcess(
            index, args.device, args.batch_window_ms, work / "server.log", server_env, args.server_switch_interval
        )
        ready_s = server.wait_ready()
        print(f"server pid {server.pid} on port {server.port}, ready in {ready_s:.1f} s", flush=True)

        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/search", json.dumps({"text": "a photo", "k": 50}), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        first = json.loads(resp.read())
        conn.close()
        if resp.status != 200 or not first.get("hits"):
            raise SystemExit(f"the first search failed ({resp.status}): {first}")
        like_ids = [h["id"] for h in first["hits"]]
        requests = Requests(like_ids, images)

        for kind in KINDS:  # warm-up: lazily opened readers, first forward passes, allocator
            warm = run_clients(server.port, 4, 16, [kind], requests)
            if warm["errors"]:
                raise SystemExit(f"warm-up {kind} queries failed: {warm['errors'][:3]}")
        rss_start = server.rss_mb()
        print(f"{len(like_ids)} like= ids; server RSS after warm-up {rss_start:.1f} MB", flush=True)

        runs: dict[tuple[str, int], list[dict]] = {(kind, n): [] for kind in KINDS for n in levels}
        load_rounds = []
        for r in range(args.rounds):
            order = levels if r % 2 == 0 else levels[::-1]
            load_rounds.append(os.getloadavg())
            for n in order:
                for kind in KINDS if r % 2 == 0 else KINDS[::-1]:  # the kinds alternate too
                    out = phase(server, n, args.requests, [kind], requests)
                    runs[(kind, n)].append(out)
                    print(f"round {r + 1} {kind:<7} {n:>3} clients: {out['qps']:7.1f} QPS, p50 "
                          f"{pct(out['latencies'])['p50_ms']:7.1f} ms, {len(out['errors'])} errors, "
                          f"{out['batches']} batches / {out['encoded']} encoded", flush=True)  # fmt: skip

        rows = []
        for kind in KINDS:
            for n in levels:
                outs = runs[(kind, n)]
                qps = [o["qps"] for o in outs]
                n_req = sum(o["requests"] for o in outs)
                batches, encoded = sum(o["batches"] for o in outs), sum(o["encoded"] for o in outs)
                errors = [e for o in outs for e in o["errors"]]
                rows.append({
                    "kind": kind, "clients": n, "requests": n_req,
                    **pct([x for o in outs for x in o["latencies"]]),
                    "qps_median": round(statistics.median(qps), 1), "qps_min": round(min(qps), 1),
                    "qps_max": round(max(qps), 1), "qps_rounds": [round(q, 1) for q in qps],
                    "errors": len(errors), "error_samples": errors[:5],
                    "batches_per_request": round(batches / n_req, 3),
                    "queries_per_batch": round(encoded / batches, 2) if batches else None,
                    "server_cpu_ms_per_request": round(1000 * sum(o["server_cpu_s"] for o in outs) / n_req, 2),
                    "client_cpu_ms_per_request": round(1000 * sum(o["client_cpu_s"] for o in outs) / n_req, 2),
                    "encoder_ms_per_request": round(1000 * sum(o["encoder_s"] for o in outs) / n_req, 2),
                    "rss_after_mb": [o["rss_mb"] for o in outs],
                })  # fmt: skip

        text1 = [o["qps"] for o in runs[("text", min(levels))]]
        textn = [o["qps"] for o in runs[("text", max(levels))]]
        ratios = [b / a for a, b in zip(text1, textn, strict=True)]
        ratio = {"levels": [min(levels), max(levels)], "per_round": [round(x, 2) for x in ratios],
                 "median": round(statistics.median(ratios), 2),
                 "of_medians": round(statistics.median(textn) / statistics.median(text1), 2),
                 "target": 3.0}  # fmt: skip
        ratio["met"] = ratio["median"] >= ratio["target"]

        # soak: RSS before, during and after
        rss_before, hwm_before = server.rss_mb(), server.hwm_mb()
        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.wait(1.0):
                samples.append((round(time.monotonic() - t0, 1), round(server.rss_mb(), 1)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        print(f"soak: {args.soak} {'/'.join(soak_kinds)} requests from {args.soak_clients} clients ...", flush=True)
        soak = phase(server, args.soak_clients, args.soak, soak_kinds, requests) if args.soak else None
        stop.set()
        sampler.join()
        rss_after, hwm_after = server.rss_mb(), server.hwm_mb()
        rss = {"start_mb": round(rss_start, 1), "before_soak_mb": round(rss_before, 1),
               "after_soak_mb": round(rss_after, 1), "growth_mb": round(rss_after - rss_before, 1),
               "hwm_before_mb": round(hwm_before, 1), "hwm_after_mb": round(hwm_after, 1),
               "samples": samples, "threads_after": server.threads()}  # fmt: skip
        if samples:
            half = samples[len(samples) // 2][1]
            rss["second_half_growth_mb"] = round(rss_after - half, 1)
        soak_row = None
        if soak is not None:
            soak_row = {"kinds": soak_kinds, "requests": args.soak, "clients": args.soak_clients,
                        "qps": round(soak["qps"], 1),
                        **pct(soak["latencies"]), "errors": len(soak["errors"]), "error_samples": soak["errors"][:5],
                        "batches_per_request": round(soak["batches"] / args.soak, 3),
                        "queries_per_batch": round(soak["encoded"] / soak["batches"], 2) if soak["batches"] else None,
                        "server_cpu_ms_per_request": round(1000 * soak["server_cpu_s"] / args.soak, 2),
                        "client_cpu_ms_per_request": round(1000 * soak["client_cpu_s"] / args.soak, 2),
                        "encoder_ms_per_request": round(1000 * soak["encoder_s"] / args.soak, 2)}  # fmt: skip
        load_after = os.getloadavg()

        # the report
        total_errors = sum(r["errors"] for r in rows) + (soak_row["errors"] if soak_row else 0)
        print()
        print(f"machine: {machine()}")
        print(f"load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, "
              f"after {'/'.join(f'{x:.2f}' for x in load_after)}")  # fmt: skip
        print(f"{args.requests} requests per level and kind per round, {args.rounds} rounds, k={K}, "
              f"batch window {args.batch_window_ms} ms"
              + (f", server env {server_env}" if server_env else "")
              + (f", server switch interval {args.server_switch_interval} s"
                 if args.server_switch_interval is not None else ""))  # fmt: skip
        print()
        print(
            "| query | clients | p50 ms | p95 ms | p99 ms | QPS median (range) | errors "
            "| encoder batches / request | queries / batch | CPU ms / request: server, client | encoder ms / request |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            qpb = f"{r['queries_per_batch']:.2f}" if r["queries_per_batch"] else "-"
            print(f"| {r['kind']} | {r['clients']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} "
                  f"| {r['qps_median']:.1f} ({r['qps_min']:.1f}-{r['qps_max']:.1f}) | {r['errors']} "
                  f"| {r['batches_per_request']:.3f} | {qpb} | {r['server_cpu_ms_per_request']:.1f}, "
                  f"{r['client_cpu_ms_per_request']:.1f} | {r['encoder_ms_per_request']:.1f} |")  # fmt: skip
        if soak_row:
            s = soak_row
            print(f"| soak {'+'.join(soak_kinds)} | {s['clients']} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} "
                  f"| {s['p99_ms']:.1f} | {s['qps']:.1f} ({args.soak} requests) | {s['errors']} "
                  f"| {s['batches_per_request']:.3f} | {s['queries_per_batch'] or '-'} "
                  f"| {s['server_cpu_ms_per_request']:.1f}, {s['client_cpu_ms_per_request']:.1f} "
                  f"| {s['encoder_ms_per_request']:.1f} |")  # fmt: skip
        print()
        print(
            f"text QPS {ratio['levels'][1]} clients / {ratio['levels'][0]} client: median {ratio['median']:.2f} "
            f"(rounds {', '.join(f'{x:.2f}' for x in ratio['per_round'])}; ratio of median QPS "
            f"{ratio['of_medians']:.2f}); target >= {ratio['target']:.0f}: {'met' if ratio['met'] else 'NOT met'}"
        )
        print(f"server RSS: {rss['start_mb']:.1f} MB after warm-up, {rss['before_soak_mb']:.1f} MB before the soak, "
              f"{rss['after_soak_mb']:.1f} MB after ({rss['growth_mb']:+.1f} MB"
              + (f"; {rss['second_half_growth_mb']:+.1f} MB over the soak's second half" if samples else "")
              + f"); peak {rss['hwm_after_mb']:.1f} MB")  # fmt: skip
        if samples:
            during = [mb for _, mb in samples]
            print(f"RSS during the soak (sampled every second): {min(during):.1f}-{max(during):.1f} MB")
        log_text = server.log_path.read_text(errors="replace")
        problems = log_text.count("Traceback") + len(re.findall(r"^(ERROR|WARNING|CRITICAL)", log_text, re.M))
        rss["log_problem_lines"] = problems
        print(f"errors: {total_errors}; server log: {problems} traceback/ERROR/WARNING line(s)")
        for r in rows:
            for e in r["error_samples"][:2]:
                print(f"  {r['kind']} x{r['clients']}: {e}")

        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "date": time.strftime("%Y-%m-%d", time.localtime(started)), "machine": machine(),
                "cores": os.cpu_count(), "load_before": load_before, "load_after": load_after,
                "load_at_round_start": load_rounds, "args": {k: str(v) if isinstance(v, Path) else v
                                                            for k, v in vars(args).items()},
                "index": built or str(index), "like_ids": len(like_ids), "results": rows, "soak": soak_row,
                "ratio_text": ratio, "rss": rss, "errors": total_errors,
                "wall_s": round(time.time() - started, 1),
            }, indent=2))  # fmt: skip
        if total_errors:
            print(f"server log tail:\n{server.log_tail()}", file=sys.stderr)
            sys.exit(1)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
