"""Special tokens in a text: which token texts are split out before the merges run.

llama.cpp's ``tokenizer_st_partition``: the longest special token text first, every
occurrence in every text fragment left.  User-defined tokens are always split out; control
and unknown tokens only when the caller asks to parse special tokens."""

from __future__ import annotations

import numpy as np
import regex


class TokenType:
    """Values of ``tokenizer.ggml.token_type`` (llama.cpp's ``llama_token_type``)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


def utf8(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


class SpecialMatcher:
    """llama.cpp's tokenizer_st_partition over the special tokens present in a text."""

    # the prefix walk's tables, built here or shared with a superset matcher
    _prefixes: set[str]
    _maxlen: int
    _start_rx: regex.Pattern[str] | None

    def __init__(
        self,
        tokens: list[str],
        ttypes: np.ndarray,
        parse_special: bool,
        superset: SpecialMatcher | None = None,
    ):
        kinds = {TokenType.USER_DEFINED}
        if parse_special:
            kinds |= {TokenType.CONTROL, TokenType.UNKNOWN}
        # text -> id (llama.cpp walks token ids, so a duplicated text keeps each id; the
        # longer-first order then makes the lowest id win, which we reproduce)
        specials: dict[str, int] = {}
        for i in np.flatnonzero(np.isin(ttypes, list(kinds))).tolist():
            specials.setdefault(tokens[i], i)
        self._specials = specials
        # order: longer UTF-8 text first (llama.cpp std::sort; ties here by id)
        self._rank = {t: (-len(utf8(t)), i) for t, i in specials.items()}
        # Finding which specials occur in a text: runs of one repeated character (Gemma's
        # "\n\n", "   ", "\t\t") are checked with `in` directly (a prefix walk would be
        # quadratic in the run length); the rest by a prefix walk from every position
        # where one of their first two characters occurs.
        self._runs = sorted((t for t in specials if len(set(t)) == 1), key=len)
        others = [t for t in specials if len(set(t)) > 1]
        self._empty = not specials
        if superset is not None:
            # the prefix walk only prunes: a superset's prefixes and start positions are
            # as good (found texts are filtered by this matcher's own specials)
            self._prefixes = superset._prefixes
            self._maxlen = superset._maxlen
            self._start_rx = superset._start_rx if others else None
            return
        prefixes: set[str] = set()
        starts: set[str] = set()
        for t in others:
            for k in range(1, len(t) + 1):
                prefixes.add(t[:k])
            starts.add(t[:2])
        self._prefixes = prefixes
        self._maxlen = max((len(t) for t in others), default=0)
        if starts:
            alt = "|".join(regex.escape(s) for s in sorted(starts, key=lambda s: -len(s)))
            self._start_rx = regex.compile(f"(?=(?:{alt}))")
        else:
            self._start_rx = None

    def _present(self, text: str) -> list[str]:
        specials, prefixes = self._specials, self._prefixes
        found = set()
        missing = set()
        for t in self._runs:  # shortest first: a longer run needs the shorter one
            if t[0] in missing:
                continue
            if t in text:
                found.add(t)
            else:
                missing.add(t[0])
        if self._start_rx is not None:
            maxlen = self._maxlen
            for m in self._start_rx.finditer(text):
                p = m.start()
                for k in range(1, maxlen + 1):
                    s = text[p : p + k]
                    if len(s) < k or s not in prefixes:
                        break
                    if s in specials:
                        found.add(s)
        rank = self._rank
        return sorted(found, key=rank.__getitem__)

    def partition(self, text: str) -> list:
        """``text`` split into str fragments and int special-token ids, in order."""
        if self._empty:
            return [text]
        present = self._present(text)
        if not present:
            return [text]
        frags: list = [(0, len(text))]
        find = text.find
        for tok in present:
            tid = self._specials[tok]
            L = len(tok)
            new: list = []  # fragments as in frags: (start, end) spans and token ids
            for f in frags:
                if f.__class__ is int:
                    new.append(f)
                    continue
                s, e = f
                p = find(tok, s, e)
                if p < 0:
                    new.append(f)
                    continue
                while p >= 0:
                    if p > s:
                        new.append((s, p))
                    new.append(tid)
                    s = p + L
                    p = find(tok, s, e)
                if s < e:
                    new.append((s, e))
            frags = new
        return [f if f.__class__ is int else text[f[0] : f[1]] for f in frags]
