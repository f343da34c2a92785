"""The ``where`` validator: a table of accepted and rejected filters, and every accepted one run through LanceDB."""

from __future__ import annotations

import pyarrow as pa
import pytest

from unite_search.errors import PlanError
from unite_search.filters import validate_where

# id, key, modality, path, paths, caption, width, height, duration, start
ROWS = [
    ("a", 1, "image", "photos/small/a.jpg", ["photos/small/a.jpg"], "a cat", 100, 80, 0.0, 0.0),
    ("b", 2, "image", "photos/small/B.PNG", ["photos/small/B.PNG"], None, 250, 600, 0.0, 0.0),
    ("c", 3, "image", "it's.jpg", ["it's.jpg"], "a dog", 4000, 300, 0.0, 0.0),
    ("d", 4, "video", "clips/d.mp4", ["clips/d.mp4", "clips/d2.mp4"], None, 1920, 1080, 12.0, 0.0),
    ("e", 5, "video", "clips/e.mp4", ["clips/e.mp4"], "waves", 640, 480, 5.0, 3.5),
    ("f", 6, "text", "notes/f.txt", [], "notes", 0, 0, 0.0, 0.0),
]
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("key", pa.int64()),
        ("modality", pa.string()),
        ("path", pa.string()),
        ("paths", pa.list_(pa.string())),
        ("caption", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("duration", pa.float64()),
        ("start", pa.float64()),
    ]
)
COLUMNS = tuple(SCHEMA.names)  # the table also stores a vector, which is not filterable

# filter -> the ids of ROWS it keeps, worked out by hand
ACCEPTED = {
    "width >= 200": "bcde",
    "path LIKE 'photos/small/%'": "ab",
    "width > 100000": "",
    "width >= 1000 AND height < 500": "c",
    "NOT (width > 3)": "f",
    "caption IS NULL": "bd",
    "caption IS NOT NULL": "acef",
    "modality IN ('image', 'video')": "abcde",
    "duration BETWEEN 1 AND 10": "e",
    "path = 'it''s.jpg'": "c",
    "start >= 3.5e0": "e",
    "lower(path) LIKE '%.png'": "b",
    '"width" > 1': "abcde",
    "width * 2 > height": "acde",
    "-width < 0": "abcde",
    "`width` > 1": "abcde",
    "WIDTH > 1": "abcde",  # unquoted names fold to lowercase
    "width <> 250": "acdef",
    "width != 250": "acdef",
    "width = 250": "b",
    "modality NOT IN ('image')": "def",
    "path NOT LIKE 'photos/%'": "cdef",
    "caption ILIKE 'A %'": "ac",
    "width NOT BETWEEN 100 AND 1000": "cdf",
    "(width > 1) IS TRUE": "abcde",
    "width > 1 IS NOT FALSE": "abcde",
    "TRUE": "abcdef",
    "FALSE": "",
    "array_has_any(paths, ['clips/d2.mp4', 'x'])": "d",
    "regexp_like(path, '^clips/')": "de",
    "key % 2 = 0": "bdf",
    "key IN (1, 2, 3)": "abc",
    "id = 'a'": "a",
    "width > 1 OR caption IS NULL AND key = 1": "abcde",  # AND binds tighter than OR
    "NOT NOT width > 1": "abcde",
    "width - -1 > 1": "abcde",
    "width / 2 + 1 >= 126": "bcde",
    "CAST(width AS DOUBLE) > 1.5": "abcde",
    "width >= 200 and height < 500": "ce",  # keywords in any case
    "width >= 200\n  AND height < 500": "ce",
    "  caption IS NULL OR width > 1000  ": "bcd",
    "(((width > 1)))": "abcde",
    "(width > 1) = TRUE": "abcde",
}

REJECTED = {
    "width > 0; width > 100000": "';' at character 10: a filter is one expression (no ';')",
    "width > 100000 junk junk": "unexpected 'junk' after the end of the expression at character 16",
    "width > 1 ORDER BY key": "unexpected 'ORDER' after the end of the expression at character 11",
    "width > 1 AS junk": "unexpected 'AS' after the end",
    "no_such_column = 3": "unknown column 'no_such_column' at character 1 (columns: caption, duration, height, id,",
    '"WIDTH" > 1': "unknown column 'WIDTH'",  # a quoted name keeps its case
    'caption = "a cat"': "unknown column 'a cat'",  # double quotes name a column, not a string
    "vector IS NULL": "unknown column 'vector'",
    "width": "'width' at character 1 is a value, not a condition: a filter must be a condition such as width >= 1000",
    "1": "'1' at character 1 is a value, not a condition",
    "'a'": "\"'a'\" at character 1 is a value, not a condition",
    "NULL": "is a value, not a condition",
    "width + 1": "'width + 1' at character 1 is a value, not a condition",
    "(width + 1)": "is a value, not a condition",
    "[1, 2]": "is a value, not a condition",
    "width > 1 AND height": "'height' at character 15 is a value, not a condition",
    "width OR height > 1": "'width' at character 1 is a value",
    "NOT width": "'width' at character 5 is a value",
    "width > ": "the filter ends early: expected a value after '>'",
    "width > 1 AND": "the filter ends early: expected a value after 'AND'",
    "AND": "expected a value, found 'AND' at character 1",
    "(width > 1": "'(' at character 1 is never closed",
    "lower(path LIKE 'a'": "'(' at character 6 is never closed",
    "width > 1)": "')' at character 10 closes no '('",
    "(width > 1, height > 2)": "expected ')' to close '(' at character 1, found ',' at character 11",
    "path = 'open": "unterminated string starting at character 8",
    '"width > 1': "unterminated quoted identifier starting at character 1",
    '"" > 1': "empty quoted identifier",
    "width > 1 -- comment": "'--' at character 11: comments are not allowed",
    "width > 1 /* x */": "'/*' at character 11: comments are not allowed",
    "width >> 2": "expected a value, found '>' at character 8",
    "width == 2": "'==' at character 7: compare with '='",
    "width = = 2": "expected a value, found '=' at character 9",
    "width > 1 && height > 1": "unexpected character '&' at character 11",
    "width > 1e": "'1e' at character 9 is not a number",
    "width > 3px": "'3px' at character 9 is not a number",
    "width IN ()": "expected a value, found ')' at character 11",
    "width IN 1": "expected '(' after IN, found '1'",
    "width NOT 3": "expected LIKE, ILIKE, IN or BETWEEN after NOT, found '3' at character 11",
    "width IS 3": "expected NULL, TRUE or FALSE after IS, found '3'",
    "width BETWEEN 1 OR 2": "expected AND in BETWEEN ... AND ..., found 'OR'",
    "CAST(width DOUBLE) > 1": "expected AS in CAST(value AS type), found 'DOUBLE'",
    "metadata.x = 1": "unexpected character '.' at character 9",  # no struct fields
}


@pytest.mark.parametrize("expr", sorted(ACCEPTED))
def test_accepted(expr):
    assert validate_where(expr, COLUMNS) == expr.strip()


@pytest.mark.parametrize("expr", sorted(REJECTED))
def test_rejected(expr):
    with pytest.raises(PlanError) as err:
        validate_where(expr, COLUMNS)
    message = str(err.value)
    assert REJECTED[expr] in message
    assert message.startswith(f"invalid where filter {expr!r}: ")
    assert "\n" not in message


@pytest.mark.parametrize("expr", ["", "   ", "\n\t", None, 3])
def test_empty_or_not_a_string(expr):
    with pytest.raises(PlanError, match="where must be a non-empty string"):
        validate_where(expr, COLUMNS)


@pytest.mark.parametrize(
    "expr", ["(" * 400 + "width > 1" + ")" * 400, "NOT " * 1000 + "width > 1", "- " * 1500 + "width < 0"]
)
def test_deep_nesting_is_a_plan_error(expr):
    with pytest.raises(PlanError, match="nests too deeply"):
        validate_where(expr, COLUMNS)


@pytest.mark.parametrize("joiner", [" AND ", " OR "])
def test_a_chain_past_the_operator_limit_is_refused_and_one_at_it_evaluates(table, joiner):
    """A chain of 50,000 ANDs killed the process in LanceDB (its native stack overflowed), with no exception."""
    from unite_search.filters import MAX_OPERATORS

    at = joiner.join(["width > 0"] * (MAX_OPERATORS // 2))  # comparisons count too
    assert ids(table, validate_where(at, COLUMNS)) == "abcde"
    with pytest.raises(PlanError, match=f"chains more than {MAX_OPERATORS} operators"):
        validate_where(joiner.join(["width > 0"] * 50_000), COLUMNS)


@pytest.mark.parametrize(
    "chain",
    [
        lambda n: "width > 0" + " IS TRUE" * (n - 2),
        lambda n: "width" + " + 0" * (n - 2) + " > 0",
        lambda n: "(width > 0)" + " = TRUE" * (n - 2),
        lambda n: "width" + " - 0" * (n // 2) + " > 0" + " IS NOT FALSE" * (n - n // 2 - 2),
        lambda n: " AND ".join(["width > 0"] * 20 + ["width > 0" + " IS TRUE" * (n - 3)]),
    ],
)
def test_a_filter_past_the_depth_limit_is_refused_and_one_at_it_evaluates(table, chain):
    """Far shorter chains than of ANDs killed the process the same way: 350 chained IS TRUE (3 KB) or 700
    chained '+ 1' (validated before: under 1,000 operators, or not counted at all)."""
    from unite_search.filters import MAX_DEPTH

    assert ids(table, validate_where(chain(MAX_DEPTH), COLUMNS)) == "abcde"
    with pytest.raises(PlanError, match=f"nests more than {MAX_DEPTH} levels deep"):
        validate_where(chain(MAX_DEPTH + 1), COLUMNS)
    with pytest.raises(PlanError, match=f"nests more than {MAX_DEPTH} levels deep"):
        validate_where(chain(400), COLUMNS)


def test_a_long_filter_is_shortened_in_the_message():
    expr = "key IN (" + ", ".join(map(str, range(1000))) + ") AND nope > 1"
    with pytest.raises(PlanError) as err:
        validate_where(expr, COLUMNS)
    assert f"unknown column 'nope' at character {len(expr) - 7}" in str(err.value)
    assert len(str(err.value)) < 300


def test_columns_may_be_any_iterable_and_keywords_any_case():
    assert validate_where("Width >= 1 aNd NoT height Is NuLl", (c for c in ["width", "height"])) == (
        "Width >= 1 aNd NoT height Is NuLl"
    )
    with pytest.raises(PlanError, match=r"unknown column 'width' at character 1 \(columns: none\)"):
        validate_where("width > 1", [])


def test_function_names_are_not_columns():
    assert validate_where("regexp_match(path, 'x')", COLUMNS)
    assert validate_where("array_has_any(paths, [])", COLUMNS)
    assert validate_where("now() IS NOT NULL", COLUMNS)
    with pytest.raises(PlanError, match="unknown column 'nope'"):
        validate_where("lower(nope) = 'a'", COLUMNS)


def test_every_accepted_filter_accepts_the_real_columns():
    from unite_search.schema import FILTER_COLUMNS

    for expr in ACCEPTED:
        validate_where(expr, FILTER_COLUMNS)
    with pytest.raises(PlanError, match="unknown column 'vector'"):
        validate_where("vector IS NULL", FILTER_COLUMNS)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    import lancedb

    data = pa.Table.from_pylist([dict(zip(COLUMNS, row, strict=True)) for row in ROWS], schema=SCHEMA)
    vectors = pa.array([[float(i), 1.0] for i in range(len(ROWS))], pa.list_(pa.float32(), 2))
    data = data.append_column("vector", vectors)
    db = lancedb.connect(str(tmp_path_factory.mktemp("lance")))
    return db.create_table("t", data=data)


def ids(table, expr: str) -> str:
    return "".join(sorted(table.search().where(expr).limit(None).to_arrow().column("id").to_pylist()))


@pytest.mark.parametrize("expr", sorted(ACCEPTED))
def test_lancedb_evaluates_every_accepted_filter(table, expr):
    assert ids(table, validate_where(expr, COLUMNS)) == ACCEPTED[expr]


def test_lancedb_ignores_what_follows_the_first_expression(table):
    """Why the validator exists: LanceDB 0.40 reads the first expression and silently drops the rest."""
    assert ids(table, "width > 0; width > 100000") == "abcde"  # the ';' and the second filter are dropped
    assert ids(table, "width > 100000 junk junk") == ""  # no error: the junk is ignored
    assert ids(table, "width > 1 ORDER BY key") == "abcde"
    assert ids(table, "width > 1 -- AND width > 100000") == "abcde"
    assert ids(table, "vector IS NULL") == ""  # LanceDB can filter on the vector; the index does not offer it
    for expr in ("width > 0; width > 100000", "width > 100000 junk junk", "width > 1 ORDER BY key"):
        with pytest.raises(PlanError):
            validate_where(expr, COLUMNS)
