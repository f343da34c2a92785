"""The corpus side of ingest: which files a folder holds, what each one is, and what it declares.

``walk`` lists candidate files (hidden entries, names that are not UTF-8, symlink loops and special
files are skipped and reported); ``read_file`` hashes one file and checks its content against its
extension (a PNG named ``.jpg`` is fine, text named ``.jpg`` is not), probing image size, video
duration and text passages on the way. What a ``*.jsonl`` file declares is read by :mod:`.declared`.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import os
import stat
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .diskio import file_sha256
from .errors import InputError
from .modality import Modality
from .passages import PassageSplitter

__all__ = ["file_sha256"]  # re-exported: ingest, queries and the benchmark cache hash files with it

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})
TEXT_EXTENSIONS = frozenset({".txt", ".md"})
MANIFEST_EXTENSIONS = frozenset({".jsonl"})
SIDECAR_EXTENSION = ".txt"  # x.txt beside x.jpg / x.mp4 is that item's caption
CHUNK = 1 << 20
_BMP_HEADERS = (12, 40, 52, 56, 64, 108, 124)
_QT_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip")  # what a QuickTime file without ftyp starts with
_TEXT_FLOOR = 0x09 << 24  # 4 bytes of text (first byte a tab or above) read as a big-endian number are at least this
NOT_UTF8 = "file name is not valid UTF-8; rename it"
CHANGED = "file changed during ingest; run ingest again to pick up the new content"


def claimed_kind(path: str | os.PathLike) -> str | None:
    """What a file's extension says it is: a modality value, ``"manifest"``, or None (ignored)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return Modality.IMAGE.value
    if ext in VIDEO_EXTENSIONS:
        return Modality.VIDEO.value
    if ext in TEXT_EXTENSIONS:
        return Modality.TEXT.value
    if ext in MANIFEST_EXTENSIONS:
        return "manifest"
    return None


@dataclass(frozen=True)
class Problem:
    """A file that was not indexed: where, at which stage, and why."""

    path: str
    stage: str  # discover | read | decode | encode | manifest
    reason: str  # in words, the same every run
    detail: str | None = field(default=None, compare=False)  # the decoder's own message: run log only

    def to_dict(self) -> dict[str, str]:
        out = {"path": self.path, "stage": self.stage, "reason": self.reason}
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True, slots=True)  # one a file of the corpus, held for the whole run: no __dict__ each
class Entry:
    """A regular file found by the walk."""

    rel: str  # corpus-relative, '/'-separated
    path: str  # absolute
    size: int
    mtime_ns: int
    kind: str  # claimed_kind()


@dataclass
class Walk:
    entries: list[Entry] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)  # hidden, non-UTF-8 names, special files, symlink loops
    failures: list[Problem] = field(default_factory=list)  # broken links, unreadable folders
    ignored: int = 0  # files whose extension is not indexed
    # folders and files that are there but could not be looked at (permissions, I/O): not gone from the corpus
    unseen: list[str] = field(default_factory=list)


OUTSIDE = "outside the corpus folder; pass --allow-outside (allow_outside=True) to index it"


def is_inside(path: str | os.PathLike, folder_real: str) -> bool:
    """Whether ``path``, symlinks resolved, lies in the folder whose resolved path is ``folder_real``."""
    return within(folder_real, os.path.realpath(path))


def within(root: str, path: str) -> bool:
    """Whether the normalised absolute ``path`` is ``root`` or a name under it (text only: no disk)."""
    return path == root or path.startswith(os.path.join(root, ""))


@dataclass(frozen=True)
class Confined:
    """A folder that the files read from must stay inside, symlinks followed."""

    given: str  # absolute, as named
    real: str  # symlinks resolved

    @classmethod
    def of(cls, folder: str | os.PathLike) -> Confined:
        return cls(os.path.abspath(folder), os.path.realpath(folder))

    def holds(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` (absolute, or relative to the folder) is a file name inside the folder.

        A path whose text already leaves the folder (``..``, an absolute path elsewhere) is refused without
        touching the disk; the others are judged by where their symlinks lead. The answer never depends on
        whether an outside file exists.
        """
        full = os.path.join(self.given, path)
        lexical = os.path.normpath(full)
        if not (within(self.given, lexical) or within(self.real, lexical)):
            return False
        return within(self.real, os.path.realpath(full))


def walk(root: str | os.PathLike, exclude: tuple[str | os.PathLike, ...] = (), allow_outside: bool = False) -> Walk:
    """Every candidate file under ``root`` in sorted order, following symlinks without looping: folders by their
    own paths first, then folders only a symlink leads to, so a link to a folder of the corpus never takes the
    folder's place.

    A symlink that leads outside ``root`` is skipped (and reported) unless ``allow_outside``; the
    report does not say whether its target exists.
    """
    root = os.path.abspath(root)
    root_real = os.path.realpath(root)
    excluded = set()  # (device, inode) of the excluded paths: no realpath for every file walked
    for path in exclude:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            excluded.add((st.st_dev, st.st_ino))
    excluded_real = {os.path.realpath(p) for p in exclude}  # ... and where they are, for links leading out
    out = Walk()
    seen_dirs: set[tuple[int, int]] = set()
    linked: list[str] = []  # folders reached through a symlink: visited after every folder by its own path

    def rel(path: str) -> str:
        return shown(os.path.relpath(path, root))

    def shown(name: str) -> str:
        # a name that is not UTF-8 shows its raw bytes escaped (as \xe9), so that reports can print it
        return os.fsencode(name).decode("utf-8", "backslashreplace").replace(os.sep, "/")

    def visit(folder: str, where: str) -> Iterator[tuple[str, str]]:
        """Lists ``folder`` (shown as ``where``), yielding each subfolder to walk, in order, before its
        next sibling: the caller keeps a stack of these, so that no tree is too deep for the walk."""
        try:
            st = os.stat(folder)
        except OSError as exc:
            out.failures.append(Problem(where, "discover", f"cannot read folder: {exc.strerror}"))
            out.unseen.append(where)
            return
        if (st.st_dev, st.st_ino) in seen_dirs:
            real = os.path.realpath(folder)
            why = ("symlink loop (folder already visited)" if within(real, os.path.abspath(folder))
                   else f"symlink to a folder indexed at {rel(real) if within(root_real, real) else real}")  # fmt: skip
            out.skipped.append(Problem(where, "discover", why))
            return
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            out.failures.append(Problem(where, "discover", f"cannot list folder: {exc.strerror}"))
            out.unseen.append(where)
            return
        prefix = f"{where}/" if where != "." else ""
        for child in children:
            path, name = child.path, prefix + shown(child.name)
            if child.name.startswith("."):
                out.skipped.append(Problem(name, "discover", "hidden"))
                continue
            if not allow_outside and child.is_symlink() and not is_inside(path, root_real):
                if os.path.realpath(path) not in excluded_real:
                    out.skipped.append(Problem(name, "discover", f"symlink to a path {OUTSIDE}"))
                continue
            try:
                st = os.stat(path)  # follows symlinks
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # links leading to each other: skipped, as a folder loop is
                    out.skipped.append(Problem(name, "discover", "symlink loop"))
                    continue
                gone = exc.errno == errno.ENOENT  # a broken symlink, or deleted since the folder was listed
                reason = "broken symlink" if child.is_symlink() and gone else f"cannot stat: {exc.strerror}"
                out.failures.append(Problem(name, "discover", reason))
                if not gone:
                    out.unseen.append(name)
                continue
            if (st.st_dev, st.st_ino) in excluded:
                continue
            if stat.S_ISDIR(st.st_mode):
                kind = None  # a folder: visited below unless its name is not UTF-8
            elif not stat.S_ISREG(st.st_mode):
                out.skipped.append(Problem(name, "discover", "not a regular file"))
                continue
            elif (kind := claimed_kind(child.name)) is None:
                out.ignored += 1
                continue
            if not _is_utf8(child.name):  # the index stores paths as UTF-8 text: this one cannot be written
                out.skipped.append(Problem(name, "discover", NOT_UTF8))
            elif kind is None and child.is_symlink():
                linked.append(path)
            elif kind is None:
                yield path, name
            else:
                out.entries.append(Entry(name, path, st.st_size, st.st_mtime_ns, kind))

    def visit_all(folder: str) -> None:
        stack = [visit(folder, rel(folder))]
        while stack:
            sub = next(stack[-1], None)
            if sub is None:
                stack.pop()
            else:
                stack.append(visit(*sub))

    visit_all(root)
    while linked:
        visit_all(linked.pop(0))
    return out


def _is_utf8(name: str) -> bool:
    """Whether a file name came from valid UTF-8 bytes (undecodable bytes arrive as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _atom_size_fits(head: bytes, size: int | None) -> bool:
    """Whether ``head`` starts with a plausible QuickTime atom size (big-endian, bytes 0-3).

    0 (to the end of the file) and 1 (a 64-bit size follows) are fine; otherwise at least 8, and either
    below what text can spell (so "Get free shipping" is not a movie) or within the file's ``size``.
    """
    n = int.from_bytes(head[:4], "big")
    return n in (0, 1) or 8 <= n < _TEXT_FLOOR or (size is not None and 8 <= n <= size)


def sniff(head: bytes, size: int | None = None) -> str | None:
    """The media kind a file's first bytes announce: ``"image"``, ``"video"`` or None.

    ``size``, the file's size when known, lets a large QuickTime file without ``ftyp`` be recognised.
    """
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")):
        return Modality.IMAGE.value
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Modality.IMAGE.value
    # BMP: "BM", then a DIB header whose size is one of the known ones
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADERS:
        return Modality.IMAGE.value
    if head[4:8] == b"ftyp":
        # ISO-BMFF also carries still images (HEIC, AVIF), which we do not decode
        return None if head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis") else Modality.VIDEO.value
    if head[4:8] in _QT_ATOMS and _atom_size_fits(head, size):  # QuickTime without ftyp
        return Modality.VIDEO.value
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # Matroska / WebM
        return Modality.VIDEO.value
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return Modality.VIDEO.value
    return None


_KIND_WORDS = {"image": "an image", "video": "a video", "text": "text"}


def other_kind(path: str | os.PathLike, wanted: str) -> str | None:
    """Why a file given as ``wanted`` (``"image"`` or ``"video"``) is plainly something else, told by its first
    bytes as ingest and the server tell it: ``"not a video: its content is an image"``. None where it may be
    one (or cannot be read). For a decoder's failure: a photo given as a video is not a damaged video."""
    try:
        with open(path, "rb") as fh:
            head, size = fh.read(64), os.fstat(fh.fileno()).st_size
    except OSError:
        return None
    found = sniff(head, size) or ("text" if _looks_like_text(head) else None)
    if found is None or found == wanted:
        return None
    return f"not {_KIND_WORDS[wanted]}: its content is {_KIND_WORDS[found]}"


_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)  # fmt: skip  (UTF-32 LE's BOM begins as UTF-16 LE's)


def _binary(data: bytes, source: str) -> InputError:
    """Why a text holding NUL bytes is refused: a UTF-16 or UTF-32 file, told by its BOM, or binary data."""
    wide = next((name for bom, name in _WIDE_BOMS if data.startswith(bom)), None)
    if wide is not None:
        return InputError(f"text is {wide} (by its byte order mark); convert it to UTF-8", source=source)
    return InputError("text file holds binary data (NUL bytes)", source=source)


def decode_text(data: bytes, source: str) -> str:
    """Strict UTF-8 (a BOM is dropped); binary data and invalid bytes are an :class:`InputError`."""
    if b"\x00" in data or data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise _binary(data, source)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"text is not valid UTF-8 (byte {exc.start}); convert it to UTF-8", source=source) from exc
    if not text.strip():
        raise InputError("text file holds no text", source=source)
    return text


# What the read stage tells of a file, and how, in this version; each file-cache row records the edition
# that read it. 2: a video's frame-rate check (files.vfr); 3: a TIFF's orientation applied once (its width
# and height were swapped) and its float pixels converted as upstream converts them, and texts cut at the
# sentence ends of more scripts and never inside a user-perceived character.
READS = 3


@dataclass(frozen=True, slots=True)  # one a file of the corpus, held for the whole run: no __dict__ each
class FileFacts:
    """One file after the read stage: its content hash and what a header read tells."""

    rel: str
    path: str
    size: int
    mtime_ns: int
    sha256: str
    modality: str
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    fps: float | None = None
    total_frames: int | None = None
    rotation: int | None = None  # a video's display rotation (degrees counter-clockwise); width/height are upright
    # a video: whether its frame rate varies (its duration then comes from its timestamps, see frametimes.py);
    # None: a cache row written before this was read
    vfr: bool | None = None
    passages: tuple[tuple[int, int, int, int], ...] = ()  # (char_start, char_end, byte_start, byte_end)
    reads: int = READS  # the read-stage edition these facts come from (a cache row's, else this version's)
    remake: bool = False  # read again, its rows made otherwise by the cache's edition (not kept: see units._remade)
    cached: int = field(default=-1, compare=False)  # its file-cache row (filecache.FileCache); -1: read by this run

    def to_row(self) -> dict[str, Any]:
        """The file-cache row (no absolute path: the corpus may move)."""
        row = {k: getattr(self, k) for k in ("rel", "size", "mtime_ns", "sha256", "modality")}
        row.update(width=self.width, height=self.height, duration=self.duration, fps=self.fps)
        row.update(total_frames=self.total_frames, rotation=self.rotation, vfr=self.vfr)
        row.update(spans=[x for span in self.passages for x in span], reads=self.reads)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any], path: str) -> FileFacts:
        flat = row.get("spans") or []
        spans = tuple(tuple(flat[i : i + 4]) for i in range(0, len(flat), 4))
        keep = ("rel", "size", "mtime_ns", "sha256", "modality", "width", "height", "duration", "fps", "total_frames",
                "rotation")  # fmt: skip
        known = {k: row[k] for k in keep}
        return cls(path=path, passages=spans, vfr=row.get("vfr"), reads=row["reads"], **known)  # type: ignore[arg-type]

    def probe(self):
        """A video's read-stage :class:`~unite_search.video.Probe`, as the reader takes it."""
        from .video import Probe

        seconds = self.duration if self.vfr else None
        return Probe(int(self.total_frames or 0), float(self.fps or 0), self.width or 0, self.height or 0,
                     self.rotation, seconds=seconds)  # fmt: skip


def read_file(entry: Entry, *, passage_chars: int, video_backend: str | None = None) -> FileFacts:
    """Hash a file and check its content; raises :class:`InputError` (the read stage's failures).

    A text file is streamed: hashed, decoded and cut into passages chunk by chunk, so its size does
    not bound memory. A file whose size or mtime moved since the walk or during the read fails (its
    facts would mix two versions, and the file cache would trust them on every later run).
    """
    if entry.size == 0:
        raise InputError("file is empty (0 bytes)", source=entry.rel)
    digest = hashlib.sha256()
    text = _TextStream(entry.rel, passage_chars) if entry.kind == Modality.TEXT.value else None
    try:
        with open(entry.path, "rb") as fh:
            st = os.fstat(fh.fileno())
            head = fh.read(64)
            # a text that opens with a format's magic words ("GIF89a is the name of...") is still a text
            if text is not None and (found := sniff(head, st.st_size)) is not None and not _looks_like_text(head):
                raise InputError(f"content is {found} data but the extension says text", source=entry.rel)
            chunk = head
            while chunk:
                digest.update(chunk)
                if text is not None:
                    text.feed(chunk)
                chunk = fh.read(CHUNK)
            end = os.fstat(fh.fileno())
    except FileNotFoundError as exc:
        raise InputError("file disappeared during ingest", source=entry.rel) from exc
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", source=entry.rel) from exc
    stamp = (st.st_size, st.st_mtime_ns)
    if stamp != (end.st_size, end.st_mtime_ns) or stamp != (entry.size, entry.mtime_ns):
        raise InputError(CHANGED, source=entry.rel)
    facts = {"rel": entry.rel, "path": entry.path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    facts["sha256"] = digest.hexdigest()
    if text is not None:
        return FileFacts(modality=entry.kind, passages=text.finish(), **facts)
    found = sniff(head, st.st_size)
    if found is None:
        if _looks_like_text(head):
            raise InputError(f"content is text but the extension says {entry.kind}", source=entry.rel)
        article = "an" if entry.kind == Modality.IMAGE.value else "a"
        raise InputError(f"not {article} {entry.kind}: its content is no known {entry.kind} format", source=entry.rel)
    if found != entry.kind:
        raise InputError(f"content is {found} data but the extension says {entry.kind}", source=entry.rel)
    if found == Modality.IMAGE.value:
        width, height = _image_size(entry)
        return FileFacts(modality=found, width=width, height=height, **facts)
    from .video import probe

    try:
        info = probe(entry.path, video_backend)
    except InputError as exc:
        raise exc.located(entry.rel) from exc
    return FileFacts(
        modality=found,
        width=info.width or None,
        height=info.height or None,
        duration=info.duration,
        fps=info.fps,
        total_frames=info.total_frames,
        rotation=info.rotation,
        vfr=info.seconds is not None,
        **facts,
    )


class _TextStream:
    """Strict UTF-8 decoding and passage cutting of a text file fed chunk by chunk (see :func:`decode_text`)."""

    def __init__(self, source: str, passage_chars: int):
        self.source = source
        self.passage_chars = passage_chars
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._splitter = PassageSplitter(passage_chars)
        self._bytes = 0  # bytes handed to the decoder so far
        self._started = False

    def feed(self, chunk: bytes) -> None:
        if b"\x00" in chunk:
            raise _binary(chunk if not self._started else b"", self.source)
        if not self._started:  # a BOM is not text, but it takes 3 bytes of the file
            self._started = True
            if chunk.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # never UTF-8, NUL or not
                raise _binary(chunk, self.source)
            if chunk.startswith(codecs.BOM_UTF8):
                self._splitter = PassageSplitter(self.passage_chars, byte_offset=3)
                chunk, self._bytes = chunk[3:], 3
        self._decode(chunk, final=False)

    def _decode(self, chunk: bytes, final: bool) -> None:
        pending = len(self._decoder.getstate()[0])  # bytes of a character cut at the previous chunk's end
        try:
            piece = self._decoder.decode(chunk, final=final)
        except UnicodeDecodeError as exc:
            at = self._bytes - pending + exc.start
            raise InputError(f"text is not valid UTF-8 (byte {at}); convert it to UTF-8", source=self.source) from exc
        self._bytes += len(chunk)
        self._splitter.feed(piece)

    def finish(self) -> tuple[tuple[int, int, int, int], ...]:
        self._decode(b"", final=True)
        spans = tuple(self._splitter.finish())
        if not spans:
            raise InputError("text file holds no text", source=self.source)
        return spans


def read_passage(path: str, span: tuple[int, int, int, int], source: str) -> str:
    """The text of one passage, read from its byte range (the file is not decoded around it)."""
    char_start, char_end, byte_start, byte_end = span
    with open(path, "rb") as fh:
        fh.seek(byte_start)
        data = fh.read(byte_end - byte_start)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError("file changed during ingest; run ingest again", source=source) from exc
    if len(text) != char_end - char_start:
        raise InputError("file changed during ingest; run ingest again", source=source)
    return text


def _looks_like_text(head: bytes) -> bool:
    try:  # incremental: a multibyte character cut at the end of the sample is not an error
        sample = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    # no control character but the layout ones; any space and any invisible format character (a no-break or an
    # ideographic space, a soft hyphen, a zero-width joiner) is text
    return bool(sample) and all(c in "\t\r\n\f\v" or unicodedata.category(c) != "Cc" for c in sample)


def _image_size(entry: Entry) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(entry.path) as img:
            size = img.size
            if img.format == "PNG" and "exif" not in img.info:
                # Pillow decodes the whole image to reach an eXIf chunk stored after its data (every PNG
                # without one before it): the read stage walks the chunk headers instead (an XMP orientation
                # is still read from the text chunks before the data)
                img.info["exif"] = _png_exif(entry.path, img.info) or b""
            orientation = img.getexif().get(0x0112, 1)  # EXIF orientation 5-8 swaps width and height
            if getattr(img, "_tile_size", size) != size:  # a TIFF whose size Pillow (>= 11) gives upright
                orientation = 1
    except Image.DecompressionBombError as exc:
        raise InputError(f"image too large to decode safely ({exc})", source=entry.rel) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        from .image import image_reason

        raise InputError(f"cannot read image header: {image_reason(exc)}", source=entry.rel, detail=str(exc)) from exc
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


_RAW_EXIF = b"Raw profile type exif"  # ImageMagick's text chunk: the EXIF block in hex, after three lines


def _png_exif(path: str, info: dict) -> bytes | None:
    """A PNG's EXIF block: its eXIf chunk, else a raw-profile text chunk (as Pillow reads them), found by walking
    the chunk headers; the image data is skipped, never read. ``info``: what Pillow read before the data."""
    raw = info.get(_RAW_EXIF.decode())
    found = _raw_profile(raw.encode("latin-1", "replace")) if isinstance(raw, str) else None
    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return found
        while len(head := fh.read(8)) == 8:
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind == b"eXIf":
                return fh.read(length)
            if kind == b"IEND":
                break
            if found is None and kind in (b"tEXt", b"zTXt") and length <= 1 << 20:
                data = fh.read(length)
                keyword, _, text = data.partition(b"\0")
                if keyword == _RAW_EXIF:
                    with contextlib.suppress(zlib.error, IndexError):
                        found = _raw_profile(zlib.decompress(text[1:]) if kind == b"zTXt" else text)
                fh.seek(4, os.SEEK_CUR)
            else:
                fh.seek(length + 4, os.SEEK_CUR)  # the data and its CRC
    return found


def _raw_profile(text: bytes) -> bytes | None:
    try:
        return bytes.fromhex("".join(text.decode("latin-1").split("\n")[3:]))
    except ValueError:
        return None
