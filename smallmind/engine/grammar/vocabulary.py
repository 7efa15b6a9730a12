"""A model's vocabulary as llguidance sees it: each token's bytes, with special tokens marked
so no grammar ever matches them as text, and the end-of-generation tokens a finished value
may be followed by.  Built once per tokenizer (about 1.5 s for Gemma's 262k tokens) and
shared by every grammar and sequence."""

from __future__ import annotations

import threading
import weakref

import llguidance
import numpy as np

# llguidance's marker for a special token: its bytes start with 0xFF, which never occurs in
# UTF-8 text, so a grammar's literals and regexes cannot match it.
SPECIAL_MARK = b"\xff"


class _TokenizerAdapter:
    """What llguidance.TokenizerWrapper asks of a tokenizer: token bytes, EOS/BOS ids, and a
    call that tokenizes text (used for literal strings the grammar forces)."""

    def __init__(self, tokenizer, token_bytes: list[bytes], eog_ids: list[int]):
        self._tokenizer = tokenizer
        self.tokens = token_bytes
        self.eos_token_id = eog_ids[0]
        self.bos_token_id = tokenizer.bos_id
        self.special_token_ids = [i for i, data in enumerate(token_bytes) if data.startswith(SPECIAL_MARK)]

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return self._tokenizer.encode(text, add_special=False)


class Vocabulary:
    """``lltokenizer`` for llguidance matchers; ``token_bytes[id]`` (special tokens as their
    text); ``eog_ids`` (sorted array) and ``eog_set``: the tokens that end a generation."""

    def __init__(self, tokenizer):
        self.vocab_size = tokenizer.vocab_size
        self.token_bytes = [tokenizer.token_bytes(i) for i in range(self.vocab_size)]
        eog = sorted(tokenizer.eog_ids)
        if not eog:
            raise ValueError("the tokenizer has no end-of-generation token; grammars need one")
        self.eog_ids = np.asarray(eog, dtype=np.int64)
        self.eog_set = frozenset(eog)
        marked = [
            SPECIAL_MARK + data if tokenizer.is_special(i) or i in self.eog_set else data
            for i, data in enumerate(self.token_bytes)
        ]
        adapter = _TokenizerAdapter(tokenizer, marked, eog)
        self.lltokenizer = llguidance.LLTokenizer(
            llguidance.TokenizerWrapper(adapter), n_vocab=self.vocab_size, eos_token=eog
        )
        # llguidance's bitmask: one bit per token, 32 to an int32 word
        self.mask_words = (self.vocab_size + 31) // 32

    @classmethod
    def for_tokenizer(cls, tokenizer) -> Vocabulary:
        """The vocabulary of a ``smallmind.engine.tokenizer.Tokenizer``, built on first use and
        kept as long as the tokenizer lives."""
        with _lock:
            found = _by_tokenizer.get(tokenizer)
        if found is None:
            found = cls(tokenizer)
            with _lock:
                found = _by_tokenizer.setdefault(tokenizer, found)
        return found


_by_tokenizer: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()
