"""What a video file's bytes say about it before a decoder opens it: an MP4 cut short, an AVI."""

from __future__ import annotations

import os


def ends_early(path: str) -> bool:
    """Whether an MP4/QuickTime file (ISO-BMFF: mp4, mov, m4v) is cut short: a top-level box runs past
    the file's end, or the index box (``moov``) is missing. Reads only the box headers."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 8 or head[4:8] not in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
                return False
            pos, index = 0, False
            while pos + 8 <= size:
                fh.seek(pos)
                header = fh.read(16)
                length, kind = int.from_bytes(header[:4], "big"), header[4:8]
                if not all(32 <= c < 127 for c in kind):
                    return False  # not a box: damaged, not cut short
                if length == 1:  # 64-bit size
                    if len(header) < 16:
                        return True
                    length = int.from_bytes(header[8:16], "big")
                elif length == 0:  # runs to the end of the file
                    length = size - pos
                if length < 8:
                    return False
                index = index or kind == b"moov"
                if pos + length > size:
                    return True
                pos += length
            return not index
    except OSError:
        return False


def is_avi(path: str) -> bool:
    """Whether the file is an AVI: decord returns an AVI's frames in decode order (with B-frames, not the order
    shown), so it is read with PyAV whatever the backend, as the order shown is what PyAV's reader numbers."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:  # said by the reader that opens it next
        return False
    return head[:4] == b"RIFF" and head[8:12] == b"AVI "
