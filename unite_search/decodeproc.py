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
through the worker's own buffer, a file in shared memory (``/dev/shm``, else the temporary folder):
the worker copies its answer there, the caller copies it out (without the GIL) before the worker takes
another request. The caller unlinks the file's name as soon as it has opened it; the buffer grows to
the largest answer and is reused, so its memory is reserved once, not per item. Small arrays, and all
of them where the buffer cannot be reserved (a full ``/dev/shm``), travel inside the answer.

A worker that dies on a file (a decoder crash) is replaced and the file tried once more in a fresh
one; a second death fails that file with an :class:`InputError`, where a crash on a decode thread
would have taken the whole process. Workers
start on first use, one for each thread decoding at the same time, and end with the interpreter (or
when their standard input closes, if the caller dies).
"""

from __future__ import annotations

import atexit
import contextlib
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


class _Worker:
    """One decoding process, as the caller sees it: its pipes and its mapped answer buffer."""

    def __init__(self):
        self.buffer: tuple[int, mmap.mmap] | None = None  # (file descriptor, mapping) once it has answered
        self.ended = ""  # how it ended, where it ended during a request
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

    def call(self, request: tuple) -> tuple | None:
        """The worker's answer, or None where it ended meanwhile (how, in ``self.ended``)."""
        try:
            _send(self.proc.stdin, request)
            return _receive(self.proc.stdout)
        except (OSError, EOFError):
            self.close()
            code = self.proc.returncode
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited ({code})"
            self.ended = f"the decoding process {how}"
            return None

    def pixels(self, path: str, size: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        """A copy of the answer the worker left in its buffer (``size`` bytes long now)."""
        if self.buffer is None:
            fd = os.open(path, os.O_RDONLY)
            os.unlink(path)  # the open descriptors keep it; nothing is left behind if both processes die
            self.buffer = (fd, mmap.mmap(fd, size, access=mmap.ACCESS_READ))
        fd, view = self.buffer
        if len(view) != size:  # the worker grew it
            view.close()
            view = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
            self.buffer = (fd, view)
        # numpy copies without the GIL; the copy is ours before the worker takes its next request
        return np.frombuffer(view, dtype=dtype, count=int(np.prod(shape))).reshape(shape).copy()

    def abandon(self) -> None:
        """Leave a worker whose answer will never be read (the call was interrupted): our ends of its pipes
        close now, without waiting; it ends when its answer meets the closed pipe, removing its buffer."""
        self._unmap()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()

    def _unmap(self) -> None:
        if self.buffer is not None:
            fd, view = self.buffer
            with contextlib.suppress(BufferError):
                view.close()
            os.close(fd)
            self.buffer = None

    def close(self) -> None:
        self._unmap()
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
        try:
            worker = _Worker()
        except OSError as exc:  # not the file's fault (too many open files, no memory): stops the run
            raise RuntimeError(f"cannot start a decoding process: {exc}") from exc
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
            except BaseException:  # Ctrl-C while it decodes: never reused, never waited for
                self._drop(worker)
                worker.abandon()
                raise
            if answer is not None:
                break
            self._drop(worker)
            if attempt == 2:
                raise InputError("the decoder crashed on this file", source=source, detail=worker.ended)
        status, payload, notes = answer
        try:
            if status == "ok":
                return _visual(worker, payload)
        finally:
            self._idle.put(worker)  # only now: its buffer has been copied out
            if notes:
                decoderlog.note(None, notes)
        if status == "input":
            reason, where, detail = payload
            raise InputError(reason, source=where, detail=detail)
        exc, trace = payload
        note = f"raised in a decoding process:\n{trace}"
        if hasattr(exc, "add_note"):  # Python 3.11 on
            exc.add_note(note)
        else:
            exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # what 3.11's traceback prints
        raise exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._all = list(self._all), set()
        for w in workers:
            w.close()


def _visual(worker: _Worker, payload):
    from .image import Visual

    kind, grid = payload[0], payload[-1]
    if kind == "inline":
        return Visual(payload[1], grid)
    _, path, size, dtype, shape, _ = payload
    return Visual(worker.pixels(path, size, dtype, shape), grid)


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
_pool_pid = 0
_pool_lock = threading.Lock()


def pool() -> DecodePool:
    """This interpreter's decoding processes (made on first use, ended at exit). A forked child makes its
    own: the pipes it inherited are its parent's."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool, _pool_pid = DecodePool(), os.getpid()
            atexit.register(_pool.close)
        return _pool


# ---------------------------------------------------------------------- the worker's side
class _Buffer:
    """The worker's answer buffer: a file in shared memory, grown (and its memory reserved) as needed."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, f"{PREFIX}{os.getppid()}-{os.getpid()}")
        self.fd: int | None = None
        self.view: mmap.mmap | None = None
        self.failed = False  # reserving failed once (a full /dev/shm): answers travel inline from then on

    def put(self, pixels: np.ndarray) -> int | None:
        """Copy ``pixels`` in; the buffer's size, or None where it cannot hold them."""
        if self.failed:
            return None
        if self.view is None or len(self.view) < pixels.nbytes:
            size = max(pixels.nbytes, 2 * len(self.view) if self.view is not None else 0)
            size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
            try:
                if self.fd is None:
                    self.fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
                # reserved now, or ENOSPC now: writing to an unreserved page of a full tmpfs kills the process
                os.posix_fallocate(self.fd, 0, size)  # (absent on macOS: answers travel inline there)
            except (OSError, AttributeError):
                self.failed = True
                return None
            if self.view is not None:
                self.view.close()
            self.view = mmap.mmap(self.fd, size)
        target = np.frombuffer(self.view, dtype=pixels.dtype, count=pixels.size).reshape(pixels.shape)
        np.copyto(target, pixels)
        del target
        return len(self.view)


def _answer(request: tuple, buffer: _Buffer) -> tuple:
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
                pickle.loads(pickle.dumps(exc))  # both ways: some pickle but cannot be rebuilt (other __init__)
            except Exception:  # noqa: BLE001  an exception that cannot travel becomes one that can
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            return "raise", (exc, trace), list(notes)
    pixels = visual.pixel_values
    size = buffer.put(pixels) if pixels.nbytes >= INLINE_BYTES else None
    if size is None:
        return "ok", ("inline", pixels, visual.grid_thw), list(notes)
    return "ok", ("shared", buffer.path, size, pixels.dtype.str, pixels.shape, visual.grid_thw), list(notes)


def main() -> None:
    out = os.fdopen(os.dup(1), "wb")  # answers only; a decoder's own printing goes to standard error
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    stdin = sys.stdin.buffer
    buffer = _Buffer(shared_dir())
    try:
        while True:
            try:
                request = _receive(stdin)
            except EOFError:
                return
            try:
                _send(out, _answer(request, buffer))
            except BrokenPipeError:  # the caller left without its answer (Ctrl-C): nothing to tell
                return
    finally:
        with contextlib.suppress(OSError):  # where the caller never opened it (it unlinks what it opens)
            os.unlink(buffer.path)


if __name__ == "__main__":
    main()
