"""Text helpers shared by the providers: token estimates and truncation."""

from __future__ import annotations

TRUNCATION_MARK = " …"


def estimate_tokens(text: str) -> int:
    """A conservative token estimate: ~4 ASCII characters a token, one token per other character.

    BPE tokenizers put at least one byte in a token, and non-Latin scripts often take a token a
    character, so counting those characters whole keeps the estimate on the safe side.
    """
    ascii_chars = sum(1 for char in text if ord(char) < 128)
    return (ascii_chars + 3) // 4 + (len(text) - ascii_chars)


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """Cut `text` so that its estimated token count stays within `max_tokens`."""
    if estimate_tokens(text) <= max_tokens:
        return text
    budget = max_tokens * 4 - len(TRUNCATION_MARK) * 4
    used = 0
    for position, char in enumerate(text):
        used += 1 if ord(char) < 128 else 4
        if used > budget:
            return text[:position].rstrip() + TRUNCATION_MARK
    return text
