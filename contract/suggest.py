""" "Did you mean ...?" for misspelt field names, option names and values (difflib plus prefixes)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def suggestions(word: str, candidates: Iterable[str], limit: int = 2) -> list[str]:
    """Known names close to ``word``: those it begins (shortest first), then close spellings."""
    known = [str(c) for c in candidates]
    close = difflib.get_close_matches(word, known, n=limit, cutoff=0.6)
    prefixed = sorted((c for c in known if c.startswith(word) and c != word), key=len)
    return list(dict.fromkeys(prefixed + close))[:limit]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``did you mean 'a'?`` / ``did you mean 'a' or 'b'?``, or "" when nothing is close."""
    found = suggestions(word, candidates)
    return f"did you mean {' or '.join(repr(s) for s in found)}?" if found else ""
