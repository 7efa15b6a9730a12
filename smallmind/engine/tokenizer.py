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

import functools
import heapq
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import regex

from .._tokenize import BpeVocab as _CBpeVocab, SpmVocab as _CSpmVocab
from ..errors import ModelFormatError
from .bpe_pretokenize import BYTE_DECODE_TABLE, BYTE_ENCODE_TABLE, PreTokenizer, get_pretokenizer
from .detokenize import StreamDecoder, clean_spaces as _clean_spaces
from .special_tokens import SpecialMatcher, TokenType, utf8 as _utf8

__all__ = ["Tokenizer", "StreamDecoder", "TokenType"]


SPACE = "\u2581"
# The compiled merge loop (smallmind/_tokenize.pyx) is O(n^2) in a word's length: a text
# whose words are all at most _LONG_WORD_C long goes through it whole; otherwise each word
# longer than _LONG_WORD takes the O(n log n) heap loop (_heap_merge) instead.
_LONG_WORD = 48
_LONG_WORD_C = 512
# words longer than this are not cached
_CACHE_WORD_MAX = 64
_CACHE_MAX_ENTRIES = 200_000

# llama.cpp detects these by text (llama_vocab::impl::load) and forces them to CONTROL.
_EOT_TEXTS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
)
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_PAD_TEXTS = ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>")
_FIM_REP_TEXTS = ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<fim_repo>", "<REPO>")
_FIM_SEP_TEXTS = ("<|file_sep|>",)
_EOG_TEXTS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
)


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


class Tokenizer:
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

    def _init(self, md: Mapping[str, Any]) -> None:
        model = md.get("tokenizer.ggml.model")
        if model is None:
            raise ModelFormatError("tokenizer metadata missing: no tokenizer.ggml.model")
        if model not in ("llama", "gpt2"):
            raise ModelFormatError(
                f"unsupported tokenizer model {model!r} (tokenizer.ggml.model); "
                "supported: 'llama' (SentencePiece), 'gpt2' (byte-level BPE)"
            )
        self.model = model
        is_spm = model == "llama"

        tokens = md.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise ModelFormatError("tokenizer metadata missing: no tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not set(map(type, tokens)) <= {str}:
            raise ModelFormatError("tokenizer.ggml.tokens must be an array of strings")
        n = len(tokens)
        if n == 0:
            raise ModelFormatError("tokenizer.ggml.tokens is empty")
        if not all(tokens):  # llama.cpp renames empty tokens
            tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self.tokens = tokens

        scores = self._numeric_array(md, "tokenizer.ggml.scores", n)
        self.scores = scores.astype("float32").tolist() if scores is not None else [0.0] * n
        ttypes = self._numeric_array(md, "tokenizer.ggml.token_type", n)
        self.token_types = ttypes.astype("int64").tolist() if ttypes is not None else [TokenType.NORMAL] * n

        # last occurrence wins, as with llama.cpp's token_to_id[word] = i
        self._tok2id: dict[str, int] = dict(zip(tokens, range(n)))

        # ---- type defaults (llama.cpp load())
        self.pretokenizer: PreTokenizer | None = None
        self.pre: str | None = None
        if is_spm:
            bos, eos, unk = 1, 2, 0
            self.add_space_prefix = True
            self.clean_spaces = False
            self.add_bos, self.add_eos = True, False
        else:
            bos, eos, unk = 11, 11, None
            pre = md.get("tokenizer.ggml.pre")
            self.pretokenizer = get_pretokenizer(pre)
            self.pre = self.pretokenizer.name
            self.add_space_prefix = False
            self.clean_spaces = self.pretokenizer.clean_spaces
            self.add_bos, self.add_eos = self.pretokenizer.add_bos, False
            if self.pretokenizer.no_bos:
                bos = None
        self.add_space_prefix = self._bool(md, "tokenizer.ggml.add_space_prefix", self.add_space_prefix)

        def default(i):
            return i if i is not None and 0 <= i < n else None

        self.bos_id = self._token_id(md, "tokenizer.ggml.bos_token_id", default(bos))
        self.eos_id = self._token_id(md, "tokenizer.ggml.eos_token_id", default(eos))
        self.eot_id = self._token_id(md, "tokenizer.ggml.eot_token_id", None)
        self.eom_id = self._token_id(md, "tokenizer.ggml.eom_token_id", None)
        self.unk_id = self._token_id(md, "tokenizer.ggml.unknown_token_id", default(unk))
        self.pad_id = self._token_id(md, "tokenizer.ggml.padding_token_id", None)
        fim_pad = self._token_id(md, "tokenizer.ggml.fim_pad_token_id", None)
        fim_rep = self._token_id(md, "tokenizer.ggml.fim_rep_token_id", None)
        fim_sep = self._token_id(md, "tokenizer.ggml.fim_sep_token_id", None)
        self.add_bos = self._bool(md, "tokenizer.ggml.add_bos_token", self.add_bos)
        self.add_eos = self._bool(md, "tokenizer.ggml.add_eos_token", self.add_eos)

        # ---- text-detected special tokens (llama.cpp forces them to CONTROL)
        tt = self.token_types
        t2i = self._tok2id

        def detect(current, texts):
            if current is not None:
                return current
            # llama.cpp takes whichever match its hash map yields first; we take the
            # first text in list order (so "<|eot_id|>" beats "<|end_of_text|>")
            for t in texts:
                i = t2i.get(t)
                if i is not None:
                    tt[i] = TokenType.CONTROL
                    return i
            return None

        self.eot_id = detect(self.eot_id, _EOT_TEXTS)
        self.eom_id = detect(self.eom_id, _EOM_TEXTS)
        fim_pad = detect(fim_pad, _FIM_PAD_TEXTS)
        fim_rep = detect(fim_rep, _FIM_REP_TEXTS)
        fim_sep = detect(fim_sep, _FIM_SEP_TEXTS)
        eog = {i for i in (fim_pad, fim_rep, fim_sep) if i is not None}
        for t in _EOG_TEXTS:
            i = t2i.get(t)
            if i is not None:
                eog.add(i)
                tt[i] = TokenType.CONTROL
        for i in (self.eos_id, self.eot_id, self.eom_id):
            if i is not None:
                eog.add(i)
        self._eog_ids = frozenset(eog)

        tt_arr = np.asarray(tt, dtype=np.int64)
        self._special_ids = frozenset(
            np.flatnonzero((tt_arr == TokenType.CONTROL) | (tt_arr == TokenType.UNKNOWN)).tolist()
        )

        # ---- special-token partition tables
        with_control = SpecialMatcher(tokens, tt_arr, parse_special=True)
        self._partition = {
            True: with_control,
            False: SpecialMatcher(tokens, tt_arr, parse_special=False, superset=with_control),
        }

        # ---- algorithm tables
        self._cache: dict[str, tuple[int, ...]] = {}
        if is_spm:
            self._init_spm()
        else:
            self._init_bpe(md)

        # decode pieces: built on first use (self._pieces)

    @staticmethod
    def _numeric_array(md, key, n):
        arr = md.get(key)
        if arr is None:
            return None
        if not hasattr(arr, "dtype") or getattr(arr, "ndim", 0) != 1 or arr.dtype.kind not in "iuf":
            raise ModelFormatError(f"{key} must be a numeric array")
        if len(arr) != n:
            raise ModelFormatError(f"{key} has {len(arr)} entries but tokenizer.ggml.tokens has {n}")
        return arr

    @staticmethod
    def _bool(md, key, default):
        v = md.get(key)
        if v is None:
            return default
        if isinstance(v, bool):
            return v
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
        raise ModelFormatError(f"{key} must be a bool, got {v!r}")

    def _token_id(self, md, key, default):
        v = md.get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise ModelFormatError(f"{key} must be an integer token id, got {v!r}")
        if not 0 <= v < len(self.tokens):
            # llama.cpp warns "bad special token" and keeps the default
            return default
        return v

    def _init_spm(self) -> None:
        tokens, scores = self.tokens, self.scores
        t2i = self._tok2id
        # byte fallback: <0xXX> tokens, else the single-byte token (llama.cpp byte_to_token)
        byte_ids: list[int | None] = []
        for b in range(256):
            i = t2i.get(f"<0x{b:02X}>")
            if i is None:
                i = t2i.get(bytes([b]).decode("utf-8", "surrogateescape"))
            byte_ids.append(i)
        self._byte_ids = byte_ids
        # characters that precede a "▁" inside some token: never cut between them and "▁"
        joined = "\x00".join(tokens)
        bad = set(regex.findall(f"([^{SPACE}\x00]){SPACE}", joined))
        if joined.count("\x00") != len(tokens) - 1:
            bad.add("\x00")  # a token holds a NUL itself: be conservative
        self._spm_nosplit = frozenset(bad)
        self._c: Any = _CSpmVocab(tokens, scores, byte_ids, self.unk_id)  # or a _CBpeVocab
        cls = "".join(re.escape(c) for c in sorted(bad | {SPACE}))
        self._spm_split_rx = re.compile(f"(?<=[^{cls}])(?={SPACE})")

    def _init_bpe(self, md) -> None:
        merges = md.get("tokenizer.ggml.merges")
        if merges is None:
            raise ModelFormatError(
                "tokenizer metadata missing: no tokenizer.ggml.merges (required for a gpt2 tokenizer)"
            )
        if not isinstance(merges, list) or not set(map(type, merges)) <= {str}:
            raise ModelFormatError("tokenizer.ggml.merges must be an array of strings")
        self._merges = merges
        assert self.pretokenizer is not None, "a gpt2 tokenizer always has a pre-tokenizer"
        self._ignore_merges = self.pretokenizer.ignore_merges
        self._c = _CBpeVocab(self.tokens, merges, self._ignore_merges)

    @functools.cached_property
    def _score(self) -> dict[str, float]:
        """SPM: text -> score of the token (last duplicate wins, like _tok2id), for the heap
        loop; built on first long word (the compiled loop has its own table)."""
        return dict(zip(self.tokens, self.scores))

    @functools.cached_property
    def _ranks(self) -> dict[str, int]:
        """BPE: merge line "left right" -> rank.  Keyed by the line itself: llama.cpp
        splits a line at its first space after position 0, and looking up left + " " +
        right is the same because byte-level symbols never contain a space ("Ġ").  Built
        in reverse so that, as with llama.cpp's map.emplace, a repeated line keeps its
        first (lowest) rank.  For the heap loop; built on first long word."""
        m = self._merges
        return dict(zip(reversed(m), range(len(m) - 1, -1, -1)))

    @functools.cached_property
    def _pieces(self) -> list[bytes]:
        """Each token's bytes as llama.cpp's token_to_piece(special=True) gives them.
        Built on first use (~0.1 s for 262k tokens)."""
        tokens, tt = self.tokens, self.token_types
        tt_arr = np.asarray(tt, dtype=np.int64)
        N, C, U, D, B = (
            TokenType.NORMAL,
            TokenType.CONTROL,
            TokenType.UNKNOWN,
            TokenType.USER_DEFINED,
            TokenType.BYTE,
        )
        spm = self.model == "llama"
        normal = np.flatnonzero(tt_arr == N).tolist()
        pieces: list[bytes] = [b""] * len(tokens)
        texts = [tokens[i] for i in normal]
        if spm:
            # one join/replace/encode for all normal tokens, split at NUL (unless a token
            # holds a NUL itself: then one by one)
            joined = "\x00".join(texts)
            if joined.count("\x00") == len(texts) - 1:
                parts = joined.replace(SPACE, " ").encode("utf-8", "surrogateescape").split(b"\x00")
            else:
                parts = [_utf8(t.replace(SPACE, " ")) for t in texts]
        else:
            # the GPT-2 alphabet maps each character to exactly one byte: translate and
            # encode everything at once, then cut by the character lengths
            table = BYTE_DECODE_TABLE
            try:
                blob = "".join(texts).translate(table).encode("latin-1")
                parts = []
                pos = 0
                for t in texts:
                    end = pos + len(t)
                    parts.append(blob[pos:end])
                    pos = end
            except UnicodeEncodeError:
                parts = [self._bpe_piece_slow(t) for t in texts]
        for i, p in zip(normal, parts):
            pieces[i] = p
        for i in np.flatnonzero(tt_arr != N).tolist():
            ty = tt[i]
            if ty in (C, U, D):
                pieces[i] = _utf8(tokens[i])
            elif ty == B and spm:
                t = tokens[i]
                if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                    try:
                        pieces[i] = bytes([int(t[3:5], 16)])
                    except ValueError:
                        pass
        return pieces

    @staticmethod
    def _bpe_piece_slow(t: str) -> bytes:
        table = BYTE_DECODE_TABLE
        try:
            return t.translate(table).encode("latin-1")
        except UnicodeEncodeError:
            # a character outside the byte alphabet: keep its UTF-8 (llama.cpp prints an
            # "[UNK_BYTE_0x..]" marker instead)
            return b"".join(bytes([table[ord(c)]]) if ord(c) in table else _utf8(c) for c in t)

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def eog_ids(self) -> frozenset[int]:
        """End-of-generation ids: eos, eot, eom, FIM pad/rep/sep and, by text,
        <|eot_id|>, <|im_end|>, <end_of_turn>, <|endoftext|>, ... (as llama.cpp)."""
        return self._eog_ids

    def is_special(self, token_id: int) -> bool:
        """True for control and unknown tokens (those ``skip_special`` hides)."""
        return token_id in self._special_ids

    def token_text(self, token_id: int) -> str:
        return self.tokens[token_id]

    def token_to_id(self, text: str) -> int | None:
        return self._tok2id.get(text)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (special tokens as their text)."""
        return self._pieces[token_id]

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """The most bytes of input text one token can stand for, so that a text of B UTF-8
        bytes needs at least ceil(B / max_token_bytes) tokens.  A token covers its piece
        (a special token: its text); a character no token covers becomes byte tokens or
        the unknown token, so at most 4 bytes (one character, or U+FFFD for a lone
        surrogate) ride on an unknown one."""
        return max(4, max(map(len, self._pieces), default=0))

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
