"""Counts with their nouns, in the right number: "1 target", "2 targets", "1,204 objects".

Owns the one rule for singular and plural in every text the tool writes (log lines, the summary,
status, the card, verify and restore). Pure; imports nothing of this package, so any module may
use it.
"""

from __future__ import annotations

_IRREGULAR = {"was": "were", "is": "are", "has": "have", "this": "these", "it": "they"}


def plural(noun: str) -> str:
    """The English plural of a noun as the tool uses them (target, entry, class, is)."""
    if noun in _IRREGULAR:
        return _IRREGULAR[noun]
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return noun[:-1] + "ies"
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


def noun_for(n: int, noun: str, many: str | None = None) -> str:
    """`noun` for one; for any other count (zero included) `many`, else the noun with its last word
    in the plural: noun_for(2, "failed file") is "failed files"."""
    if n == 1:
        return noun
    if many is not None:
        return many
    head, _, last = noun.rpartition(" ")
    return f"{head} {plural(last)}" if head else plural(last)


def counted(n: int, noun: str, many: str | None = None) -> str:
    """'1 target', '0 targets', '12,345 files': the count with thousands separators, then the noun."""
    return f"{n:,} {noun_for(n, noun, many)}"
