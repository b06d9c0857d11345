"""Masking secrets in text: whole, percent-encoded, and any long enough piece of one.

Theory: a secret can leak whole (an error body echoing the request headers), encoded (inside
an Apprise URL), or in part (that body cut to 300 characters, a log line wrapped, a token
split by a proxy). So text is masked in this order, always before it is cut, quoted or
stored: first every whole secret and its percent-encoded form (longest first, so a secret
containing another goes whole), then every run of text that matches a piece of
`PIECE` (12) or more characters of a secret. Twelve characters of a 103-character key, or of
a 24-character token, carry no meaning of their own, and no English phrase in runwatch's own
messages matches twelve characters of a random token.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

MASK = "****"
PIECE = 12  # a piece of a secret this long or longer is masked wherever it appears
MIN_SECRET = 4  # shorter strings would blank out ordinary words and numbers


class Redactor:
    """Masks a fixed set of secrets; cheap to call on every log line."""

    __slots__ = ("_pattern", "_pieces", "secrets")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            for form in (secret, urllib.parse.quote(secret, safe="")):
                if len(form) >= MIN_SECRET:
                    forms.add(form)
        self.secrets = frozenset(forms)
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._pieces = frozenset(
            form[i : i + PIECE] for form in forms for i in range(len(form) - PIECE + 1)
        )

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        text = self._pattern.sub(MASK, text)
        return _mask_pieces(text, self._pieces)

    def extended(self, secrets: Iterable[str]) -> Redactor:
        return Redactor((*self.secrets, *secrets))


def _mask_pieces(text: str, pieces: frozenset[str]) -> str:
    """`text` with every stretch covered by a PIECE-long window found in `pieces` masked."""
    if len(text) < PIECE or not pieces:
        return text
    spans: list[list[int]] = []
    for i in range(len(text) - PIECE + 1):
        if text[i : i + PIECE] in pieces:
            end = i + PIECE
            if spans and i <= spans[-1][1]:
                spans[-1][1] = end
            else:
                spans.append([i, end])
    if not spans:
        return text
    out: list[str] = []
    last = 0
    for start, end in spans:
        out.append(text[last:start])
        out.append(MASK)
        last = end
    out.append(text[last:])
    return "".join(out)


def cut(text: str, limit: int, redact: Redactor) -> str:
    """`text` masked, then on one line, then cut to `limit` characters: in that order."""
    one_line = " ".join(redact(text).split())
    return one_line if len(one_line) <= limit else one_line[:limit] + "…"
