"""Decoding in worker processes (the speed switch ``processes``).

A thread that decodes an image or a clip gives up the interpreter lock (the GIL) for each decoder
call and takes it back after, dozens of times an item; the thread that runs the model does the same
for each operator it launches. On a GPU, where launching is most of that thread's work, each wait for
the lock is time the GPU may sit idle. Here the decode threads hand each image or video file to a
worker process instead, and wait for its answer without holding the lock.

A worker is a plain ``python -m unite_search.decodeproc`` (nothing of the caller's script is run
again in it): it reads requests on its standard input and answers on a private copy of its standard
output (anything a decoder prints goes to standard error). It runs the same functions a thread would
(``preprocess_image``, ``preprocess_video``), so the pixels are the same bits. Large arrays come back
through a file in shared memory (``/dev/shm``, else the temporary folder) that the caller maps and
unlinks at once; small ones inside the answer.

A worker that dies on a file (a decoder crash) is replaced and the file tried once more in a fresh
one; a second death fails that file with an :class:`InputError`, where a crash on a decode thread
would have taken the whole process. Workers
start on first use, one for each thread decoding at the same time, and end with the interpreter (or
when their standard input closes, if the caller dies).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import mmap
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

INLINE_BYTES = 1 << 20  # arrays smaller than this travel inside the answer
PREFIX = "unite-decode-"
_HEADER = struct.Struct("<Q")


def shared_dir() -> str:
    """Where answers' arrays are written: ``/dev/shm`` (memory) when this system has it."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _receive(stream):
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError("the stream ended")
    (n,) = _HEADER.unpack(head)
    data = stream.read(n)
    if len(data) < n:
        raise EOFError("the stream ended inside a message")
    return pickle.loads(data)


class WorkerDied(Exception):
    """The worker process ended while a request was in its hands."""


class _Worker:
    def __init__(self):
        env = dict(os.environ)
        # one thread each (the caller runs one worker per decode thread), and never the GPU
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unite_search.decodeproc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )

    def call(self, request: tuple) -> tuple:
        try:
            _send(self.proc.stdin, request)
            return _receive(self.proc.stdout)
        except (OSError, EOFError) as exc:
            self.close()
            code = self.proc.returncode
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited ({code})"
            raise WorkerDied(f"the decoding process {how}") from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            self.proc.stdout.close()


class DecodePool:
    """Worker processes shared by every encoder of this interpreter; one per concurrent caller."""

    def __init__(self):
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        _sweep(shared_dir())

    @property
    def size(self) -> int:
        """Workers alive now."""
        with self._lock:
            return len(self._all)

    def pids(self) -> list[int]:
        with self._lock:
            return [w.proc.pid for w in self._all]

    def _take(self) -> _Worker:
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                break
            if worker.proc.poll() is None:
                return worker
            self._drop(worker)  # ended while idle (killed from outside): not this file's fault
            worker.close()
        worker = _Worker()
        with self._lock:
            if self._closed:
                worker.close()
                raise RuntimeError("the decoding processes were shut down")
            self._all.add(worker)
        return worker

    def _drop(self, worker: _Worker) -> None:
        with self._lock:
            self._all.discard(worker)

    def run(self, kind: str, source: str, settings, **span) -> Any:
        """``preprocess_image(source, settings)`` or ``preprocess_video(source, settings, **span)``
        in a worker; raises what it raises there."""
        from . import decoderlog

        request = (kind, source, settings, span, decoderlog.active())
        for attempt in (1, 2):  # a worker that dies for another reason (killed from outside) gets a retry
            worker = self._take()
            try:
                answer = worker.call(request)
                break
            except WorkerDied as exc:
                self._drop(worker)
                if attempt == 2:
                    raise InputError("the decoder crashed on this file", source=source, detail=str(exc)) from None
        self._idle.put(worker)
        status, payload, notes = answer
        if notes:
            decoderlog.note(None, notes)
        if status == "ok":
            return _visual(payload)
        if status == "input":
            reason, where, detail = payload
            raise InputError(reason, source=where, detail=detail)
        exc, trace = payload
        exc.add_note(f"raised in a decoding process:\n{trace}")
        raise exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._all = list(self._all), set()
        for w in workers:
            w.close()


def _visual(payload):
    from .image import Visual

    kind, grid = payload[0], payload[-1]
    if kind == "inline":
        return Visual(payload[1], grid)
    _, path, dtype, shape, _ = payload
    fd = os.open(path, os.O_RDONLY)
    try:
        os.unlink(path)
        # copy on write: a private, writable view of the worker's pixels, no copy made here
        buf = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    return Visual(np.frombuffer(buf, dtype=dtype).reshape(shape), grid)


def _sweep(folder: str) -> None:
    """Remove answer files left by processes that died before mapping them."""
    for name in os.listdir(folder):
        if not name.startswith(PREFIX):
            continue
        owner = name[len(PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_pool: DecodePool | None = None
_pool_lock = threading.Lock()


def pool() -> DecodePool:
    """This interpreter's decoding processes (made on first use, ended at exit)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = DecodePool()
            atexit.register(_pool.close)
        return _pool


# ---------------------------------------------------------------------- the worker's side
def _answer(request: tuple, folder: str, names) -> tuple:
    from . import decoderlog
    from .image import preprocess_image
    from .video import preprocess_video

    kind, source, settings, span, collect = request
    with decoderlog.collecting() if collect else contextlib.nullcontext([]) as notes:
        try:
            if kind == "image":
                visual = preprocess_image(source, settings)
            else:
                visual = preprocess_video(source, settings, **span)
        except InputError as exc:
            return "input", (exc.reason, exc.source, exc.detail), list(notes)
        except Exception as exc:  # noqa: BLE001  handed to the caller, which raises it
            trace = traceback.format_exc()
            try:
                pickle.dumps(exc)
            except Exception:  # noqa: BLE001  an exception that cannot travel becomes one that can
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            return "raise", (exc, trace), list(notes)
    pixels = np.ascontiguousarray(visual.pixel_values)
    if pixels.nbytes < INLINE_BYTES:
        return "ok", ("inline", pixels, visual.grid_thw), list(notes)
    path = os.path.join(folder, next(names))
    with open(path, "wb") as f:
        f.write(memoryview(pixels).cast("B"))
    return "ok", ("file", path, pixels.dtype.str, pixels.shape, visual.grid_thw), list(notes)


def main() -> None:
    out = os.fdopen(os.dup(1), "wb")  # answers only; a decoder's own printing goes to standard error
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    stdin = sys.stdin.buffer
    folder = shared_dir()
    names = (f"{PREFIX}{os.getppid()}-{os.getpid()}-{i}" for i in itertools.count())
    while True:
        try:
            request = _receive(stdin)
        except EOFError:
            return
        _send(out, _answer(request, folder, names))


if __name__ == "__main__":
    main()
