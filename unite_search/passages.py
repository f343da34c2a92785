"""Text cut into passages as it streams: at most ``max_chars`` characters each, at a blank line, a line end,
a sentence end or a space where one falls in the second half of the window, never inside a user-perceived
character (an extended grapheme cluster of Unicode's UAX #29)."""

from __future__ import annotations

import regex

from .errors import ConfigError

# Where a cut may fall, best first; the last cut of the best kind found in the window wins. Sentence ends
# of scripts written without spaces between sentences (Chinese, Japanese) need no space after them.
SEPARATORS = (
    ("\n\n", "\n\x01\n"),  # a blank line (the second: CRLF CRLF, see _end)
    ("\n",),
    (". ", "! ", "? ", "\u3002", "\uff01", "\uff1f", "\uff0e", "\u0964", "\u0965"),  # also 。！？． and danda
    (" ",),
)
_GRAPHEME = regex.compile(r"\X")
# what joins the character before it into one user-perceived character (rules GB9 and GB9a): a separator followed
# by one of these is no place to cut
_ATTACHED = regex.compile(
    r"[\p{Grapheme_Cluster_Break=Extend}\p{Grapheme_Cluster_Break=ZWJ}\p{Grapheme_Cluster_Break=SpacingMark}]"
)
LOOKBACK = 256  # characters a hard cut looks back for a boundary: far more than any real cluster spans


class PassageSplitter:
    """Cut text fed in pieces into passages of at most ``max_chars`` characters, as it streams.

    Cuts prefer a blank line, then a line end, then a sentence end, then any space, in the second half
    of the window (:data:`SEPARATORS`), else fall at the window's last character boundary; whitespace-only
    spans are dropped, and each span leaves out its passage's leading and trailing whitespace (the encoder
    strips it from every text). A passage is decided once ``max_chars + 1``
    characters past its start are known (or the text ended), so memory stays about one window, and
    the cuts are those :func:`split_passages` makes on the whole text. Each span also gives its
    UTF-8 byte range, so a passage can be read back without decoding the file around it.
    """

    def __init__(self, max_chars: int, byte_offset: int = 0):
        if max_chars < 1:
            raise ConfigError("max_chars must be positive")
        self.max_chars = max_chars
        self._buffer = ""
        self._char = 0  # character offset of _buffer[0] in the whole text
        self._byte = byte_offset  # its byte offset in the file
        self.spans: list[tuple[int, int, int, int]] = []  # (char_start, char_end, byte_start, byte_end)

    def feed(self, text: str) -> None:
        self._buffer += text
        while len(self._buffer) > self.max_chars:
            self._cut(self._end(len(self._buffer)))

    def finish(self) -> list[tuple[int, int, int, int]]:
        while self._buffer:
            self._cut(self._end(len(self._buffer)))
        return self.spans

    def _end(self, n: int) -> int:
        end = min(self.max_chars, n)
        if end < n:
            half = self.max_chars // 2
            window = self._buffer[half:end]
            if "\r" in window:  # CRLF and CR line ends found as LF ones (the same length: offsets hold)
                window = window.replace("\r\n", "\x01\n").replace("\r", "\n")
            for seps in SEPARATORS:
                cut = max(self._last_cut(window, sep, half) for sep in seps)
                if cut >= 0:
                    return half + cut
            return _grapheme_start(self._buffer, end, half)
        return end

    def _last_cut(self, window: str, sep: str, half: int) -> int:
        """The end of the last ``sep`` in ``window`` (which starts at ``half`` in the buffer) that is not followed
        by a mark joining it (a space then a combining accent is one character); -1 for none."""
        at = len(window)
        while (found := window.rfind(sep, 0, at)) >= 0:
            cut = found + len(sep)
            if not _ATTACHED.match(self._buffer, half + cut):
                return cut
            at = cut - 1
        return -1

    def _cut(self, end: int) -> None:
        piece = self._buffer[:end]
        size = len(piece.encode("utf-8"))
        if piece.strip():  # the span is the passage less its leading and trailing whitespace
            lead = len(piece) - len(piece.lstrip())
            tail = len(piece) - len(piece.rstrip())
            lead_bytes = len(piece[:lead].encode("utf-8"))
            tail_bytes = len(piece[end - tail :].encode("utf-8"))
            self.spans.append(
                (self._char + lead, self._char + end - tail, self._byte + lead_bytes, self._byte + size - tail_bytes)
            )
        self._buffer = self._buffer[end:]
        self._char += end
        self._byte += size


def _grapheme_start(text: str, end: int, floor: int) -> int:
    """A cut at ``end`` moved back (not below ``floor``) to the nearest boundary between user-perceived
    characters, so that no accent, emoji sequence, flag, Hangul syllable or Indic conjunct is parted; ``end``
    itself when none lies above ``floor``. ``text`` starts at a boundary (the previous cut); clusters are
    found from :data:`LOOKBACK` characters before ``end`` (the first one found there may have begun earlier,
    and a run of flags is counted in pairs from its start)."""
    start = max(floor, end - LOOKBACK)
    while start > 0 and _is_flag_half(text[start]) and _is_flag_half(text[start - 1]):
        start -= 1
    cut, trusted = end, start == 0
    for match in _GRAPHEME.finditer(text, start, end + 1):  # a boundary depends on what precedes it and one character
        if trusted and match.start() > floor:
            cut = match.start()
        trusted = True
    return cut


def _is_flag_half(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF  # a regional indicator: two make a flag


def split_passages(text: str, max_chars: int) -> list[tuple[int, int]]:
    """Character spans [start, end) of the passages of at most ``max_chars`` that ``text`` is cut
    into, without their leading and trailing whitespace (see :class:`PassageSplitter`).

    >>> split_passages("one two. three four", 10)
    [(0, 8), (9, 19)]
    """
    splitter = PassageSplitter(max_chars)
    splitter.feed(text)
    return [(a, b) for a, b, _, _ in splitter.finish()]
