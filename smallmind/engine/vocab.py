"""A llama.cpp vocabulary read from GGUF metadata, as ``llama_vocab::impl::load`` reads it:
token texts and types, the special and end-of-generation ids (given, or found by their text),
the special-token partition tables, the SPM scores or BPE merges behind the compiled merge
loops, and each token's bytes for decoding.  :class:`~.tokenizer.Tokenizer` encodes and
decodes with it; the module docstring there describes both algorithms."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import regex

from .._tokenize import BpeVocab as _CBpeVocab, SpmVocab as _CSpmVocab
from ..errors import ModelFormatError
from .bpe_pretokenize import BYTE_DECODE_TABLE, PreTokenizer, get_pretokenizer
from .special_tokens import SpecialMatcher, TokenType, utf8 as _utf8

__all__ = ["Vocab", "SPACE"]


SPACE = "\u2581"

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


class Vocab:
    """The tables of one vocabulary, built by ``_init`` from GGUF metadata (ModelFormatError
    for missing, malformed or unsupported tokenizer metadata), and lookups into them."""

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
