"""Strict validation of a query's ``where`` filter.

LanceDB hands a filter to DataFusion's SQL parser, which stops after the first expression it can read and
ignores whatever follows: ``width > 0; width > 100000`` filters on ``width > 0`` alone, and
``width > 100000 junk junk``, ``... ORDER BY key`` or a ``-- comment`` pass as if the tail were not there.
A typo would then silently widen or narrow a search, so :func:`validate_where` parses the filter first and
accepts exactly one boolean expression over the stored columns, in the SQL subset LanceDB filters use:

* identifiers: bare ``[A-Za-z_][A-Za-z0-9_]*`` (compared lowercased, as DataFusion folds unquoted names), or
  quoted with backticks or double quotes (exact case; a doubled quote stands for itself);
* literals: numbers (``3``, ``2.5``, ``1e3``), single-quoted strings (``'it''s'``), TRUE, FALSE, NULL and
  arrays ``[a, b]``;
* ``= != <> < <= > >=``, ``+ - * / %``, unary minus, parentheses, AND, OR, NOT, ``[NOT] LIKE``,
  ``[NOT] ILIKE``, ``[NOT] IN (list)``, ``IS [NOT] NULL/TRUE/FALSE``, ``[NOT] BETWEEN a AND b``;
* function calls ``name(arg, ...)`` and ``CAST(x AS type)``: LanceDB checks function names and types.

The filter as a whole (and each operand of AND, OR and NOT) must be a condition: a comparison, a test, TRUE,
FALSE or a function call, not a bare value such as ``width`` or ``width + 1``. ``;``, comments and anything
after the expression are errors. Positions in messages count characters from 1.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, NoReturn

from .errors import PlanError

__all__ = ["validate_where"]

# Reserved: as bare words these are never column or function names.
_KEYWORDS = frozenset({"AND", "OR", "NOT", "LIKE", "ILIKE", "IN", "IS", "NULL", "TRUE", "FALSE", "BETWEEN"})
_OPS = ("<=", ">=", "<>", "!=", "=", "<", ">", "+", "-", "*", "/", "%", "(", ")", "[", "]", ",")  # longest first
_COMPARISONS = frozenset({"=", "!=", "<>", "<", "<=", ">", ">="})
_ARITHMETIC = (("+", "-"), ("*", "/", "%"))  # loosest first; unary minus binds tightest
_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXAMPLE = "a filter must be a condition such as width >= 1000"
# binary operators (AND, OR, comparisons, arithmetic) one filter may chain: LanceDB evaluates such a chain
# by recursion, and some 45,000 ANDs overflowed its native stack, which killed the process (no exception)
MAX_OPERATORS = 1000
# levels of the expression tree below AND/OR: every chained IS, LIKE, IN, BETWEEN, comparison or arithmetic
# operator, NOT, unary minus or call nests one level. A far shorter chain of these overflows LanceDB's
# native stack: 350 chained IS TRUE (3 KB) or 700 chained "+ 1" killed the process, 300 and 500 did not
MAX_DEPTH = 64

# What an expression yields: a condition, a value, or either (a function call: LanceDB knows its type).
Kind = Literal["bool", "value", "any"]


def _quote(expr: str) -> str:
    # A generated filter (a long IN list) would otherwise bury the reason at the end of a huge message.
    return repr(expr if len(expr) <= 120 else expr[:100] + "...")


@dataclass(frozen=True)
class _Token:
    kind: Literal["word", "quoted", "number", "string", "op", "end"]
    text: str  # as written
    value: str  # a quoted identifier without its quotes
    pos: int  # offset in the filter as given

    def keyword(self, *names: str) -> bool:
        return self.kind == "word" and self.text.upper() in names

    def where(self) -> str:
        return f"{self.text!r} at character {self.pos + 1}"


def _tokenize(expr: str, fail: Callable[[str], NoReturn]) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(expr)
    while i < n:
        c, two = expr[i], expr[i : i + 2]
        if c.isspace():
            i += 1
            continue
        if c == ";":
            fail(f"';' at character {i + 1}: a filter is one expression (no ';')")
        if two in ("--", "/*"):
            fail(f"{two!r} at character {i + 1}: comments are not allowed (LanceDB would ignore the rest)")
        if two == "==":
            fail(f"'==' at character {i + 1}: compare with '='")
        if c in "'\"`":
            j = i + 1
            while (j := expr.find(c, j)) >= 0 and expr[j + 1 : j + 2] == c:
                j += 2
            what = "string" if c == "'" else "quoted identifier"
            if j < 0:
                fail(f"unterminated {what} starting at character {i + 1}")
            value = expr[i + 1 : j].replace(c * 2, c)
            if c != "'" and not value:
                fail(f"empty quoted identifier at character {i + 1}")
            tokens.append(_Token("string" if c == "'" else "quoted", expr[i : j + 1], value, i))
            i = j + 1
            continue
        if m := _NUMBER.match(expr, i):
            end = m.end()
            while end < n and (expr[end].isalnum() or expr[end] in "_."):  # 1e, 2.5.1, 3px
                end += 1
            if end > m.end():
                fail(f"{expr[i:end]!r} at character {i + 1} is not a number")
            tokens.append(_Token("number", m.group(), m.group(), i))
            i = end
            continue
        if m := _WORD.match(expr, i):
            tokens.append(_Token("word", m.group(), m.group(), i))
            i = m.end()
            continue
        op = next((o for o in _OPS if expr.startswith(o, i)), None)
        if op is None:
            fail(f"unexpected character {c!r} at character {i + 1}")
        tokens.append(_Token("op", op, op, i))
        i += len(op)
    tokens.append(_Token("end", "", "", n))
    return tokens


class _Parser:
    """Recursive descent, loosest binding first: OR, AND, NOT, predicates, + -, * / %, unary minus, primaries."""

    def __init__(self, expr: str, columns: frozenset[str]):
        self.expr, self.columns = expr, columns
        self.tokens = _tokenize(expr, self.fail)
        self.i = 0
        self.end = 0  # where the last consumed token ends, to quote a whole operand in messages
        self.operators = 0
        self.height = 0  # levels of the expression parsed last (a value or a column: 1)

    def fail(self, message: str) -> NoReturn:
        raise PlanError(f"invalid where filter {_quote(self.expr)}: {message}")

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        self.end = tok.pos + len(tok.text)
        return tok

    def operator(self) -> None:
        """Consume a binary operator, counting it against :data:`MAX_OPERATORS`."""
        self.operators += 1
        if self.operators > MAX_OPERATORS:
            self.fail(f"it chains more than {MAX_OPERATORS} operators; use IN (...) for a list of values")
        self.advance()

    def nest(self, height: int) -> None:
        """The expression parsed last is ``height`` levels deep, at most :data:`MAX_DEPTH`."""
        if height > MAX_DEPTH:
            self.fail(f"it nests more than {MAX_DEPTH} levels deep (chained IS, LIKE, IN, BETWEEN, comparisons, "
                      "arithmetic or NOT); LanceDB cannot evaluate that")  # fmt: skip
        self.height = height

    def at_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.text in ops

    def unexpected(self, expected: str) -> NoReturn:
        if self.tok.kind == "end":
            self.fail(f"the filter ends early: expected {expected} after {self.tokens[self.i - 1].text!r}")
        self.fail(f"expected {expected}, found {self.tok.where()}")

    def close(self, text: str, opener: _Token) -> None:
        if self.at_op(text):
            self.advance()
        elif self.tok.kind == "end":
            self.fail(f"{opener.where()} is never closed")
        else:
            self.fail(f"expected {text!r} to close {opener.where()}, found {self.tok.where()}")

    def condition(self, kind: Kind, start: int) -> None:
        if kind == "value":
            text = self.expr[start : self.end]
            self.fail(f"{text!r} at character {start + 1} is a value, not a condition: {_EXAMPLE}")

    def parse(self) -> None:
        kind, start = self.logical()
        if self.at_op(")"):
            self.fail(f"{self.tok.where()} closes no '('")
        if self.tok.kind != "end":
            self.fail(f"unexpected {self.tok.text!r} after the end of the expression at character {self.tok.pos + 1}")
        self.condition(kind, start)

    def logical(self, words: tuple[str, ...] = ("OR", "AND")) -> tuple[Kind, int]:
        """ORs of ANDs of NOTs: each level's operands come from the level below."""
        if not words:
            return self.not_()
        kind, start = self.logical(words[1:])
        height, links = self.height, 0
        while self.tok.keyword(words[0]):  # a chain of ANDs costs LanceDB little: MAX_OPERATORS bounds it
            self.condition(kind, start)
            self.operator()
            self.condition(*self.logical(words[1:]))
            height, links = max(height, self.height), links + 1
            kind = "bool"
        self.nest(height + (links > 0))
        return kind, start

    def not_(self) -> tuple[Kind, int]:
        if not self.tok.keyword("NOT"):
            return self.predicate()
        start = self.advance().pos
        self.condition(*self.not_())
        self.nest(self.height + 1)
        return "bool", start

    def predicate(self) -> tuple[Kind, int]:
        kind, start = self.arithmetic()
        height = self.height
        while True:
            if self.tok.kind == "op" and self.tok.text in _COMPARISONS:
                self.operator()
                self.arithmetic()
            elif self.tok.keyword("IS"):
                self.height = 0
                self.advance()
                if self.tok.keyword("NOT"):
                    self.advance()
                if not self.tok.keyword("NULL", "TRUE", "FALSE"):
                    self.unexpected("NULL, TRUE or FALSE after IS")
                self.advance()
            elif self.tok.keyword("NOT", "LIKE", "ILIKE", "IN", "BETWEEN"):
                if self.tok.keyword("NOT"):
                    self.advance()
                    if not self.tok.keyword("LIKE", "ILIKE", "IN", "BETWEEN"):
                        self.unexpected("LIKE, ILIKE, IN or BETWEEN after NOT")
                word = self.advance()
                if word.keyword("IN"):
                    if not self.at_op("("):
                        self.unexpected("'(' after IN")
                    self.items(")", self.advance(), allow_empty=False)
                else:
                    self.arithmetic()
                    if word.keyword("BETWEEN"):
                        if not self.tok.keyword("AND"):
                            self.unexpected("AND in BETWEEN ... AND ...")
                        self.advance()
                        low = self.height
                        self.arithmetic()
                        self.height = max(low, self.height)
            else:
                self.height = height
                return kind, start
            height = max(height, self.height) + 1
            self.nest(height)
            kind = "bool"

    def arithmetic(self, level: int = 0) -> tuple[Kind, int]:
        if level == len(_ARITHMETIC):
            if not self.at_op("-"):
                return self.primary()
            start = self.advance().pos
            self.arithmetic(level)
            self.nest(self.height + 1)
            return "value", start
        kind, start = self.arithmetic(level + 1)
        height = self.height
        while self.at_op(*_ARITHMETIC[level]):
            self.operator()
            self.arithmetic(level + 1)
            height = max(height, self.height) + 1
            self.nest(height)
            kind = "value"
        self.height = height
        return kind, start

    def primary(self) -> tuple[Kind, int]:
        tok = self.tok
        self.height = 1
        if tok.kind in ("number", "string") or tok.keyword("NULL"):
            self.advance()
            return "value", tok.pos
        if tok.keyword("TRUE", "FALSE"):
            self.advance()
            return "bool", tok.pos
        if self.at_op("("):
            self.advance()
            kind, _ = self.logical()
            self.close(")", tok)
            return kind, tok.pos
        if self.at_op("["):
            self.items("]", self.advance(), allow_empty=True)
            self.nest(self.height + 1)
            return "value", tok.pos
        if tok.kind == "quoted" or (tok.kind == "word" and tok.text.upper() not in _KEYWORDS):
            self.advance()
            if self.at_op("("):
                return self.call(tok), tok.pos
            name = tok.value if tok.kind == "quoted" else tok.text.lower()
            if name not in self.columns:
                known = ", ".join(sorted(self.columns)) or "none"
                self.fail(f"unknown column {name!r} at character {tok.pos + 1} (columns: {known})")
            self.height = 1
            return "value", tok.pos
        self.unexpected("a value")

    def call(self, name: _Token) -> Kind:
        opener = self.advance()
        if not name.keyword("CAST", "TRY_CAST"):
            self.items(")", opener, allow_empty=True)
            self.nest(self.height + 1)
            return "any"
        self.logical()
        height = self.height
        if not self.tok.keyword("AS"):
            self.unexpected("AS in CAST(value AS type)")
        self.advance()
        if self.tok.kind != "word":
            self.unexpected("a type name")
        while self.tok.kind == "word":  # DOUBLE PRECISION, TIMESTAMP...
            self.advance()
        if self.at_op("("):  # DECIMAL(10, 2)
            self.items(")", self.advance(), allow_empty=False)
        self.close(")", opener)
        self.nest(height + 1)
        return "value"

    def items(self, close: str, opener: _Token, *, allow_empty: bool) -> None:
        """A list's items; ``height``: the deepest item's (0 for none)."""
        height = 0
        if not (allow_empty and self.at_op(close)):
            self.logical()
            height = self.height
            while self.at_op(","):
                self.advance()
                self.logical()
                height = max(height, self.height)
        self.close(close, opener)
        self.height = height


def validate_where(expr: str, columns: Iterable[str]) -> str:
    """``expr`` stripped, if it is one condition over ``columns``; raises :class:`PlanError` saying what is wrong."""
    if not isinstance(expr, str) or not expr.strip():
        raise PlanError(f"where must be a non-empty string, got {expr!r}")
    try:
        _Parser(expr, frozenset(columns)).parse()
    except RecursionError:  # some hundred nested parentheses, NOTs or minus signs: no real filter needs them
        raise PlanError(f"invalid where filter {_quote(expr)}: it nests too deeply") from None
    return expr.strip()
