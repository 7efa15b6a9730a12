"""One sequence's position in its grammar: an llguidance matcher of its own, so sequences
under different grammars (or none) share a batch and each masks only its own logits row."""

from __future__ import annotations

import llguidance
import numpy as np


class ConstraintState:
    """``mask_words()`` (or ``mask_logits(row)``) before sampling, ``advance(token)`` after;
    ``can_end``: the text so far is a complete value; ``complete``: nothing but end of
    generation may follow."""

    __slots__ = ("matcher", "vocab", "_words")

    def __init__(self, matcher: llguidance.LLMatcher, vocab):
        self.matcher = matcher
        self.vocab = vocab
        self._words = np.empty(vocab.mask_words, dtype=np.uint32)  # reused every step

    def mask_words(self) -> np.ndarray:
        """The tokens allowed next as llguidance's bit mask: uint32 words, bit i % 32 of word
        i // 32 for token i (what the native sampler takes; valid until the next call)."""
        words = self._words
        self.matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        return words

    def allowed(self) -> np.ndarray:
        """Bool mask over the vocabulary of the tokens allowed next."""
        bits = np.unpackbits(self.mask_words().view(np.uint8), bitorder="little")
        return bits[: self.vocab.vocab_size].view(bool)

    def allowed_ids(self) -> np.ndarray:
        return np.flatnonzero(self.allowed())

    def mask_logits(self, logits: np.ndarray) -> None:
        """Set the logits (one vocabulary-sized row) of disallowed tokens to -inf, in place."""
        np.putmask(logits, ~self.allowed(), -np.inf)

    def advance(self, token_id: int) -> None:
        """Move past one token; ValueError if the grammar does not allow it (after which
        this state is unusable, as llguidance's matchers are)."""
        if not 0 <= token_id < self.vocab.vocab_size:
            raise ValueError(f"token {token_id} is outside the vocabulary")
        if not self.matcher.consume_token(token_id):
            raise ValueError(
                f"token {token_id} ({self.vocab.token_bytes[token_id]!r}) is not allowed here: "
                f"{self.matcher.get_error()}"
            )

    @property
    def can_end(self) -> bool:
        return self.matcher.is_accepting()

    @property
    def complete(self) -> bool:
        return self.matcher.is_stopped()

    def copy(self) -> ConstraintState:
        return ConstraintState(self.matcher.deep_copy(), self.vocab)
