"""Structure-name matching by per-trial alias lists (rule 2).

Aliases are shell-style wildcards, matched case-insensitively; the alias that matched is returned
so it can be recorded beside the structure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase


def matches(name: str, pattern: str) -> bool:
    return fnmatchcase(name.strip().lower(), pattern.strip().lower())


def match_aliases(names: Iterable[str], aliases: Sequence[str]) -> list[tuple[str, str]]:
    """All (name, alias) pairs, in alias priority order: the first alias that matches a name wins.

    Each name appears at most once. Callers decide what several matches mean (usually ambiguity).
    """
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    names = list(names)
    for alias in aliases:
        for name in names:
            if name not in seen and matches(name, alias):
                found.append((name, alias))
                seen.add(name)
    return found


def first_match(names: Iterable[str], aliases: Sequence[str]) -> tuple[str, str] | None:
    """The best (name, alias) pair: earliest alias in the list, then the first name in order."""
    found = match_aliases(names, aliases)
    return found[0] if found else None
