"""Training data stays inside its folder: media paths leading outside it are refused unless allowed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from unite_search.errors import InputError
from unite_search.train.data import load_pairs, pairs_from_folder


@pytest.fixture
def tree(tmp_path, media) -> dict[str, Path]:
    """``data/`` (the training folder) with an image and two symlinks, and ``outside/`` beside it."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    shutil.copy(media["image"], data / "a.png")
    shutil.copy(media["image"], outside / "secret.png")
    (data / "leak.png").symlink_to(outside / "secret.png")
    (data / "dangling.png").symlink_to(outside / "missing.png")  # an outside file that does not exist
    (data / "alias.png").symlink_to("a.png")  # stays inside
    return {"data": data, "outside": outside, "secret": outside / "secret.png"}


def _write(path: Path, images: list) -> Path:
    path.write_text("".join(json.dumps({"query": {"text": "x"}, "candidate": {"image": i}}) + "\n" for i in images))
    return path


def _refusal(tree: dict[str, Path], line: int, what: str = "candidate.image") -> str:
    folder = os.path.realpath(tree["data"])
    return (f"{tree['data'] / 'pairs.jsonl'}:{line}: '{what}' is outside the data folder ({folder}); "
            "pass allow_outside=True (--allow-outside) to read it")  # fmt: skip


def test_media_outside_the_data_folder_are_refused(tree):
    lines = ["a.png", str(tree["secret"]), "../outside/secret.png", "leak.png", "alias.png", ["../outside/secret.png"]]
    path = _write(tree["data"] / "pairs.jsonl", lines)

    with pytest.raises(InputError) as raised:
        load_pairs(path)
    listed = str(raised.value).split("\n")  # every bad line, in order, not just the first
    assert listed[0].startswith(f"4 bad lines in {tree['data'] / 'pairs.jsonl'}")
    assert listed[1:] == [_refusal(tree, n) for n in (2, 3, 4, 6)]
    pairs, problems = load_pairs(path, on_error="skip")
    assert [p.line for p in pairs] == [1, 5]  # a.png, and the symlink that stays inside
    assert problems == [_refusal(tree, n) for n in (2, 3, 4, 6)]

    opened, problems = load_pairs(path, on_error="skip", allow_outside=True)
    assert problems == [] and [p.line for p in opened] == [1, 2, 3, 4, 5, 6]
    assert {os.path.realpath(p.candidate.image) for p in opened[1:4]} == {os.path.realpath(tree["secret"])}


def test_a_data_folder_reached_through_a_symlink_reads_its_own_files(tree, tmp_path):
    (tmp_path / "shortcut").symlink_to(tree["data"], target_is_directory=True)
    shortcut = tmp_path / "shortcut"
    lines = ["a.png", "alias.png", str(shortcut / "a.png"), str(tree["data"] / "a.png")]
    _write(tree["data"] / "pairs.jsonl", lines)
    pairs, problems = load_pairs(shortcut / "pairs.jsonl")
    assert problems == [] and len(pairs) == 4  # both names of the folder are inside it
    # opened by its real name, an absolute path through another name is judged by its text, without a look
    # at the disk: refused like any path leaving the folder
    pairs, problems = load_pairs(tree["data"] / "pairs.jsonl", on_error="skip")
    assert [p.line for p in pairs] == [1, 2, 4] and problems == [_refusal(tree, 3)]


def test_the_refusal_does_not_tell_whether_the_outside_file_exists(tree):
    existing = [str(tree["secret"]), "../outside/secret.png", "leak.png"]
    missing = [str(tree["outside"] / "missing.png"), "../outside/missing.png", "dangling.png"]
    messages = set()
    for image in existing + missing:
        with pytest.raises(InputError) as raised:
            load_pairs(_write(tree["data"] / "pairs.jsonl", [image]))
        messages.add(str(raised.value))
    assert messages == {_refusal(tree, 1)}
    # only a caller who opted in learns that the missing ones are missing
    for image in missing:
        with pytest.raises(InputError, match="file not found"):
            load_pairs(_write(tree["data"] / "pairs.jsonl", [image]), allow_outside=True)


def test_a_query_side_refusal_names_the_query(tree):
    path = tree["data"] / "pairs.jsonl"
    path.write_text(json.dumps({"query": {"image": "../outside/secret.png"}, "candidate": {"text": "y"}}) + "\n")
    with pytest.raises(InputError) as raised:
        load_pairs(path)
    assert str(raised.value) == _refusal(tree, 1, "query.image")


def test_pairs_from_a_folder_skip_symlinks_leading_outside(tree):
    data, outside = tree["data"], tree["outside"]
    (data / "a.txt").write_text("inside caption")
    (data / "leak.txt").write_text("leaked image")  # its image is the symlink to outside/secret.png
    (outside / "note.txt").write_text("outside caption")
    (data / "b.txt").symlink_to(outside / "note.txt")
    shutil.copy(data / "a.png", data / "b.png")

    with pytest.warns(UserWarning, match=r"skipped 2 file\(s\) leading outside .*allow_outside=True"):
        pairs = pairs_from_folder(data)
    assert [(p.query.text, Path(p.candidate.image).name) for p in pairs] == [("inside caption", "a.png")]
    opened = pairs_from_folder(data, allow_outside=True)
    assert sorted(p.query.text for p in opened) == ["inside caption", "leaked image", "outside caption"]


def test_pairs_from_an_index_skip_media_leading_outside_the_corpus(encoder, tmp_path):
    from unite_search.ingestion import ingest
    from unite_search.train.data import pairs_from_index

    corpus = tmp_path / "corpus"
    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "corpus", corpus)
    ingest(corpus, tmp_path / "index", encoder=encoder)
    # after indexing, the photo is swapped for a symlink to a copy outside the corpus
    shutil.move(corpus / "photos" / "beach_day.png", tmp_path / "beach_day.png")
    (corpus / "photos" / "beach_day.png").symlink_to(tmp_path / "beach_day.png")

    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) leading outside .*photos/beach_day\.png"):
        pairs = pairs_from_index(tmp_path / "index")
    assert [p.query.text for p in pairs] == ["Coloured bars sliding to the right."]
    opened = pairs_from_index(tmp_path / "index", allow_outside=True)
    assert sorted(p.query.text for p in opened) == [
        "A sunny beach under a blue sky.",
        "Coloured bars sliding to the right.",
    ]


# ---------------------------------------------------------------- media probed before training


@pytest.fixture
def mixed(tmp_path, media) -> Path:
    """A pair file whose lines 1 and 5 are good and the others name media the encoder cannot read."""
    from conftest import write_empty_video

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(media["image"], data / "good.png")
    shutil.copy(media["video2"], data / "good.mp4")
    write_empty_video(data / "zero.mp4")  # a video stream declared, no frame in it
    (data / "notes.jpg").write_text("a text file, not a JPEG\n")
    raw = Path(media["image2"]).read_bytes()
    (data / "cut.jpg").write_bytes(raw[: len(raw) // 3])  # a JPEG cut short
    lines = [
        {"query": {"text": "a gradient"}, "candidate": {"image": "good.png"}},
        {"query": {"text": "bars"}, "candidate": {"video": "zero.mp4"}},
        {"query": {"text": "a photo"}, "candidate": {"image": "notes.jpg"}},
        {"query": {"text": "secrets"}, "candidate": {"image": "/etc/passwd"}},
        {"query": {"text": "bars counting"}, "candidate": {"video": "good.mp4"}},
        {"query": {"image": "cut.jpg", "text": "what is this"}, "candidate": {"text": "a cut photo"}},
        {"query": {"text": "an image as a video"}, "candidate": {"video": "good.png"}},
    ]
    path = data / "pairs.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _line(problem: str) -> int:
    return int(problem.split(": ", 1)[0].rsplit(":", 1)[1])


def test_bad_media_are_found_before_training_each_with_its_line(mixed):
    pairs, problems = load_pairs(mixed, on_error="skip")
    assert [p.line for p in pairs] == [1, 5]
    assert [_line(p) for p in problems] == [2, 3, 4, 6, 7]
    assert all(p.startswith(f"{mixed}:") for p in problems)
    by_line = {_line(p): p.split(": ", 1)[1] for p in problems}
    assert by_line[2].startswith(f"'candidate.video' {mixed.parent / 'zero.mp4'}: ")
    assert "no video stream" in by_line[2] or "no frames" in by_line[2]
    assert by_line[3] == (f"'candidate.image' {mixed.parent / 'notes.jpg'}: cannot read image: "
                          f"cannot identify image file '{mixed.parent / 'notes.jpg'}'")  # fmt: skip
    assert "is outside the data folder" in by_line[4]  # refused unread
    assert by_line[6].startswith(f"'query.image' {mixed.parent / 'cut.jpg'}: cannot read image: ")
    assert "truncated" in by_line[6]
    assert by_line[7].startswith(f"'candidate.video' {mixed.parent / 'good.png'}: ")
    assert all("\n" not in p for p in problems)

    # under "raise" every bad line is listed, not just the first
    with pytest.raises(InputError) as raised:
        load_pairs(mixed)
    head, *listed = str(raised.value).split("\n")
    assert head.startswith(f"5 bad lines in {mixed}") and listed == problems

    # with outside files allowed, /etc/passwd is opened, and refused as an image
    pairs, problems = load_pairs(mixed, on_error="skip", allow_outside=True)
    assert [p.line for p in pairs] == [1, 5]
    passwd = next(p for p in problems if _line(p) == 4)
    assert passwd.endswith("'candidate.image' /etc/passwd: cannot read image: cannot identify image file '/etc/passwd'")


def test_probe_results_are_cached_by_path_size_and_mtime(mixed):
    from unite_search.train.probe import probe_stats

    opened, cached = probe_stats.opened, probe_stats.cached
    load_pairs(mixed, on_error="skip")
    assert probe_stats.opened - opened == 6  # every file named inside the folder, once
    assert probe_stats.cached == cached  # these paths were never seen before
    load_pairs(mixed, on_error="skip")
    # the second run opens only the bad files again (a failure is not remembered); the good two come from the cache
    assert (probe_stats.opened - opened, probe_stats.cached - cached) == (6 + 4, 2)
    # a changed file is probed again: the good image is now a text file of another size
    good = mixed.parent / "good.png"
    good.write_text("no longer an image")
    pairs, problems = load_pairs(mixed, on_error="skip")
    assert [p.line for p in pairs] == [5] and _line(problems[0]) == 1
    assert (probe_stats.opened - opened, probe_stats.cached - cached) == (6 + 4 + 5, 3)
    # probe=False checks structure only (the old behaviour)
    pairs, _ = load_pairs(mixed, on_error="skip", probe=False)
    assert [p.line for p in pairs] == [1, 2, 3, 5, 6, 7]


def test_every_malformed_line_is_a_reported_problem_never_a_crash(tmp_path):
    good = json.dumps({"query": {"text": "q"}, "candidate": {"text": "c"}}).encode()
    bad_targets = [1, ["text", 1], [None], {"text": 1}]
    lines = [b"\xef\xbb\xbf" + good, good]  # a BOM before the first line is not content
    lines += [json.dumps({"query": {"text": "q"}, "candidate": {"text": "c"}, "target_modal": t}).encode()
              for t in bad_targets]  # fmt: skip
    lines.append('{"query": {"text": "caf\xe9"}, "candidate": {"text": "c"}}'.encode("latin-1"))
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    pairs, problems = load_pairs(path, on_error="skip", probe=False)
    assert [p.line for p in pairs] == [1, 2]
    assert [p.split(": ", 1)[1] for p in problems] == [
        *(f"target_modal: a modality set is a name or a list of names, not {t!r}" for t in bad_targets),
        "not UTF-8 text",
    ]
    with pytest.raises(InputError, match="5 bad lines"):
        load_pairs(path, probe=False)
