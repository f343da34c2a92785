"""Corpus helpers: content sniffing, passages, the walk, manifests, text decoding."""

import hashlib
import json
import os
import unicodedata

import pytest
from corpora import write_photo

from unite_search.corpus import decode_text, sniff, walk
from unite_search.declared import parse_manifest
from unite_search.errors import InputError
from unite_search.passages import PassageSplitter, split_passages


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "image"),
        (b"GIF89a\x01\x00", "image"),
        (b"II*\x00\x08\x00", "image"),
        (b"MM\x00*\x00\x00", "image"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image"),
        (b"BM" + bytes(12) + (40).to_bytes(4, "little"), "image"),
        (b"BMW drivers are " + bytes(4), None),  # "BM" alone is not a bitmap
        (b"\x00\x00\x00\x20ftypisom\x00\x00", "video"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00", "video"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00", None),  # HEIC stills are not decoded
        (b"\x1a\x45\xdf\xa3\x01\x00", "video"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "video"),
        (b"hello, this is text", None),
        (b"", None),
    ],
)
def test_sniff(head, kind):
    assert sniff(head) == kind


def test_passages_cover_the_text_within_the_limit():
    text = "\n\n".join(f"Paragraph {i}. " + "Some words here. " * (3 + i) for i in range(8))
    spans = split_passages(text, 120)
    assert spans[0][0] == 0 and spans[-1][1] == len(text.rstrip())
    assert all(a < b and b - a <= 120 for a, b in spans)
    # nothing lost: only whitespace lies between passages, and none at a passage's ends
    assert all(not text[spans[i][1] : spans[i + 1][0]].strip() for i in range(len(spans) - 1))
    assert all(text[a:b] == text[a:b].strip() for a, b in spans)
    assert all(text[b] in " \n" for _, b in spans[:-1])  # cut at word and paragraph boundaries


def test_passages_leave_out_surrounding_whitespace_in_chars_and_bytes():

    text = "\n  a red kite\n\n\u00e9t\u00e9 \u00e0 Paris \n"
    splitter = PassageSplitter(14, byte_offset=3)  # as after a UTF-8 BOM
    splitter.feed(text)
    data = text.encode("utf-8")
    got = [(text[a:b], data[x - 3 : y - 3].decode("utf-8")) for a, b, x, y in splitter.finish()]
    assert got == [("a red kite", "a red kite"), ("\u00e9t\u00e9 \u00e0 Paris", "\u00e9t\u00e9 \u00e0 Paris")]


def test_passages_prefer_paragraphs_and_cut_words_only_when_forced():
    assert split_passages("aaaa bbbb\n\ncccc dddd", 14) == [(0, 9), (11, 20)]
    assert split_passages("x" * 25, 10) == [(0, 10), (10, 20), (20, 25)]
    assert split_passages("   \n\n   ", 4) == []
    with pytest.raises(ValueError):
        split_passages("x", 0)


def _whole_text_passages(text: str, max_chars: int) -> list[tuple[int, int]]:
    """The cutting rule restated on a whole string (the streaming splitter must cut the same way)."""
    spans, start = [], 0
    while start < len(text):
        end = min(start + max_chars, len(text))
        if end < len(text):
            window = text[start + max_chars // 2 : end]
            sentence_ends = [". ", "! ", "? ", "\u3002", "\uff01", "\uff1f", "\uff0e", "\u0964", "\u0965"]
            for level in (["\n\n"], ["\n"], sentence_ends, [" "]):
                cuts = [window.rfind(sep) + len(sep) for sep in level if sep in window]
                if cuts:
                    end = start + max_chars // 2 + max(cuts)
                    break
        piece = text[start:end]
        if piece.strip():
            spans.append((start + len(piece) - len(piece.lstrip()), end - (len(piece) - len(piece.rstrip()))))
        start = end
    return spans


def test_streamed_passages_equal_whole_text_passages_with_their_byte_ranges():
    import random

    rng = random.Random(0)
    pieces = ["word", " ", "\n", "\n\n", ". ", "? ", "caf\u00e9", "\u65e5\u672c", "\u3002", "  ", "\U0001f98a"]
    for _ in range(400):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 200)))
        max_chars = rng.randint(1, 60)
        splitter = PassageSplitter(max_chars)
        at = 0
        while at < len(text):  # fed in pieces of random size
            step = rng.randint(1, 40)
            splitter.feed(text[at : at + step])
            at += step
        spans = splitter.finish()
        assert [(a, b) for a, b, _, _ in spans] == _whole_text_passages(text, max_chars)
        data = text.encode()
        assert all(data[c:d].decode() == text[a:b] for a, b, c, d in spans)


def test_a_large_text_file_is_streamed_not_held(tmp_path):
    """Reading a 24 MB text file holds about one chunk and its passages' offsets, not the file."""
    import tracemalloc

    from unite_search.corpus import Entry, read_file, read_passage

    path = tmp_path / "big.txt"
    paragraph = ("Caf\u00e9 au lait and a walk by the sea. " * 40 + "\n\n").encode()
    with open(path, "wb") as fh:
        fh.write(b"\xef\xbb\xbf")  # a BOM: not text, but it shifts every byte offset by 3
        for _ in range(24 * (1 << 20) // len(paragraph)):
            fh.write(paragraph)
    st = path.stat()
    entry = Entry("big.txt", str(path), st.st_size, st.st_mtime_ns, "text")
    tracemalloc.start()
    facts = read_file(entry, passage_chars=2000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(facts.passages) > 10_000
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB while reading a {st.st_size / 2**20:.0f} MiB file"
    text = path.read_bytes()[3:].decode()
    for span in (facts.passages[0], facts.passages[5000], facts.passages[-1]):
        assert read_passage(str(path), span, "big.txt") == text[span[0] : span[1]]


def test_bad_text_is_refused_while_streaming(tmp_path):
    from unite_search.corpus import Entry, read_file

    def read(data: bytes):
        path = tmp_path / "t.txt"
        path.write_bytes(data)
        st = path.stat()
        return read_file(Entry("t.txt", str(path), st.st_size, st.st_mtime_ns, "text"), passage_chars=100)

    with pytest.raises(InputError, match=r"not valid UTF-8 \(byte 2000001\)"):
        read(b"a" * 2_000_001 + b"\xe9 and more")  # past the first 1 MiB chunk: the offset is the file's
    with pytest.raises(InputError, match="binary"):
        read(b"a" * 3_000_000 + b"\x00")
    with pytest.raises(InputError, match="no text"):
        read(b" \n" * 10)
    cut = "\u65e5".encode()  # a 3-byte character split across the 1 MiB chunk boundary is fine
    facts = read(b"a" * ((1 << 20) - 1) + cut + b" end")
    assert facts.passages[-1][1] == (1 << 20) - 1 + 1 + 4


def test_decode_text():
    assert decode_text("\ufeffcaf\u00e9".encode(), "t.txt") == "caf\u00e9"  # BOM dropped
    with pytest.raises(InputError, match="UTF-8"):
        decode_text(b"caf\xe9", "t.txt")
    with pytest.raises(InputError, match="binary"):
        decode_text(b"ab\x00cd", "t.txt")
    with pytest.raises(InputError, match="no text"):
        decode_text(b" \n\t ", "t.txt")


def test_walk_sorts_excludes_and_counts(tmp_path):
    write_photo(tmp_path / "b/z.png", seed=1)
    write_photo(tmp_path / "a.jpg", seed=2)
    (tmp_path / "doc.md").write_text("hello")
    (tmp_path / "data.csv").write_text("1,2")
    (tmp_path / "m.jsonl").write_text("")
    write_photo(tmp_path / "idx/inside.png", seed=3)
    found = walk(tmp_path, exclude=(tmp_path / "idx",))
    assert [(e.rel, e.kind) for e in found.entries] == [
        ("a.jpg", "image"),
        ("b/z.png", "image"),
        ("doc.md", "text"),
        ("m.jsonl", "manifest"),
    ]
    assert found.ignored == 1 and found.skipped == [] and found.failures == []
    assert all(os.path.isabs(e.path) and e.size > 0 for e in found.entries if e.kind != "manifest")


def test_a_tree_deeper_than_pythons_recursion_limit_is_walked(tmp_path, monkeypatch):
    """The walk recursed once a folder level: a tree 1,000 deep stopped ingest with a RecursionError."""
    deep = tmp_path / "corpus"
    deep.mkdir()
    monkeypatch.chdir(deep)  # a path this long is made one level at a time (the first working folder comes back)
    for _ in range(1200):
        os.mkdir("d")
        os.chdir("d")
    with open("leaf.txt", "w") as fh:
        fh.write("at the bottom")
    (deep / "top.txt").write_text("at the top")
    found = walk(deep)
    assert [e.rel for e in found.entries] == ["d/" * 1200 + "leaf.txt", "top.txt"] and not found.failures
    os.remove("leaf.txt")  # and taken down here: pytest's removal of old temporary folders recurses
    for _ in range(1200):
        os.chdir("..")
        os.rmdir("d")


def test_manifest_paths_are_relative_to_the_manifest(tmp_path):
    (tmp_path / "sets").mkdir()
    path = tmp_path / "sets/m.jsonl"
    path.write_text(json.dumps({"id": 7, "image": "../pics/a.png", "text": "t", "metadata": {"x": 1}}) + "\n\n")
    found = walk(tmp_path)
    items, problems = parse_manifest(found.entries[0])
    assert problems == []
    assert items[0].id == "7" and items[0].source == "sets/m.jsonl:1"
    assert items[0].image == str(tmp_path / "pics/a.png") and items[0].metadata == {"x": 1}


def test_a_manifest_line_with_nan_or_infinity_is_a_problem_of_its_own(tmp_path):
    """Python's json reads NaN and Infinity, which JSON has not: a row holding one broke every server answer
    that held it (a 500), so the line is refused where it is read."""
    lines = ['{"id": "a", "text": "t", "metadata": {"score": NaN}}', '{"id": "b", "metadata": [-Infinity]}',
             '{"id": "c", "text": "t", "metadata": {"score": 1e999}}', '{"id": "d", "text": "t"}']  # fmt: skip
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    items, problems = parse_manifest(walk(tmp_path).entries[0])
    assert [i.id for i in items] == ["d"]
    assert [(p.path, p.stage) for p in problems] == [("m.jsonl:1", "manifest"), ("m.jsonl:2", "manifest"),
                                                     ("m.jsonl:3", "manifest")]  # fmt: skip
    assert "NaN is not a JSON value" in problems[0].reason and "-Infinity is not" in problems[1].reason
    assert "1e999 is beyond a float's range" in problems[2].reason
    # a lone surrogate: JSON escapes carry one, UTF-8 cannot (every search answer holding the row failed)
    lines = ['{"id": "e", "text": "t", "metadata": {"tags": ["ok", "half \\udc00"]}}',
             '{"id": "f", "text": "t", "metadata": {"\\udc00": 1}}',
             '{"id": "g", "text": "t", "metadata": {"ok": "\\ud83d\\ude00"}}']  # fmt: skip
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    items, problems = parse_manifest(walk(tmp_path).entries[0])
    assert [i.id for i in items] == ["g"] and items[0].metadata == {"ok": "\U0001f600"}
    assert [p.reason.split("'")[1] for p in problems] == ["metadata.tags[1]", "metadata"]
    assert "not valid Unicode (a lone surrogate" in problems[0].reason


def test_a_link_to_a_folder_of_the_corpus_never_takes_the_folders_place(tmp_path):
    """The first path to reach a folder won: a link sorting before the folder ("favourites" -> "photos", or one
    deeper in an earlier folder) indexed the files under the link's path and reported the folder as a loop."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos/x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "a").mkdir()
    os.symlink(tmp_path / "photos", tmp_path / "favourites")
    os.symlink(tmp_path / "photos", tmp_path / "a/deeper")
    os.symlink(tmp_path, tmp_path / "photos/up")  # a real loop is still one
    found = walk(tmp_path)
    assert [e.rel for e in found.entries] == ["photos/x.png"]
    assert sorted((p.path, p.reason) for p in found.skipped) == [
        ("a/deeper", "symlink to a folder indexed at photos"),
        ("favourites", "symlink to a folder indexed at photos"),
        ("photos/up", "symlink loop (folder already visited)"),
    ]


def test_walk_skips_and_reports_names_that_are_not_utf8(tmp_path):
    """A Latin-1 name cannot be stored in the index: it is reported (bytes escaped), the rest is indexed."""
    write_photo(tmp_path / "good.jpg", seed=1)
    write_photo(tmp_path / "sub/inner.png", seed=2)
    (tmp_path / "plain.csv").write_text("1,2")
    base = os.fsencode(tmp_path)
    try:
        os.rename(base + b"/good.jpg", base + b"/caf\xe9.jpg")
        write_photo(tmp_path / "good.jpg", seed=3)
        os.rename(base + b"/sub", base + b"/d\xe9j\xe0")  # a folder: nothing under it is listed
        os.rename(base + b"/plain.csv", base + b"/caf\xe9.csv")  # not indexed anyway: only counted
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    found = walk(tmp_path)
    assert [e.rel for e in found.entries] == ["good.jpg"]
    reason = "file name is not valid UTF-8; rename it"
    assert [p.to_dict() for p in found.skipped] == [
        {"path": "caf\\xe9.jpg", "stage": "discover", "reason": reason},
        {"path": "d\\xe9j\\xe0", "stage": "discover", "reason": reason},
    ]
    assert found.ignored == 1 and found.failures == []
    json.dumps([p.to_dict() for p in found.skipped], ensure_ascii=False).encode("utf-8")  # printable as UTF-8


def test_a_file_rewritten_while_it_is_read_fails_and_yields_no_facts(tmp_path, monkeypatch):
    """A writer that rewrites a text file between two chunks of the read: no hash of mixed content comes out."""
    from unite_search import corpus
    from unite_search.corpus import Entry, read_file

    path = tmp_path / "a.txt"
    path.write_bytes(b"old words. " * 200_000)  # about 2 MiB: read in several chunks
    os.utime(path, ns=(1_600_000_000 * 10**9,) * 2)  # last written long ago: the rewrite moves its mtime
    st = path.stat()
    entry = Entry("a.txt", str(path), st.st_size, st.st_mtime_ns, "text")
    feed = corpus._TextStream.feed
    fed = []

    def feed_then_rewrite(self, chunk):
        feed(self, chunk)
        fed.append(len(chunk))
        if len(fed) == 2:  # in place, same size, as an editor saving over it would
            with open(path, "r+b") as fh:
                fh.write(b"new words. " * 200_000)

    monkeypatch.setattr(corpus._TextStream, "feed", feed_then_rewrite)
    with pytest.raises(InputError, match="file changed during ingest; run ingest again"):
        read_file(entry, passage_chars=200)
    assert len(fed) > 2  # the rewrite happened mid-read, not after it
    monkeypatch.undo()
    # read again with the walk's entry: the file moved on since the walk, so it fails again (nothing cached)
    with pytest.raises(InputError, match="file changed during ingest"):
        read_file(entry, passage_chars=200)
    now = path.stat()
    facts = read_file(Entry("a.txt", str(path), now.st_size, now.st_mtime_ns, "text"), passage_chars=200)
    assert (facts.size, facts.mtime_ns) == (now.st_size, now.st_mtime_ns)
    assert facts.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "text",
    ["Get free shipping over $50.\n", "The wide sea.\n", "Why skip breakfast?\n", "The moov\n", "1 2 mdat"],
)
def test_text_that_spells_a_quicktime_atom_name_is_text(tmp_path, text):
    """Bytes 4-8 of text can spell "free" or "wide"; its first 4 bytes are then no plausible atom size."""
    from unite_search.corpus import Entry, read_file

    path = tmp_path / "t.txt"
    path.write_text(text)
    st = path.stat()
    facts = read_file(Entry("t.txt", str(path), st.st_size, st.st_mtime_ns, "text"), passage_chars=200)
    assert facts.modality == "text" and len(facts.passages) == 1
    assert sniff(text.encode()) is None and sniff(text.encode(), st.st_size) is None


def test_sniff_quicktime_without_ftyp():
    """Old QuickTime files start with a bare atom: its big-endian size, then its name."""
    assert sniff(b"\x00\x00\x00\x08wide\x00\x10\x00\x00mdat") == "video"
    assert sniff(b"\x00\x00\x00\x01mdat" + (1 << 33).to_bytes(8, "big")) == "video"  # a 64-bit size follows
    assert sniff(b"\x00\x00\x00\x00mdat") == "video"  # to the end of the file
    assert sniff(b"\x00\x00\x02\x00moov") == "video" and sniff(b"\x00\x00\x00\x04moov") is None
    big = b"\x40\x00\x00\x10mdat"  # a 1 GiB mdat first: a movie when the file holds it
    assert sniff(big) is None and sniff(big, 1 << 31) == "video" and sniff(big, 1 << 20) is None


def _read(path):
    from unite_search.corpus import Entry, read_file

    st = os.stat(path)
    return read_file(Entry(path.name, str(path), st.st_size, st.st_mtime_ns, "image"), passage_chars=100)


def _png_with_exif_after_its_data(path, size, orientation):
    import struct
    import zlib

    from PIL import Image

    Image.new("RGB", size, (10, 200, 30)).save(path)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = exif.tobytes()
    chunk = struct.pack(">I", len(data)) + b"eXIf" + data + struct.pack(">I", zlib.crc32(b"eXIf" + data))
    raw = path.read_bytes()
    path.write_bytes(raw[:-12] + chunk + raw[-12:])  # just before IEND, after the image data
    return path


def test_the_read_stage_reads_image_headers_never_the_pixels(tmp_path, monkeypatch):
    """Pillow decodes a whole PNG to look for an eXIf chunk after its data: the read stage held 244 MiB for an
    8000x8000 PNG of 200 KB, outside the memory budget, and every PNG was decoded twice. And a portrait TIFF
    (orientation 6), which Pillow already gives upright, was turned a second time: width and height swapped
    in the index."""
    import struct
    import zlib

    from PIL import Image, ImageFile

    from unite_search.image import load_image

    late = _png_with_exif_after_its_data(tmp_path / "late.png", (40, 20), 6)
    plain = tmp_path / "big.png"
    Image.new("RGB", (8000, 6000), (10, 200, 30)).save(plain)
    exif = Image.Exif()
    exif[0x0112] = 6
    tiff, jpeg = tmp_path / "portrait.tif", tmp_path / "portrait.jpg"
    for path in (tiff, jpeg):
        Image.new("RGB", (40, 20), (10, 200, 30)).save(path, exif=exif)
    # ImageMagick keeps EXIF as hex in a text chunk ("Raw profile type exif"), before the data or after it
    from PIL import PngImagePlugin

    profile = "\nexif\n" + f"{len(exif.tobytes()) + 6:8d}\n" + (b"Exif\x00\x00" + exif.tobytes()).hex()
    early, after = tmp_path / "early.png", tmp_path / "after.png"
    meta = PngImagePlugin.PngInfo()
    meta.add_text("Raw profile type exif", profile)
    Image.new("RGB", (40, 20), (10, 200, 30)).save(early, pnginfo=meta)
    Image.new("RGB", (40, 20), (10, 200, 30)).save(after)
    data = b"Raw profile type exif\0\0" + zlib.compress(profile.encode())
    chunk = struct.pack(">I", len(data)) + b"zTXt" + data + struct.pack(">I", zlib.crc32(b"zTXt" + data))
    after.write_bytes(after.read_bytes()[:-12] + chunk + after.read_bytes()[-12:])
    upright = {p: load_image(str(p)).size for p in (late, plain, tiff, jpeg, early, after)}
    assert upright[late] == upright[tiff] == upright[jpeg] == upright[early] == upright[after] == (20, 40)

    def decoded(self, *args, **kwargs):
        raise AssertionError(f"{self.filename} decoded in the read stage")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decoded)
    for path, size in upright.items():
        found = _read(path)
        assert (found.width, found.height) == size, path.name


def test_a_text_is_told_by_its_bytes_not_by_its_first_words(tmp_path):
    """A text opening with a format's magic words was refused as image or video data; a UTF-16 file was
    called binary data."""
    from corpora import write_photo

    from unite_search.corpus import Entry, read_file

    def read(name: str):
        path = tmp_path / name
        st = path.stat()
        return read_file(Entry(name, str(path), st.st_size, st.st_mtime_ns, "text"), passage_chars=100)

    (tmp_path / "gif.txt").write_text("GIF89a is the name of the format's second version, from 1989.\n")
    (tmp_path / "ftyp.md").write_text("The ftyp box opens an MP4 file: four bytes of size, then its type.\n")
    (tmp_path / "riff.txt").write_text("RIFF1234WEBP is how a WebP file begins, in bytes.\n")
    (tmp_path / "spaces.txt").write_text("GIF89a\u00a0and\u3000soft\u00adhyphen, a\u200djoiner\fand a page\n")
    for name in ("gif.txt", "ftyp.md", "riff.txt", "spaces.txt"):
        assert len(read(name).passages) == 1, name
    write_photo(tmp_path / "photo.png", seed=1)
    (tmp_path / "photo.txt").write_bytes((tmp_path / "photo.png").read_bytes())  # an image is still refused
    with pytest.raises(InputError, match="content is image data but the extension says text"):
        read("photo.txt")
    (tmp_path / "wide.txt").write_text("a note written in UTF-16\n", encoding="utf-16")
    with pytest.raises(InputError, match=r"text is UTF-16 \(by its byte order mark\); convert it to UTF-8"):
        read("wide.txt")
    with pytest.raises(InputError, match="text is UTF-16"):
        decode_text((tmp_path / "wide.txt").read_bytes(), "wide.txt")
    (tmp_path / "cjk.txt").write_text("中文的笔记" * 20, encoding="utf-16")  # no NUL byte in it
    with pytest.raises(InputError, match="text is UTF-16"):
        read("cjk.txt")
    (tmp_path / "nul.txt").write_bytes(b"text\x00with a NUL")
    with pytest.raises(InputError, match="binary data"):
        read("nul.txt")


def test_passages_are_cut_alike_whatever_the_line_ends_and_never_inside_a_character():
    """CRLF and CR files were cut elsewhere than the same text with LF (a blank line unseen); a hard cut (no
    space in the second half of the window) parted flags, emoji sequences and accents from their letter."""
    lf = "alpha beta gamma. " * 3 + "\n\n" + "delta epsilon zeta " * 2 + "\nlast line here and more words"
    cuts = split_passages(lf, 100)
    assert len(cuts) == 2
    for ending in ("\r\n", "\r"):
        text = lf.replace("\n", ending)
        assert [text[a:b].replace(ending, "\n") for a, b in split_passages(text, 100)] == [lf[a:b] for a, b in cuts]
    flags = "\U0001f1eb\U0001f1f7\U0001f1e9\U0001f1ea\U0001f1ee\U0001f1f9" * 12  # FR DE IT, no spaces
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467" * 12
    accents = "e\u0301a\u0300" * 30  # letters and their combining accents (NFD)
    for text in (flags, family, accents):
        spans = split_passages(text, 17)
        assert "".join(text[a:b] for a, b in spans) == text  # nothing lost
        for a, b in spans:
            assert not unicodedata.category(text[a]).startswith("M") and text[a] != "\u200d"
            assert b == len(text) or text[b - 1] != "\u200d"
        if text is flags:
            assert all((b - a) % 2 == 0 for a, b in spans)  # whole flags only


def test_passages_of_scripts_without_spaces_end_at_sentences_and_keep_syllables_whole():
    """Chinese and Japanese were cut mid-sentence every ``max_chars`` (only ". " counted as a sentence end), and a
    hard cut parted Hangul syllables written in jamo and Indic conjuncts (a consonant, virama, consonant)."""
    import regex

    chinese = "\u4eca\u5929\u5929\u6c14\u5f88\u597d\u3002" * 10  # 今天天气很好。 x10: 70 characters
    spans = split_passages(chinese, 30)
    assert all(chinese[b - 1] == "\u3002" for _, b in spans)  # each passage ends a sentence
    assert "".join(chinese[a:b] for a, b in spans) == chinese
    english = "Is this the one? I think it is not"
    assert [english[a:b] for a, b in split_passages(english, 24)] == ["Is this the one?", "I think it is not"]
    jamo = "\u1100\u1161\u11a8" * 20  # 각 as three conjoining jamo, 20 times
    devanagari = "\u0915\u094d\u0937" * 20  # क्ष: two consonants joined by a virama
    for text in (jamo, devanagari):
        for max_chars in (10, 11, 13):
            spans = split_passages(text, max_chars)
            assert "".join(text[a:b] for a, b in spans) == text
            assert all((b - a) % 3 == 0 for a, b in spans), (max_chars, spans)  # whole syllables only
            assert all(regex.match(r"\X", text[a:]).end() == 3 for a, _ in spans)
    # a space or a full stop followed by a mark is one character with it: no place to cut
    for text in ("aaaaaaaaaa \u0301" + "b" * 14, "\u4e2d" * 12 + "\u3002\u20dd" + "\u6587" * 12):
        spans = split_passages(text, 20)
        assert "".join(text[a:b] for a, b in spans) == text
        assert all(b == len(text) or not regex.match(r"\p{GCB=Extend}", text[b]) for _, b in spans), spans
