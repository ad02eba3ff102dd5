"""FOR DEVELOPMENT: what the ClickHouse HTTP adapter (`devserver`) lets a request run.

The adapter serves chdb, which is clickhouse-local: it reads and writes any file the process can
and reaches any server (`file()`, `url()`, `s3()`, `remote()`, engines and dictionary sources alike),
and it runs every statement of a multi-statement text. A real ClickHouse server confines files to
`user_files_path` and answers one statement per request; chdb does neither, and it takes no user
configuration that would restrict its one user (no grants, no setting constraints). So the
adapter checks each statement before it runs, with ClickHouse's own parser rather than regexes
over the text a client sent (comments, quoting, escapes and casing all defeat those):

1. ``SELECT formatQuery(text)`` parses the text as the server will, refuses more than one
   statement (as ClickHouse's HTTP interface does), and returns the statement in canonical form:
   no comments, keywords in upper case, every name unquoted unless it has to be, every string in
   single quotes.
2. ``EXPLAIN AST`` of that canonical statement (with the request's bound parameters) gives the
   statement's kind (the root node) and every function it calls: table functions, engines of
   tables and databases, scalar functions, as ``Function <name>`` nodes.
3. What the AST dump leaves out (the names in ``SETTINGS`` and ``SET``, a function inside them such
   as ``disk(...)``, ``INTO OUTFILE`` and ``FROM INFILE``) is read from the canonical text's bare
   words, with quoted strings and names skipped.

Refused, on every request: any table function, table engine or database engine that reaches files,
URLs or other servers. That is an allow-list: `ALLOWED_TABLE_FUNCTIONS`, `ALLOWED_TABLE_ENGINES`
and `ALLOWED_DATABASE_ENGINES` name what stays local; every other name in chdb's
``system.table_functions``, ``system.table_engines`` and ``system.database_engines`` is refused,
wherever it is called (the scalar ``file()``, which reads a file, shares its name with the table
function). Also refused: the AI functions (they call model providers), dynamic disks (``disk(...)``),
``INTO OUTFILE``, ``FROM INFILE``, the settings in `REFUSED_SETTINGS`, dictionaries (their sources
are files, URLs and servers), named collections, BACKUP, RESTORE and ATTACH (which reads a
table from any path). On GET (and with ``readonly=1``), as on a ClickHouse server, only statements
that read run: SELECT, WITH, SHOW, DESCRIBE, EXISTS and EXPLAIN.
"""

from __future__ import annotations

import collections
import hashlib
import re
from collections.abc import Callable, Iterable

from entity_vectors.exceptions import PermanentError

# What a statement may call: local data, generated data, and the engines of the project's schema
# (MergeTree family, materialized views). Replicated engines need Keeper and Distributed ones other
# servers: a development server has neither.
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "values", "SQLStandardValues", "numbers", "numbers_mt", "zeros", "zeros_mt", "primes",
        "generateRandom", "generateSeries", "generate_series", "null", "view", "viewIfPermitted",
        "viewExplain", "merge", "loop", "format", "dictionary", "mergeTreeIndex", "mergeTreeProjection",
    }
)  # fmt: skip
ALLOWED_TABLE_ENGINES = frozenset(
    {
        "MergeTree", "ReplacingMergeTree", "SummingMergeTree", "AggregatingMergeTree",
        "CollapsingMergeTree", "VersionedCollapsingMergeTree", "GraphiteMergeTree", "CoalescingMergeTree",
        "Memory", "Log", "TinyLog", "StripeLog", "Null", "Set", "Join", "Buffer", "MaterializedView", "View",
        "Merge", "Dictionary", "GenerateRandom", "Loop",
    }
)  # fmt: skip
ALLOWED_DATABASE_ENGINES = frozenset({"Atomic", "Ordinary", "Memory", "Dictionary"})
# Functions that are neither table functions nor engines but reach outside.
_REFUSED_FUNCTIONS = frozenset({"disk"})  # a dynamic disk: any local path, S3, a web server
_AI_FUNCTIONS = r"^(ai|AI)[A-Z]"  # aiGenerate, aiEmbed, ...: requests to a model provider

# Settings that name a file or a server for formats and engines that are otherwise allowed, or
# that change what the statement checks see.
REFUSED_SETTINGS = {
    "format_schema": "it names a schema file to read",
    "format_template_resultset": "it names a template file to read",
    "format_template_row": "it names a template file to read",
    "output_format_schema": "it names a file to write",
    "input_format_record_errors_file_path": "it names a file to write",
    "format_avro_schema_registry_url": "it names a server to ask",
    "default_table_engine": "it would give a table without ENGINE an engine these checks do not see",
    "default_temporary_table_engine": "it would give a table without ENGINE an engine these checks do not see",
    "dialect": "another query language would bypass these checks",
}

# Root nodes of EXPLAIN AST (by prefix) of the statements that only read: what GET may run.
_READ_KINDS = (
    "SelectWithUnionQuery",
    "SelectQuery",
    "SelectIntersectExceptQuery",
    "Explain",
    "Describe",
    "Exists",
    "Show",
)
_REFUSED_KINDS = {
    "BackupQuery": "BACKUP is refused: it writes files or to other servers",
    "RestoreQuery": "RESTORE is refused: it reads files or other servers",
    "AttachQuery": "ATTACH is refused: it can read a table from any path",
    "CreateNamedCollectionQuery": "CREATE NAMED COLLECTION is refused: a collection names other servers",
    "AlterNamedCollectionQuery": "ALTER NAMED COLLECTION is refused: a collection names other servers",
}
_DICTIONARY = "Dictionary definition"
_OUTSIDE = "it reaches files, URLs or other servers, which this development server does not allow"
_FORMAT_QUERY_SCOPE = re.compile(r"[:.\s]*In scope SELECT formatQuery\(.*\)\. \((\w+)\)\s*$", re.DOTALL)
_CACHE_SIZE = 4096

Runner = Callable[[str, dict[str, str]], str]


class Refused(PermanentError):
    """A request this development server will not run: HTTP status and ClickHouse's error code."""

    def __init__(self, status: int, code: int, name: str, message: str) -> None:
        """Remember the reply's parts; str() is ClickHouse's one-line error text."""
        super().__init__(f"Code: {code}. DB::Exception: {message}. ({name})")
        self.parts = (status, code, name, message)
        self.status = status


def access_denied(message: str) -> Refused:
    """ClickHouse's ACCESS_DENIED, answered with HTTP 403."""
    return Refused(403, 497, "ACCESS_DENIED", message)


def escape_param(value: str) -> str:
    """A String query parameter's value as ClickHouse reads it (TSV escaping)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


class SqlGuard:
    """Check statements before chdb runs them; `run(sql, params)` runs one in chdb and returns its text."""

    def __init__(self, run: Runner, refused_functions: Iterable[str]) -> None:
        """Use `run` for the parser's answers; `refused_functions` are lower-case names."""
        self._run = run
        self.refused_functions = frozenset(refused_functions)
        # Verdicts by statement text: they do not depend on parameter values (a parameter is a
        # value or a name of a table or column, never a function or engine name).
        self._verdicts: collections.OrderedDict[tuple[bytes, bool], tuple[int, int, str, str] | None] = (
            collections.OrderedDict()
        )

    @classmethod
    def load(cls, run: Runner) -> SqlGuard:
        """A guard refusing every table function and engine of this chdb outside the allow-lists."""
        known = run(
            "SELECT name FROM system.table_functions UNION ALL SELECT name FROM system.table_engines "
            "UNION ALL SELECT name FROM system.database_engines "
            "UNION ALL SELECT name FROM system.functions WHERE match(name, {ai:String})",
            {"ai": escape_param(_AI_FUNCTIONS)},
        ).split()
        allowed = {
            n.lower() for n in ALLOWED_TABLE_FUNCTIONS | ALLOWED_TABLE_ENGINES | ALLOWED_DATABASE_ENGINES
        }
        return cls(run, ({n.lower() for n in known} - allowed) | _REFUSED_FUNCTIONS)

    def check_settings(self, names: Iterable[str]) -> None:
        """Refuse settings (e.g. a request's URL parameters) that name files or servers."""
        for name in names:
            reason = REFUSED_SETTINGS.get(name.lower())
            if reason:
                raise access_denied(f"setting {name} is refused: {reason}")

    def check(self, sql: str, bind: dict[str, str], *, read_only: bool) -> None:
        """Raise Refused unless `sql` is one statement this server runs (`read_only`: GET's rule).

        ClickHouse errors of parsing (a syntax error, a missing parameter) are raised as chdb raised them.
        """
        key = (hashlib.blake2b(sql.encode(), digest_size=16).digest(), read_only)
        if key in self._verdicts:
            self._verdicts.move_to_end(key)
            verdict = self._verdicts[key]
        else:
            try:
                self._refuse(sql, bind, read_only)
                verdict = None
            except Refused as refused:
                verdict = refused.parts
            self._verdicts[key] = verdict
            if len(self._verdicts) > _CACHE_SIZE:
                self._verdicts.popitem(last=False)
        if verdict is not None:
            raise Refused(*verdict)

    def _refuse(self, sql: str, bind: dict[str, str], read_only: bool) -> None:
        canonical = self._canonical(sql)
        words = _words(canonical)
        for (word, after), (following, _) in zip(words, [*words[1:], ("", "")], strict=True):
            if (word, following) in (("INTO", "OUTFILE"), ("FROM", "INFILE")):
                raise access_denied(f"{word} {following} is refused: {_OUTSIDE}")
            self.check_settings([word])
            if after == "(" and word.lower() in self.refused_functions:
                raise access_denied(f"{word}() is refused: {_OUTSIDE}")
        # EXPLAIN takes a statement, not a parameter: the canonical text is one statement (formatQuery
        # refused anything else), so the EXPLAIN is one statement too and runs nothing it explains.
        dump = self._run("EXPLAIN AST " + canonical, bind).splitlines()
        kind = dump[0].split(" ", 1)[0] if dump else ""
        if kind in _REFUSED_KINDS:
            raise access_denied(_REFUSED_KINDS[kind])
        for line in dump:
            node = line.strip()
            if node.startswith(_DICTIONARY):
                raise access_denied(
                    "CREATE DICTIONARY is refused: a dictionary's source reads files, URLs or other servers"
                )
            if node.startswith("Function "):
                function = node.split(" ")[1]
                if function.lower() in self.refused_functions:
                    raise access_denied(f"{function}() is refused: {_OUTSIDE}")
        if read_only and not kind.startswith(_READ_KINDS):
            statement = canonical.split(None, 1)[0] if canonical.strip() else kind
            raise Refused(
                403,
                164,
                "READONLY",
                f"Cannot execute query in readonly mode: {statement} is not a read (SELECT, WITH, SHOW, "
                "DESCRIBE, EXISTS, EXPLAIN). For queries over HTTP, method GET implies readonly. You should "
                "use method POST for modifying queries",
            )

    def _canonical(self, sql: str) -> str:
        """The statement as ClickHouse formats it; ClickHouse's syntax error (in one statement's terms) if none."""
        try:
            formatted = self._run("SELECT formatQuery({q:String})", {"q": escape_param(sql)})
        except Exception as exc:
            message = str(exc)
            scoped = _FORMAT_QUERY_SCOPE.search(message)
            if scoped is None:
                raise
            # The error is about the client's text; the formatQuery call around it is ours.
            raise RuntimeError(f"{message[: scoped.start()]}. ({scoped.group(1)})") from None
        return formatted.removesuffix("\n")  # the row's end, not the statement's


def _words(canonical: str) -> list[tuple[str, str]]:
    """The bare words of a formatted statement, each with the character after it (spaces skipped).

    Quoted strings and names are skipped: in ClickHouse's canonical form a name is quoted only
    when it could not be written bare, so no keyword, setting or function name hides in quotes.
    """
    words: list[tuple[str, str]] = []
    i, size = 0, len(canonical)
    while i < size:
        char = canonical[i]
        if char in "'`\"":
            i += 1
            while i < size and canonical[i] != char:
                i += 2 if canonical[i] == "\\" else 1
            i += 1
        elif char.isalpha() or char == "_":
            end = i
            while end < size and (canonical[end].isalnum() or canonical[end] == "_"):
                end += 1
            after = end
            while after < size and canonical[after].isspace():
                after += 1
            words.append((canonical[i:end], canonical[after : after + 1]))
            i = end
        elif char.isdigit():
            while i < size and (canonical[i].isalnum() or canonical[i] in "._"):
                i += 1
        else:
            i += 1
    return words
