"""Tokenizers built from GGUF metadata, token-exact with llama.cpp (``llama-vocab.cpp``).

Two vocabulary types:

* ``tokenizer.ggml.model == "llama"`` -- SentencePiece BPE ("SPM"): spaces become U+2581
  ("▁"), one is prepended to a text fragment that starts the input or follows a special
  token when ``add_space_prefix`` (default true; Gemma 3 sets it false); the fragment is
  split into characters and the adjacent pair whose concatenation is a token with the
  highest score is merged, again and again (ties: the leftmost pair).  Symbols left that
  are not tokens become byte tokens ``<0xXX>`` (or the unknown token).
* ``tokenizer.ggml.model == "gpt2"`` -- byte-level BPE: the pre-tokenizer named by
  ``tokenizer.ggml.pre`` splits the text (see :mod:`.bpe_pretokenize`), each piece's UTF-8
  bytes are mapped to GPT-2's printable alphabet, and merges are applied lowest rank first
  (ties: leftmost).

Before either, special tokens are split out of the text as llama.cpp's
``tokenizer_st_partition`` does: longest token text first, every occurrence in every text
fragment left.  Control and unknown tokens are split out only with ``parse_special=True``;
user-defined tokens (token type 4, e.g. Gemma's ``"\\n"``, runs of spaces, ``<table>``) are
*always* split out, exactly as llama.cpp (and Hugging Face ``tokenizers``) do.

Speed: the merge loops work on one "word" at a time and their results are cached per word.
For SPM that is only valid where no merge can cross a word boundary: the text is cut before
a "▁" only when the character before it never precedes a "▁" inside any token of the
vocabulary, so no token can span the cut (checked once per vocabulary in ``from_gguf``).

Decoding follows ``token_to_piece``: SPM normal tokens with "▁" -> " ", byte tokens ->
their byte, control/unknown/user-defined tokens -> their text; BPE normal tokens through
the GPT-2 alphabet back to bytes.  Control and unknown tokens render as "" with
``skip_special=True``.  Unused/undefined token types render as "" (as in llama.cpp).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import ModelFormatError
from .bpe_pretokenize import BYTE_ENCODE_TABLE
from .detokenize import StreamDecoder, clean_spaces as _clean_spaces
from .special_tokens import TokenType, utf8 as _utf8
from .vocab import SPACE, Vocab

__all__ = ["Tokenizer", "StreamDecoder", "TokenType"]


# The compiled merge loop (smallmind/_tokenize.pyx) is O(n^2) in a word's length: a text
# whose words are all at most _LONG_WORD_C long goes through it whole; otherwise each word
# longer than _LONG_WORD takes the O(n log n) heap loop (_heap_merge) instead.
_LONG_WORD = 48
_LONG_WORD_C = 512
# words longer than this are not cached
_CACHE_WORD_MAX = 64
_CACHE_MAX_ENTRIES = 200_000


def _encode_text(s: str) -> bytes:
    """UTF-8 of (sanitized) input text; U+DC80..U+DCFF stand for raw bytes."""
    return s.encode("utf-8", "surrogateescape")


def _sanitize(text: str) -> str:
    """Lone surrogates other than surrogateescape's U+DC80..U+DCFF (raw bytes) cannot be
    UTF-8: replace them with U+FFFD."""
    try:
        text.encode("utf-8", "surrogateescape")
        return text
    except UnicodeEncodeError:
        return "".join(
            "\ufffd" if "\ud800" <= c <= "\udfff" and not "\udc80" <= c <= "\udcff" else c for c in text
        )


def _heap_merge(word: str, priority: Callable[[str, str], float | None]) -> list[str]:
    """The symbols of ``word`` after llama.cpp's merge loop with its priority queue: merge
    the adjacent pair with the lowest priority (leftmost on ties) while any pair has one
    (``priority`` is None for a pair that does not merge).  The same result as the compiled
    loop, in O(n log n) for long words."""
    text = list(word)
    n = len(text)
    nxt = list(range(1, n)) + [-1]
    prv = list(range(-1, n - 1))
    heap: list[tuple[float, int, int, str]] = []

    def push(left, right):
        if left < 0 or right < 0:
            return
        p = priority(text[left], text[right])
        if p is not None:
            heapq.heappush(heap, (p, left, right, text[left] + text[right]))

    for i in range(1, n):
        push(i - 1, i)
    while heap:
        _, left, right, merged = heapq.heappop(heap)
        lt, rt = text[left], text[right]
        if not lt or not rt or lt + rt != merged:  # a stale pair: one side merged since
            continue
        text[left] = merged
        text[right] = ""
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prv[nxt[right]] = left
        push(prv[left], left)
        push(left, nxt[left])
    out = []
    i = 0
    while i != -1:
        out.append(text[i])
        i = nxt[i]
    return out


def _to_byte_alphabet(word: str) -> str:
    return _encode_text(word).decode("latin-1").translate(BYTE_ENCODE_TABLE)


class Tokenizer(Vocab):
    """A llama.cpp-compatible tokenizer.  Build with :meth:`from_gguf`.

    Attributes (read-only by convention): ``model`` ("llama" or "gpt2"), ``pre`` (the
    pre-tokenizer name, BPE only), ``tokens`` (list of token texts), ``token_types`` (list
    of :class:`TokenType` values after llama.cpp's adjustments), ``add_bos``, ``add_eos``,
    ``add_space_prefix``, ``clean_spaces`` (llama.cpp's detokenizer space clean-up flag),
    ``unk_id``, ``pad_id``, ``eom_id``.
    """

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_gguf(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build from a GGUF metadata dict (``GGUFFile(path).metadata``).

        Raises :class:`ModelFormatError` for missing, malformed or unsupported tokenizer
        metadata."""
        self = cls.__new__(cls)
        self._init(metadata)
        return self

    # ------------------------------------------------------------------ encode
    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of ``text``.

        ``add_special`` adds BOS (if ``add_bos``) and EOS (if ``add_eos``);
        ``parse_special`` turns the text of control tokens (e.g. ``<start_of_turn>``)
        into those tokens.  User-defined tokens are always matched (as in llama.cpp)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        out: list[int] = []
        text = _sanitize(text)
        frags = self._partition[bool(parse_special)].partition(text) if text else []
        if self.model == "llama":
            if add_special and self.add_bos and self.bos_id is not None:
                out.append(self.bos_id)
            prev_special = True
            prefix = self.add_space_prefix
            for f in frags:
                if f.__class__ is int:
                    out.append(f)
                    prev_special = True
                else:
                    if prefix and prev_special:
                        f = " " + f
                    self._spm_encode(f.replace(" ", SPACE), out)
                    prev_special = False
        else:
            if add_special and self.add_bos and self.bos_id is not None:
                out.append(self.bos_id)
            for f in frags:
                if f.__class__ is int:
                    out.append(f)
                else:
                    self._bpe_encode(f, out)
        if add_special and self.add_eos and self.eos_id is not None:
            out.append(self.eos_id)
        return out

    # ---- SPM
    def _spm_encode(self, text: str, out: list[int]) -> None:
        cache = self._cache
        words = self._spm_split_rx.split(text)
        if max(map(len, words)) <= _LONG_WORD_C:
            self._c.encode_words(words, cache, out, _CACHE_WORD_MAX)
            if len(cache) > _CACHE_MAX_ENTRIES:
                cache.clear()
        else:
            self._encode_words(words, out, self._spm_word)

    def _encode_words(
        self, words: list[str], out: list[int], word_ids: Callable[[str], tuple[int, ...]]
    ) -> None:
        """out += each word's ids, through the word cache, one word at a time (a text with
        a word too long for the compiled loop)."""
        cache = self._cache
        for w in words:
            ids = cache.get(w)
            if ids is None:
                ids = word_ids(w)
                if len(w) <= _CACHE_WORD_MAX:
                    if len(cache) >= _CACHE_MAX_ENTRIES:
                        cache.clear()
                    cache[w] = ids
            out.extend(ids)

    def _spm_word(self, word: str) -> tuple[int, ...]:
        if len(word) <= _LONG_WORD:
            return tuple(self._c.encode_word(word))
        syms = self._spm_merge_long(word)
        t2i = self._tok2id
        ids: list[int] = []
        for s in syms:
            i = t2i.get(s)
            if i is not None:
                ids.append(i)
            else:
                for b in _utf8(s):
                    ids.append(self._byte_token(b))
        return tuple(ids)

    def _byte_token(self, b: int) -> int:
        i = self._byte_ids[b]
        if i is None:
            i = self.unk_id
            if i is None:
                raise ModelFormatError(f"vocabulary has no byte token for 0x{b:02X} and no unknown token")
        return i

    def _spm_merge_long(self, word: str) -> list[str]:
        """SPM's merges of a long word: the highest score first."""
        score = self._score.get

        def priority(left: str, right: str) -> float | None:
            s = score(left + right)
            return None if s is None else -s

        return _heap_merge(word, priority)

    # ---- BPE
    def _bpe_encode(self, text: str, out: list[int]) -> None:
        cache = self._cache
        words = self.pretokenizer.split(text)  # type: ignore[union-attr]  # set for every gpt2 tokenizer
        if words and max(map(len, words)) <= _LONG_WORD_C:
            self._c.encode_words(words, cache, out, _CACHE_WORD_MAX, _to_byte_alphabet)
            if len(cache) > _CACHE_MAX_ENTRIES:
                cache.clear()
        else:
            self._encode_words(words, out, lambda w: self._bpe_word(_to_byte_alphabet(w)))

    def _bpe_word(self, word: str) -> tuple[int, ...]:
        t2i = self._tok2id
        if self._ignore_merges:
            i = t2i.get(word)
            if i is not None:
                return (i,)
        if len(word) <= _LONG_WORD:
            return tuple(self._c.encode_word(word))
        syms = self._bpe_merge_long(word)
        ids: list[int] = []
        for s in syms:
            i = t2i.get(s)
            if i is not None:
                ids.append(i)
            else:  # llama.cpp: look up each byte of the symbol's UTF-8; skip misses
                for b in _utf8(s):
                    j = t2i.get(bytes([b]).decode("utf-8", "surrogateescape"))
                    if j is not None:
                        ids.append(j)
        return tuple(ids)

    def _bpe_merge_long(self, word: str) -> list[str]:
        """BPE's merges of a long word: the lowest rank first."""
        rank = self._ranks.get
        return _heap_merge(word, lambda left, right: rank(f"{left} {right}"))

    def clear_cache(self) -> None:
        """Forget cached word tokenizations (for benchmarks)."""
        self._cache.clear()

    # ------------------------------------------------------------------ decode
    def decode_bytes(
        self,
        ids: Iterable[int],
        skip_special: bool = False,
        strip_leading_space: bool = False,
        clean_spaces: bool = False,
    ) -> bytes:
        """Raw bytes of ``ids`` (see :meth:`decode`)."""
        pieces = self._pieces
        special = self._special_ids
        n = len(pieces)
        parts = []
        strip = strip_leading_space and self.add_space_prefix
        bos = self.bos_id
        for k, i in enumerate(ids):
            i = int(i)
            if not 0 <= i < n:
                raise ValueError(f"token id {i} out of range [0, {n})")
            p = b"" if skip_special and i in special else pieces[i]
            if strip and not (k == 0 and i == bos):
                # the space the encoder prepended: first token after an optional BOS
                if p[:1] == b" ":
                    p = p[1:]
                strip = False
            parts.append(p)
        data = b"".join(parts)
        if clean_spaces:
            data = _clean_spaces(data)
        return data

    def decode(
        self,
        ids: Iterable[int],
        skip_special: bool = False,
        strip_leading_space: bool = False,
        clean_spaces: bool = False,
    ) -> str:
        """Text of ``ids`` (concatenated token pieces; invalid UTF-8 -> U+FFFD).

        ``skip_special`` renders control/unknown tokens as "".  ``strip_leading_space``
        (SPM with ``add_space_prefix`` only) drops one leading space of the first token
        after an optional leading BOS -- the space the encoder prepended.  (llama.cpp's
        ``llama_detokenize`` strips it only when the sequence does not start with BOS.)
        ``clean_spaces`` applies llama.cpp's detokenizer clean-up (" ." -> "." etc.),
        which llama.cpp uses in ``llama_detokenize`` when the vocabulary's
        ``clean_spaces`` flag is set, but not when streaming token pieces."""
        return self.decode_bytes(ids, skip_special, strip_leading_space, clean_spaces).decode(
            "utf-8", "replace"
        )

    def __repr__(self) -> str:
        return (
            f"Tokenizer(model={self.model!r}, pre={self.pre!r}, "
            f"vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id})"
        )
