"""What the worker's HTTP API lets through: one read query of the project's tables, and a bearer token.

Pure: no ClickHouse client here, only the text of a query and of a header.

ClickHouse's ``readonly`` setting alone is not enough for SQL that comes from outside: with
``readonly=1`` the engine still runs the *function* ``file('/etc/passwd')`` (it refuses the table
function ``file(...)`` after FROM, but not the scalar one), and with ``readonly=2`` it runs both.
So :func:`check_read_query` reads the query itself, on tokens (string literals, quoted identifiers
and comments are recognised the way ClickHouse's lexer does), and accepts only:

* exactly one statement (one trailing ``;`` is dropped);
* starting with SELECT, WITH, DESCRIBE/DESC, EXISTS, or the two SHOW forms
  ``SHOW TABLES FROM <database>`` and ``SHOW CREATE [TABLE] <table>``;
* reading tables of ``database`` only, named ``database.table`` (after FROM, JOIN, IN, DESCRIBE
  and EXISTS), or a CTE of the query itself. An unqualified name is refused: it would resolve in
  the connection's default database, which this module cannot see. The one exception is
  ``system.parts`` (sizes and row counts of parts, no row data), which the fault tests read to
  prove that a retried insert wrote nothing twice;
* no table functions at all, and none of the functions that reach outside the database
  (:data:`OUTSIDE_FUNCTIONS`) anywhere;
* no SETTINGS, FORMAT or INTO OUTFILE clause: the settings are :func:`read_settings` and the
  format is the client's.

The statement returned is the query without its comments, which is what should be run: a
comment cannot then hide anything from the check that ClickHouse would see.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

__all__ = ["OUTSIDE_FUNCTIONS", "SYSTEM_TABLES", "QueryRefused", "check_bearer", "check_read_query", "read_settings"]

START_WORDS = ("select", "with", "describe", "desc", "exists", "show")
# system tables a read query may name: per-part row counts and sizes, no row data
SYSTEM_TABLES = frozenset({"parts"})
# Functions that read files, URLs, other servers, other tables by name, or dictionaries.
OUTSIDE_FUNCTIONS = frozenset({
    "file", "url", "urlcluster", "input", "executable", "executablepool", "jdbc", "odbc", "sqlite", "redis",
    "mongodb", "merge", "dictionary", "hascolumnintable", "gcs", "oss", "cosn", "filesystem", "arrowflight",
    "ytsaurus", "prometheusquery", "timeseriesdata", "timeseriesmetrics", "timeseriestags",
})
OUTSIDE_FUNCTION_PREFIXES = ("dict", "joinget", "s3", "hdfs", "azureblob", "iceberg", "deltalake", "hudi",
                             "mysql", "postgresql", "remote", "cluster", "paimon")
# Functions whose own syntax uses FROM or IN (``extract(DAY FROM t)``, ``position(a IN b)``).
FROM_IN_FUNCTIONS = frozenset({"extract", "substring", "substr", "trim", "overlay", "position"})
# Words that end a FROM list: after them a comma no longer separates tables.
FROM_LIST_END = frozenset({
    "where", "prewhere", "group", "order", "limit", "having", "settings", "format", "union", "except",
    "intersect", "window", "qualify", "into", "join", "array", "on", "using", "global", "left", "right",
    "inner", "full", "cross", "any", "all", "asof", "semi", "anti", "paste", "outer", "select",
})

_READ_SETTINGS = {
    "readonly": "1",  # no writes, no DDL, and no changing settings in the query
    "max_execution_time": "60",
    "max_result_rows": "1000000",  # the route answers with one JSON document
    "result_overflow_mode": "throw",
}


class QueryRefused(ValueError):
    """A query the HTTP API does not run; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Token:
    kind: str  # word, name (quoted identifier), string, number, op
    text: str  # as written; a quoted identifier without its quotes
    start: int
    end: int

    @property
    def lower(self) -> str:
        return self.text.lower()

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.lower in words

    def is_op(self, op: str) -> bool:
        return self.kind == "op" and self.text == op

    @property
    def is_name(self) -> bool:
        return self.kind in ("word", "name")


def read_settings() -> dict[str, str]:
    """ClickHouse settings for a query that passed :func:`check_read_query`.

    ``readonly=1`` (not 2): it also forbids changing settings in the query, and with it chDB
    refuses the table functions ``file()`` and ``url()`` on its own. Pass them with
    ``client.query(statement, settings=read_settings())`` and only for a statement
    :func:`check_read_query` returned: clickhouse-connect sends them as the query's SETTINGS
    clause then. For what it takes for an INSERT or a command (``client.command``, or a query
    starting with CREATE, ALTER, SET...) the chDB backend applies them with SET instead and cannot
    restore ``readonly`` afterwards, which leaves the shared session read-only for the worker's
    writes. An accepted statement is never taken for either (it starts with a read keyword and
    has no INTO).
    """
    return dict(_READ_SETTINGS)


def check_bearer(header_value: str | None, expected: str) -> bool:
    """True when an ``Authorization`` header carries ``Bearer <expected>``; constant-time comparison.

    An empty ``expected`` accepts nothing.
    """
    if not expected or not header_value:
        return False
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), expected.encode())


def check_read_query(sql: str, database: str) -> str:
    """The single read statement of ``sql`` without comments, or :class:`QueryRefused`."""
    tokens, text = _tokenize(sql)
    if tokens and tokens[-1].is_op(";"):
        tokens.pop()
        text = text.rstrip()[:-1]
    if not tokens:
        raise QueryRefused("empty query")
    if any(t.is_op(";") for t in tokens):
        raise QueryRefused("more than one statement")
    first = tokens[0]
    if not first.is_word(*START_WORDS):
        shown = first.text.upper() if first.kind == "word" else first.text
        raise QueryRefused(f"only SELECT, WITH, SHOW, DESCRIBE and EXISTS queries are accepted, not {shown[:40]}")
    _check_clauses(tokens)
    _check_functions(tokens)
    ctes = _cte_names(tokens)
    if first.is_word("show"):
        _check_show(tokens, database, ctes)
    else:
        if first.is_word("describe", "desc", "exists"):
            _check_describe_exists(tokens, database, ctes)
        _check_tables(tokens, database, ctes)
    return text.strip()


# -- lexing ----------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W\d]\w*")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|0[bB][01]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_OPS = ("->", "::", "||", "<=", ">=", "!=", "<>", "==", "<=>", "(", ")", "[", "]", "{", "}", ",", ".", ";",
        "+", "-", "*", "/", "%", "<", ">", "=", "?", ":", "^", "~", "&", "|", "!")


def _tokenize(sql: str) -> tuple[list[Token], str]:
    """Tokens of ``sql``, and ``sql`` with every comment replaced by one space."""
    tokens: list[Token] = []
    kept: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in " \t\n\r\f\v":
            kept.append(c)
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            kept.append(" ")
        elif sql.startswith("/*", i):
            i = _block_comment_end(sql, i)
            kept.append(" ")
        elif c in "'\"`":
            end = _quoted_end(sql, i)
            kind = "string" if c == "'" else "name"
            value = sql[i:end] if kind == "string" else _unquote(sql[i + 1:end - 1], c)
            tokens.append(Token(kind, value, i, end))
            kept.append(sql[i:end])
            i = end
        elif (m := _WORD.match(sql, i)) is not None:
            tokens.append(Token("word", m.group(), i, m.end()))
            kept.append(m.group())
            i = m.end()
        elif (m := _NUMBER.match(sql, i)) is not None:
            tokens.append(Token("number", m.group(), i, m.end()))
            kept.append(m.group())
            i = m.end()
        else:
            op = next((o for o in sorted(_OPS, key=len, reverse=True) if sql.startswith(o, i)), None)
            if op is None:
                # '#' comments, '$$' heredoc strings, backslashes...: nothing a read query needs
                raise QueryRefused(f"unexpected character {c!r} at position {i}")
            tokens.append(Token("op", op, i, i + len(op)))
            kept.append(op)
            i += len(op)
    return tokens, "".join(kept)


def _block_comment_end(sql: str, start: int) -> int:
    # ClickHouse nests block comments: /* a /* b */ c */ is one comment
    depth, i = 0, start
    while i < len(sql):
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    raise QueryRefused("unterminated comment")


def _quoted_end(sql: str, start: int) -> int:
    quote, i = sql[start], start + 1
    while i < len(sql):
        if sql[i] == "\\":
            i += 2
        elif sql[i] == quote:
            if sql.startswith(quote * 2, i):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    raise QueryRefused("unterminated " + ("string" if quote == "'" else "quoted identifier"))


def _unquote(body: str, quote: str) -> str:
    return re.sub(r"\\(.)", r"\1", body.replace(quote * 2, quote), flags=re.S)


# -- rules -----------------------------------------------------------------------------------


def _check_clauses(tokens: list[Token]) -> None:
    for k, t in enumerate(tokens):
        if t.is_word("settings"):
            raise QueryRefused("SETTINGS clauses are not accepted: the query runs with fixed read-only settings")
        if t.is_word("into", "outfile"):
            raise QueryRefused("INTO OUTFILE is not accepted")
        if t.is_word("format") and not _next_is(tokens, k, "("):
            raise QueryRefused("FORMAT clauses are not accepted: the client chooses the format")


def _check_functions(tokens: list[Token]) -> None:
    for k, t in enumerate(tokens):
        if t.is_name and _next_is(tokens, k, "(") and _reaches_outside(t.lower):
            raise QueryRefused(f"function {t.text}() reads outside the database and is not accepted")


def _reaches_outside(name: str) -> bool:
    return name in OUTSIDE_FUNCTIONS or name.startswith(OUTSIDE_FUNCTION_PREFIXES)


def _cte_names(tokens: list[Token]) -> set[str]:
    """Names defined by ``WITH name AS (subquery)`` (also after a comma in the WITH list)."""
    names = set()
    for k in range(1, len(tokens) - 2):
        t = tokens[k]
        if (t.is_name and (tokens[k - 1].is_word("with") or tokens[k - 1].is_op(","))
                and tokens[k + 1].is_word("as") and tokens[k + 2].is_op("(")):
            names.add(t.text)
    return names


def _check_tables(tokens: list[Token], database: str, ctes: set[str]) -> None:
    calls = _enclosing_calls(tokens)
    for k, t in enumerate(tokens):
        if t.is_word("from") and calls[k] not in FROM_IN_FUNCTIONS:
            if k + 1 >= len(tokens):
                raise QueryRefused("FROM without a table")
            _check_table_list(tokens, k + 1, database, ctes)
        elif t.is_word("join") and not (k > 0 and tokens[k - 1].is_word("array")):
            if k + 1 >= len(tokens):
                raise QueryRefused("JOIN without a table")
            _check_table_list(tokens, k + 1, database, ctes)
        elif t.is_word("in") and calls[k] != "position" and k + 1 < len(tokens) and tokens[k + 1].is_name:
            # `x IN db.table` reads a table; `x IN (1, 2)` and `x IN (SELECT ...)` do not, or are
            # checked at their own FROM
            end = _name_end(tokens, k + 1)
            if not _next_is(tokens, end - 1, "("):
                _check_table(tokens, k + 1, database, ctes)


def _check_table_list(tokens: list[Token], start: int, database: str, ctes: set[str]) -> None:
    """The table after FROM/JOIN, and each one after a comma up to the end of the FROM list."""
    _check_table(tokens, start, database, ctes)
    depth = 0
    for k in range(start + 1, len(tokens)):
        t = tokens[k]
        if t.is_op("(") or t.is_op("["):
            depth += 1
        elif t.is_op(")") or t.is_op("]"):
            depth -= 1
            if depth < 0:
                return
        elif depth == 0:
            if t.kind == "word" and t.lower in FROM_LIST_END:
                return
            if t.is_op(","):
                if k + 1 >= len(tokens):
                    raise QueryRefused("a FROM list that ends in a comma")
                _check_table(tokens, k + 1, database, ctes)


def _check_table(tokens: list[Token], k: int, database: str, ctes: set[str]) -> None:
    t = tokens[k]
    if t.is_op("("):
        return  # a subquery: its own FROM is checked where it stands
    if not t.is_name:
        raise QueryRefused(f"expected a table name, not {t.text[:40]}")
    end = _name_end(tokens, k)
    parts = [tokens[j].text for j in range(k, end, 2)]
    if _next_is(tokens, end - 1, "("):
        raise QueryRefused(f"table function {'.'.join(parts)}() is not accepted: read the tables of {database}")
    if len(parts) == 1:
        if parts[0] in ctes:
            return
        raise QueryRefused(f"table {parts[0]}: name it with its database, {database}.{parts[0]}")
    if len(parts) == 2 and parts[0] == database:
        return
    if len(parts) == 2 and parts[0] == "system" and parts[1] in SYSTEM_TABLES:
        return
    raise QueryRefused(f"table {'.'.join(parts)}: only the tables of {database} may be read")


def _check_describe_exists(tokens: list[Token], database: str, ctes: set[str]) -> None:
    k = 1
    if tokens[0].is_word("exists"):
        if k < len(tokens) and tokens[k].is_word("temporary"):
            k += 1
        if k < len(tokens) and tokens[k].is_word("database", "dictionary"):
            raise QueryRefused(f"EXISTS {tokens[k].text.upper()} is not accepted")
        if k < len(tokens) and tokens[k].is_word("table", "view"):
            k += 1
    elif k < len(tokens) and tokens[k].is_word("table"):
        k += 1
    if k >= len(tokens):
        raise QueryRefused(f"{tokens[0].text.upper()} without a table")
    _check_table(tokens, k, database, ctes)


def _check_show(tokens: list[Token], database: str, ctes: set[str]) -> None:
    second = tokens[1] if len(tokens) > 1 else None
    if second is not None and second.is_word("tables"):
        if len(tokens) < 4 or not tokens[2].is_word("from", "in") or not tokens[3].is_name:
            raise QueryRefused(f"SHOW TABLES: name the database, SHOW TABLES FROM {database}")
        if tokens[3].text != database or _next_is(tokens, 3, "."):
            raise QueryRefused(f"SHOW TABLES: only the tables of {database} may be listed")
        for t in tokens[4:]:
            if not (t.is_word("like", "ilike", "not", "limit") or t.kind in ("string", "number")):
                raise QueryRefused("SHOW TABLES takes only LIKE, ILIKE and LIMIT after the database")
        return
    if second is not None and second.is_word("create"):
        k = 2
        if k < len(tokens) and tokens[k].is_word("temporary"):
            k += 1
        if k < len(tokens) and tokens[k].is_word("table", "view"):
            k += 1
        if k >= len(tokens) or tokens[k].is_word("database", "dictionary", "user", "role", "quota", "policy"):
            raise QueryRefused("SHOW CREATE is accepted for tables and views only")
        _check_table(tokens, k, database, ctes)
        if _name_end(tokens, k) != len(tokens):
            raise QueryRefused("SHOW CREATE takes one table")
        return
    raise QueryRefused("only SHOW TABLES FROM <database> and SHOW CREATE TABLE <table> are accepted")


# -- helpers ---------------------------------------------------------------------------------


def _next_is(tokens: list[Token], k: int, op: str) -> bool:
    return k + 1 < len(tokens) and tokens[k + 1].is_op(op)


def _name_end(tokens: list[Token], k: int) -> int:
    """Index after a (possibly dotted) name starting at ``k``."""
    end = k + 1
    while end + 1 < len(tokens) and tokens[end].is_op(".") and tokens[end + 1].is_name:
        end += 2
    return end


def _enclosing_calls(tokens: list[Token]) -> list[str | None]:
    """For each token, the function (lower case) whose parentheses immediately enclose it.

    None outside a call, and inside one once a SELECT appeared in it: ``trim((SELECT ...))`` and
    ``trim(SELECT ...)`` hold a subquery, whose FROM is a table's.
    """
    stack: list[str | None] = []
    result: list[str | None] = []
    for k, t in enumerate(tokens):
        if t.is_word("select") and stack:
            stack[-1] = None
        result.append(stack[-1] if stack else None)
        if t.is_op("("):
            before = tokens[k - 1] if k else None
            stack.append(before.lower if before is not None and before.is_name else None)
        elif t.is_op(")") and stack:
            stack.pop()
    return result
