"""Token counts with the real tokenizer (offline), truncation that stays within the limit, cleaning."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry

from entity_vectors.providers import text
from entity_vectors.providers.text import (
    TRUNCATION_MARK,
    clean_text,
    count_tokens,
    encoding_name,
    get_encoding,
    truncate_to_tokens,
)

CL100K_MODEL = "text-embedding-3-small"
O200K_MODEL = "gpt-4.1-mini"


class TestEncodingName:
    """The GPT-4o, 4.1, 5 and o-series families use o200k_base; everything else cl100k_base."""

    @pytest.mark.parametrize(
        ("model", "expected"),
        [
            pytest.param("gpt-4o-mini", "o200k_base", id="gpt-4o-mini"),
            pytest.param("gpt-4o", "o200k_base", id="gpt-4o"),
            pytest.param("gpt-4.1-mini", "o200k_base", id="gpt-4.1-mini"),
            pytest.param("gpt-5", "o200k_base", id="gpt-5"),
            pytest.param("o3-mini", "o200k_base", id="o3-mini"),
            pytest.param("text-embedding-3-small", "cl100k_base", id="text-embedding-3-small"),
            pytest.param("text-embedding-ada-002", "cl100k_base", id="ada-002"),
            pytest.param("gpt-3.5-turbo", "cl100k_base", id="gpt-3.5-turbo"),
            pytest.param("nomic-embed-text", "cl100k_base", id="another-servers-model"),
            pytest.param("", "cl100k_base", id="no-model"),
        ],
    )
    def test_encoding_of_a_model(self, model: str, expected: str) -> None:
        assert encoding_name(model) == expected


class TestCountTokens:
    """Counts are the real tokenizer's, for Latin, CJK and emoji text alike."""

    @pytest.mark.parametrize(
        ("sample", "model", "expected"),
        [
            pytest.param("hello world", CL100K_MODEL, 2, id="latin-cl100k"),
            pytest.param("hello world", O200K_MODEL, 2, id="latin-o200k"),
            pytest.param("ファイル共有のイベント", CL100K_MODEL, 11, id="cjk-cl100k"),
            pytest.param("ファイル共有のイベント", O200K_MODEL, 5, id="cjk-o200k"),
            pytest.param("🎉🎉🎉 launch 🚀", CL100K_MODEL, 13, id="emoji-cl100k"),
            pytest.param("🎉🎉🎉 launch 🚀", O200K_MODEL, 9, id="emoji-o200k"),
            pytest.param("", CL100K_MODEL, 0, id="empty"),
        ],
    )
    def test_known_counts(self, sample: str, model: str, expected: int) -> None:
        assert count_tokens(sample, model) == expected

    def test_special_token_text_is_counted_as_ordinary_text(self) -> None:
        # A description may contain "<|endoftext|>": it is text, never a reason to fail.
        assert count_tokens("<|endoftext|>", CL100K_MODEL) > 1

    def test_the_tokenizer_loads_offline_from_the_shipped_files(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_encodings: None
    ) -> None:
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

        def no_download(blobpath: str) -> bytes:
            raise AssertionError(f"tried to fetch {blobpath}")

        monkeypatch.setattr(tiktoken.load, "read_file", no_download)

        assert count_tokens("ファイル共有のイベント", O200K_MODEL) == 5
        assert count_tokens("ファイル共有のイベント", CL100K_MODEL) == 11
        seeded = {
            hashlib.sha1(
                f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken".encode()
            ).hexdigest()
            for name in ("o200k_base", "cl100k_base")
        }
        assert seeded <= {path.name for path in tmp_path.iterdir()}

    def test_without_a_tokenizer_counts_are_a_conservative_estimate(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(text, "get_encoding", lambda name: None)
        sample = "ファイル共有のイベント 🎉🎉🎉 launch 🚀"

        assert count_tokens(sample, O200K_MODEL) >= count_tokens_really(sample, O200K_MODEL)
        cut = truncate_to_tokens(sample * 50, 20, O200K_MODEL)
        assert cut.endswith(TRUNCATION_MARK) and count_tokens(cut, O200K_MODEL) <= 20


def count_tokens_really(sample: str, model: str) -> int:
    """The real tokenizer's count, whatever `text.get_encoding` is patched to."""
    return len(tiktoken.get_encoding(encoding_name(model)).encode_ordinary(sample))


@pytest.fixture
def fresh_encodings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Forget the encodings loaded so far (ours and tiktoken's), and again afterwards."""
    for name in ("o200k_base", "cl100k_base"):
        monkeypatch.delitem(tiktoken.registry.ENCODINGS, name, raising=False)
    get_encoding.cache_clear()
    yield
    get_encoding.cache_clear()


# Pieces that make tokenizers split characters: multi-byte scripts, emoji (with joiners and
# modifiers), combining marks, astral-plane letters and runs of whitespace.
PIECES = [
    "hello", " world", "東京", "ファイル", "共有", "🎉", "🚀", "👩\u200d👩\u200d👧", "👍🏽", "é", "e\u0301", " ", "  ",
    "\n", "\t", ".", "…", "naïve", "\U0001d518\U0001d52b\U0001d526", "مرحبا", "한국어", "12345", "\u200b",
]  # fmt: skip


def random_texts(count: int, seed: int) -> Iterator[tuple[str, str, int]]:
    """(text, model, limit) triples built from PIECES."""
    rng = random.Random(seed)
    for _ in range(count):
        sample = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 80)))
        yield sample, rng.choice([CL100K_MODEL, O200K_MODEL]), rng.randint(2, 40)


class TestTruncateToTokens:
    """A cut stays within the limit, keeps a prefix of whole characters and ends with the mark."""

    @pytest.mark.parametrize(
        "model", [pytest.param(CL100K_MODEL, id="cl100k"), pytest.param(O200K_MODEL, id="o200k")]
    )
    def test_a_text_within_the_limit_is_returned_unchanged(self, model: str) -> None:
        sample = "ファイル共有のイベント 🎉🎉🎉 launch 🚀\n\tend  "
        limit = count_tokens(sample, model)

        assert truncate_to_tokens(sample, limit, model) == sample
        assert truncate_to_tokens(sample, limit + 100, model) == sample

    @pytest.mark.parametrize(
        ("sample", "limit"),
        [
            pytest.param("word " * 5000, 100, id="latin"),
            pytest.param("東京" * 3000, 50, id="cjk"),
            pytest.param("🎉" * 1000, 7, id="emoji-of-several-tokens-each"),
            pytest.param("👩\u200d👩\u200d👧 family " * 500, 33, id="joined-emoji"),
        ],
    )
    @pytest.mark.parametrize(
        "model", [pytest.param(CL100K_MODEL, id="cl100k"), pytest.param(O200K_MODEL, id="o200k")]
    )
    def test_a_long_text_is_cut_within_the_limit_with_the_mark(
        self, sample: str, limit: int, model: str
    ) -> None:
        cut = truncate_to_tokens(sample, limit, model)

        assert cut.endswith(TRUNCATION_MARK)
        assert limit - 5 <= count_tokens(cut, model) <= limit
        assert sample.startswith(cut.removesuffix(TRUNCATION_MARK))
        assert "\ufffd" not in cut

    def test_random_mixed_script_texts_never_exceed_the_limit_or_split_a_character(self) -> None:
        for sample, model, limit in random_texts(3000, seed=20250115):
            cut = truncate_to_tokens(sample, limit, model)

            assert count_tokens(cut, model) <= limit, (sample, model, limit)
            if cut != sample:
                assert cut.endswith(TRUNCATION_MARK), (sample, model, limit)
                assert sample.startswith(cut.removesuffix(TRUNCATION_MARK)), (sample, model, limit)
                assert "\ufffd" not in cut
            cut.encode("utf-8")  # valid text: no lone surrogate


class TestCleanText:
    """NUL, other control characters and lone surrogates go; newlines, tabs and everything else stay."""

    @pytest.mark.parametrize(
        ("dirty", "clean"),
        [
            pytest.param("a\x00b", "ab", id="nul"),
            pytest.param("bell\x07 escape\x1b[0m del\x7f", "bell escape[0m del", id="control-characters"),
            pytest.param(
                "line one\nline two\ttabbed\r\n", "line one\nline two\ttabbed\r\n", id="whitespace-kept"
            ),
            pytest.param("broken \ud800 surrogate", "broken  surrogate", id="lone-surrogate"),
            pytest.param("東京 🎉 naïve e\u0301 \u200b", "東京 🎉 naïve e\u0301 \u200b", id="unicode-kept"),
            pytest.param("\x00\x01\x02", "", id="nothing-left"),
        ],
    )
    def test_clean_text(self, dirty: str, clean: str) -> None:
        assert clean_text(dirty) == clean
        clean_text(dirty).encode("utf-8")  # storable: valid UTF-8
