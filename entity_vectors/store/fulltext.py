"""Full-text ranking: the tokens ClickHouse indexes, and a query's terms with their BM25 weights.

**Tokens.** One rule, written twice (`token_sql` for stored rows, `words` for queries, and a test
that holds them equal): lower-cased runs of letters and digits (`desktop_sync_completed` ->
desktop, sync, completed; `$pageview` -> pageview), except CJK text (Han, kana, Hangul), which is
written without spaces and is cut into overlapping character bigrams (`ファイル共有` -> ファイ, イル,
...; one lone character stays itself). A row's `tokens` column (MATERIALIZED, so every writer and
every earlier row gets it) holds the tokens of its name, description and text; its name's tokens
again marked `^` (a word of the name), and its whole name, normalized, marked `=`. A tombstone
has none. A `text` index (ClickHouse's inverted index, `tokenizer = array`) maps each token to
its rows, and `tokens_count` is the row's length for BM25.

**Terms.** The `<table>_terms` table (a materialized view of every insert) counts, per group (team,
domain, embedding version), the rows that hold each token, and the group's rows and tokens (the
empty term): the vocabulary a query is matched against and the document frequencies of BM25.
Counts are of rows as written, superseded ones included (statistics, like a search engine's before
it merges); which rows are *returned* follows the latest-row rules exactly.

**A query** becomes words (stop words dropped unless nothing else is left), and each word a group
of alternative terms found in the vocabulary: the word itself, a known abbreviation's expansion
("pv" -> pageview), words it begins (a prefix: "invoic" -> invoice; a word of two letters only
begins *names*), words of the same stem ("uploaded" -> upload, uploads) and, for a word the group
has never seen, its misspellings' originals ("pagevew" -> pageview, within 1 or 2 edits). A row
scores, for each word, its best alternative's weight x inverse document frequency (a name word
counts 1.5 times), times BM25's length factor for one occurrence (short rows rank first among
equal matches); the sum is divided by the best score any row could reach, so it lies in [0, 1).
A row whose whole name is the query scores 1.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# CJK scripts written without spaces: CJK ideographs (and their extensions and compatibility
# forms), hiragana, katakana (with the prolonged-sound mark and half-width forms), the iteration
# mark, and Hangul (jamo and syllables). Code point ranges, so that SQL and Python agree exactly.
CJK_RANGES = (
    (0x1100, 0x11FF),
    (0x3005, 0x3005),
    (0x3040, 0x30FF),
    (0x3130, 0x318F),
    (0x31F0, 0x31FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7AF),
    (0xF900, 0xFAFF),
    (0xFF66, 0xFF9F),
)
NAME_MARK = "^"  # a word of the entity's name
FULL_NAME_MARK = "="  # the entity's whole name, normalized

# BM25's constants (Robertson's usual values): term frequency saturation and length normalization.
K1 = 1.2
B = 0.75
# A query word found in the name counts this much more than one found in the text only.
NAME_BONUS = 0.5
# Alternatives kept per query word, and the terms a query may look up (each is an index lookup).
MAX_ALTERNATIVES = 6
MAX_TERMS = 48
MAX_WORDS = 12

# Words that carry no meaning of their own in a search of product-analytics definitions, in the
# languages people ask in. Dropped from a query unless nothing else is left.
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "been",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "so",
        "some",
        "someone",
        "something",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "to",
        "us",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "whose",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "all",
        "also",
        "about",
        "after",
        "before",
        "just",
        "only",
        "per",
        "via",
        "der",
        "die",
        "das",
        "den",
        "dem",
        "des",
        "ein",
        "eine",
        "einen",
        "einem",
        "einer",
        "und",
        "oder",
        "ist",
        "sind",
        "war",
        "wurde",
        "wurden",
        "hat",
        "haben",
        "mit",
        "von",
        "zu",
        "im",
        "am",
        "an",
        "auf",
        "für",
        "aus",
        "bei",
        "wer",
        "wie",
        "was",
        "welche",
        "welcher",
        "welches",
        "jemand",
        "nicht",
        "le",
        "la",
        "les",
        "un",
        "une",
        "des",
        "du",
        "de",
        "et",
        "ou",
        "est",
        "sont",
        "été",
        "qui",
        "que",
        "quoi",
        "quel",
        "quelle",
        "quels",
        "pour",
        "par",
        "avec",
        "dans",
        "sur",
        "en",
        "au",
        "aux",
        "ce",
        "cette",
        "ces",
        "quelqu",
        "un",
        "el",
        "los",
        "las",
        "unos",
        "unas",
        "y",
        "o",
        "es",
        "son",
        "fue",
        "por",
        "para",
        "con",
        "en",
        "del",
        "al",
        "que",
        "quien",
        "cual",
        "cuales",
        "como",
        "su",
        "sus",
        "o",
        "os",
        "as",
        "um",
        "uma",
        "e",
        "é",
        "são",
        "foi",
        "para",
        "com",
        "em",
        "do",
        "da",
        "dos",
        "das",
        "no",
        "na",
        "nos",
        "nas",
        "que",
        "quem",
        "qual",
        "il",
        "lo",
        "gli",
        "uno",
        "una",
        "e",
        "è",
        "sono",
        "stato",
        "per",
        "con",
        "di",
        "da",
        "del",
        "della",
        "dei",
        "delle",
        "nel",
        "nella",
        "che",
        "chi",
        "quale",
    ]
)
# Abbreviations of product analytics that are not prefixes of the words they stand for.
ABBREVIATIONS: Mapping[str, tuple[str, ...]] = {
    "pv": ("pageview",),
    "pvs": ("pageview",),
    "uv": ("visitors", "unique"),
    "dau": ("daily", "active"),
    "wau": ("weekly", "active"),
    "mau": ("monthly", "active"),
    "cta": ("cta", "button"),
    "ctr": ("click", "rate"),
    "ltv": ("lifetime", "value"),
    "arpu": ("revenue", "user"),
    "mrr": ("monthly", "revenue"),
    "arr": ("annual", "revenue"),
    "nps": ("promoter", "score"),
    "sso": ("sso", "login"),
    "mfa": ("factor", "authentication"),
    "2fa": ("factor", "authentication"),
    "ftue": ("onboarding", "first"),
    "kpi": ("metric", "indicator"),
    "qa": ("qa", "quality"),
    "ui": ("ui", "interface"),
}


def is_cjk(character: str) -> bool:
    """Whether a character belongs to the CJK scripts that are cut into bigrams."""
    point = ord(character)
    return any(low <= point <= high for low, high in CJK_RANGES)


def _is_word_character(character: str) -> bool:
    return unicodedata.category(character)[0] in "LN"


def runs(text: str) -> list[str]:
    """Lower-cased runs of letters and digits (CJK included), in order: what a whole name is made of."""
    found: list[str] = []
    current: list[str] = []
    for character in text.lower():
        if _is_word_character(character):
            current.append(character)
        elif current:
            found.append("".join(current))
            current = []
    if current:
        found.append("".join(current))
    return found


def words(text: str) -> list[str]:
    """The tokens of `text`: lower-cased words, then the character bigrams of its CJK runs."""
    latin: list[str] = []
    cjk: list[str] = []
    for run in runs(text):
        current: list[str] = []
        kind = None
        for character in run:
            character_kind = is_cjk(character)
            if kind is not None and character_kind != kind:
                (cjk if kind else latin).append("".join(current))
                current = []
            current.append(character)
            kind = character_kind
        if current:
            (cjk if kind else latin).append("".join(current))
    bigrams = [
        piece
        for chunk in cjk
        for piece in ([chunk] if len(chunk) == 1 else [chunk[i : i + 2] for i in range(len(chunk) - 1)])
    ]
    return latin + bigrams


def full_name(text: str) -> str:
    """The whole-name token of `text` (its runs joined by spaces, marked)."""
    return FULL_NAME_MARK + " ".join(runs(text))


# --- The same rules in ClickHouse SQL (the MATERIALIZED columns of the vectors table). ---

_CJK_CLASS = (
    "["
    + "".join(
        f"\\\\x{{{low:04X}}}" + (f"-\\\\x{{{high:04X}}}" if high != low else "") for low, high in CJK_RANGES
    )
    + "]+"
)
_WORD_CLASS = "[\\\\p{L}\\\\p{N}]+"


def token_sql(value: str) -> str:
    """SQL for the tokens of the String expression `value` (the rule of `words`)."""
    lowered = f"lowerUTF8({value})"
    return (
        f"arrayConcat(extractAll(replaceRegexpAll({lowered}, '{_CJK_CLASS}', ' '), '{_WORD_CLASS}'), "
        f"arrayFlatten(arrayMap(r -> if(lengthUTF8(r) = 1, [r], ngrams(r, 2)), "
        f"extractAll({lowered}, '{_CJK_CLASS}'))))"
    )


def full_name_sql(value: str) -> str:
    """SQL for the whole-name token of `value` (the rule of `full_name`)."""
    return (
        f"concat('{FULL_NAME_MARK}', arrayStringConcat(extractAll(lowerUTF8({value}), '{_WORD_CLASS}'), ' '))"
    )


_NAME = "JSONExtractString(properties, 'name')"
_DESCRIPTION = "JSONExtractString(properties, 'description')"

# The tokens of a row: its name's, marked name words, its whole name, its description's, its text's.
TOKENS_EXPRESSION = (
    "if(is_deleted = 1, [], arrayConcat("
    f"arrayFlatten(arrayMap(w -> [w, concat('{NAME_MARK}', w)], {token_sql(_NAME)})), "
    f"if({_NAME} = '', [], [{full_name_sql(_NAME)}]), {token_sql(_DESCRIPTION)}, {token_sql('text')}))"
)
TEXT_COLUMNS = (
    ("tokens", f"Array(String) MATERIALIZED {TOKENS_EXPRESSION}"),
    ("tokens_count", "UInt32 MATERIALIZED length(tokens)"),
)
TEXT_INDEX = "tokens_index tokens TYPE text(tokenizer = array)"
# The oldest ClickHouse whose `text` index is generally available (before: experimental, with
# another syntax). An older server gets the columns and the terms, not the index: text search
# still works, reading the tokens of the group instead of the index's postings.
TEXT_INDEX_SINCE = (26, 2)


# --- A query against a group's vocabulary. ---


@dataclass(frozen=True)
class Vocabulary:
    """What a group's terms table says about the terms a query looked up."""

    documents: int
    average_length: float
    frequencies: Mapping[str, int]

    def idf(self, term: str) -> float:
        """BM25's inverse document frequency (never negative)."""
        documents = max(self.documents, 1)
        frequency = min(self.frequencies.get(term, 0), documents)
        return math.log(1 + (documents - frequency + 0.5) / (frequency + 0.5))


@dataclass(frozen=True)
class Alternative:
    """A term standing for a query word, with how much of a match it is (1 = the word itself)."""

    term: str
    weight: float


@dataclass(frozen=True)
class QueryPlan:
    """A query's words (each a group of alternatives with their idf), and its whole-name token."""

    groups: tuple[tuple[tuple[Alternative, float], ...], ...]
    full_name: str
    average_length: float
    names: frozenset[str] = field(default_factory=frozenset)

    @property
    def best(self) -> float:
        """The highest score a row can reach: every word's best alternative, in its name, length 0."""
        return (
            sum(max(a.weight * idf for a, idf in group) for group in self.groups)
            * (1 + NAME_BONUS)
            * (K1 + 1)
            / (1 + K1 * (1 - B))
        )

    @property
    def terms(self) -> list[str]:
        """Every term looked up: each alternative, its name-marked form where names hold it, the full name."""
        found = [alternative.term for group in self.groups for alternative, _ in group]
        found += [NAME_MARK + term for term in found if NAME_MARK + term in self.names]
        return [*dict.fromkeys(found), self.full_name]


@dataclass(frozen=True)
class QueryWords:
    """What is looked up in the vocabulary for a query."""

    words: tuple[str, ...]
    full_name: str
    expansions: Mapping[str, tuple[str, ...]]

    @property
    def exact(self) -> list[str]:
        """Terms looked up as they are: the words and their abbreviations' expansions."""
        return list(
            dict.fromkeys([*self.words, *(t for w in self.words for t in self.expansions.get(w, ()))])
        )

    @property
    def prefixes(self) -> list[str]:
        """Beginnings looked up: words of 3 letters or more, and stems of long words."""
        found = [word for word in self.words if len(word) >= 3 and not _all_cjk(word)]
        found += [word[: max(4, len(word) - 3)] for word in self.words if len(word) >= 7]
        return list(dict.fromkeys(found))

    @property
    def name_prefixes(self) -> list[str]:
        """Beginnings of name words looked up for short words (one or two letters)."""
        return [NAME_MARK + word for word in self.words if len(word) <= 2 and not _all_cjk(word)]

    @property
    def fuzzy(self) -> list[str]:
        """Words whose misspellings' originals are looked up (4 letters or more, not CJK)."""
        return [word for word in self.words if len(word) >= 4 and not _all_cjk(word) and not word.isdigit()]


def _all_cjk(word: str) -> bool:
    return all(is_cjk(character) for character in word)


def query_words(query: str) -> QueryWords:
    """The words of a query to look up: stop words dropped unless nothing else is left."""
    tokens = list(dict.fromkeys(words(query)))
    kept = [token for token in tokens if token not in STOP_WORDS] or tokens
    kept = kept[:MAX_WORDS]
    expansions = {word: ABBREVIATIONS[word] for word in kept if word in ABBREVIATIONS}
    return QueryWords(tuple(kept), full_name(query), expansions)


def damerau_levenshtein(first: str, second: str, bound: int) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) from `first` to `second`; bound + 1 if more."""
    if abs(len(first) - len(second)) > bound:
        return bound + 1
    previous_previous: list[int] = []
    previous = list(range(len(second) + 1))
    for i, a in enumerate(first, start=1):
        current = [i] + [0] * len(second)
        for j, b in enumerate(second, start=1):
            cost = 0 if a == b else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a == second[j - 2] and first[i - 2] == b:
                current[j] = min(current[j], previous_previous[j - 2] + 1)
        if min(current) > bound:
            return bound + 1
        previous_previous, previous = previous, current
    return previous[-1]


def _relation(word: str, term: str, known: bool, expansions: Iterable[str]) -> float:
    """How much `term` stands for the query word `word` (0: not at all): 1 for the word itself or an
    abbreviation's expansion, less for a word it begins, a word of its stem (same beginning, a few
    letters more or less) and, for a word the group does not hold, a word one or two edits away."""
    if term == word or term in expansions:
        return 1.0
    weight = 0.0
    if term.startswith(word):
        weight = 0.5 + 0.4 * len(word) / len(term) if len(word) >= 3 else 0.4 + 0.4 * len(word) / len(term)
    common = 0
    for a, b in zip(word, term, strict=False):
        if a != b:
            break
        common += 1
    if len(word) >= 5 and common >= max(4, len(word) - 3) and abs(len(term) - len(word)) <= 4:
        weight = max(weight, 0.6)
    if not known and len(word) >= 4 and (word[0] == term[0] or word[1:2] == term[1:2]):
        bound = 1 if len(word) <= 5 else 2
        edits = damerau_levenshtein(word, term, bound)
        if edits <= bound:
            weight = max(weight, 0.8 - 0.2 * (edits - 1))
    return weight


def plan_query(query: QueryWords, vocabulary: Vocabulary) -> QueryPlan:
    """Each query word's alternatives found in the vocabulary, strongest first; words with none are dropped."""
    plain = {term for term in vocabulary.frequencies if term and not term.startswith(NAME_MARK)}
    names = frozenset(term for term in vocabulary.frequencies if term.startswith(NAME_MARK))
    name_words = {term[len(NAME_MARK) :] for term in names}
    groups: list[tuple[tuple[Alternative, float], ...]] = []
    budget = MAX_TERMS
    for word in query.words:
        expansions = query.expansions.get(word, ())
        known = word in plain
        scored: list[tuple[float, Alternative, float]] = []
        for term in plain:
            weight = _relation(word, term, known, expansions)
            if len(word) <= 2 and term != word and term not in expansions and term not in name_words:
                weight = 0.0  # a short word begins a name's word, not any word of a text
            if weight > 0:
                idf = vocabulary.idf(term)
                scored.append((weight * idf, Alternative(term, weight), idf))
        scored.sort(key=lambda item: (-item[0], item[1].term))
        chosen = tuple((alternative, idf) for _, alternative, idf in scored[: min(MAX_ALTERNATIVES, budget)])
        if chosen:
            groups.append(chosen)
            budget -= len(chosen)
        if budget <= 0:
            break
    return QueryPlan(tuple(groups), query.full_name, vocabulary.average_length, names)


def score_sql(plan: QueryPlan) -> tuple[str, str, dict[str, object]]:
    """SQL for a row's normalized score, the condition that selects the rows to score (through the
    text index), and their parameters. Each term is one `has(tokens, ...)`, the same expression in
    both, so that ClickHouse answers them from the index's postings without reading `tokens`."""
    params: dict[str, object] = {}
    placeholders: dict[str, str] = {}

    def has(term: str) -> str:
        if term not in placeholders:
            name = f"t{len(placeholders)}"
            params[name] = term
            placeholders[term] = f"has(tokens, {{{name}:String}})"
        return placeholders[term]

    parts = []
    for number, group in enumerate(plan.groups):
        options = []
        for position, (alternative, idf) in enumerate(group):
            weight = f"g{number}a{position}"
            params[weight] = alternative.weight * idf
            named = NAME_MARK + alternative.term
            bonus = f" + {NAME_BONUS} * {has(named)}" if named in plan.names else ""
            options.append(f"{{{weight}:Float64}} * ({has(alternative.term)}{bonus})")
        parts.append(options[0] if len(options) == 1 else f"greatest({', '.join(options)})")
    full = has(plan.full_name)
    params["best"] = plan.best or 1.0
    params["average_length"] = max(plan.average_length, 1.0)
    length_factor = f"{K1 + 1} / (1 + {K1} * ({1 - B} + {B} * tokens_count / {{average_length:Float64}}))"
    total = " + ".join(parts) if parts else "0"
    score = f"if({full}, 1., least(({total}) * {length_factor} / {{best:Float64}}, 0.999999))"
    condition = " OR ".join(placeholders.values())
    return score, f"({condition})", params


def vocabulary_params(query: QueryWords) -> dict[str, object]:
    """The parameters of the vocabulary lookup (`sql.TEXT_TERMS`)."""
    fuzzy = query.fuzzy
    lengths = [len(word) for word in fuzzy] or [0]
    return {
        "exact": query.exact,
        "prefixes": query.prefixes,
        "name_prefixes": query.name_prefixes,
        "fuzzy": fuzzy,
        "min_length": max(min(lengths) - 2, 0),
        "max_length": max(lengths) + 2,
    }


def vocabulary_of(rows: Sequence[tuple[object, ...]]) -> Vocabulary:
    """The terms table's answer (term, rows, length) as a Vocabulary."""
    frequencies: dict[str, int] = {}
    documents, length = 0, 0
    for term, count, total in rows:
        if term == "":
            documents, length = int(str(count)), int(str(total))
        else:
            frequencies[str(term)] = int(str(count))
    return Vocabulary(documents, length / documents if documents else 1.0, frequencies)
