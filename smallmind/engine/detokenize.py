"""Bytes back to text: llama.cpp's optional space clean-up, and the streaming decoder that
never emits half a UTF-8 character."""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the tokenizer imports this module
    from .tokenizer import Tokenizer


def clean_spaces(text: bytes) -> bytes:
    """llama.cpp's detokenize clean-up passes (applied to bytes, as there)."""
    t = bytearray(text)
    # pass 1: " ?", " !", " .", " ," -> drop the space
    out = bytearray(t[:1])
    for i in range(1, len(t)):
        x = t[i]
        if t[i - 1] == 0x20 and x in b"?!.,":
            out.pop()
        out.append(x)
    t = out
    # pass 2: " ' " -> "'"
    out = bytearray(t[:1])
    i = 1
    n = len(t)
    while i < n:
        x = t[i]
        if x == 0x27 and i + 1 < n and t[i - 1] == 0x20 and t[i + 1] == 0x20:
            out.pop()
            out.append(x)
            i += 2
            continue
        out.append(x)
        i += 1
    t = out
    # pass 3: " 's", " 'm", " 're", " 've" -> drop the space
    out = bytearray(t[:1])
    n = len(t)
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
            x1 = t[i + 1]
            if x1 in b"sm" or (i + 2 < n and x1 in b"rv" and t[i + 2] == 0x65):
                out.pop()
        out.append(x)
    return bytes(out)


class StreamDecoder:
    """Incremental detokenizer: ``push(id)`` returns the text completed by that token,
    holding back an incomplete UTF-8 sequence until its last byte arrives; ``flush()``
    returns what is left (an incomplete sequence as U+FFFD).  The concatenation of all
    returned strings equals ``tokenizer.decode(ids, skip_special=skip_special)``.  No
    leading space is stripped: a continuation's leading space is real text."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, token_id: int) -> str:
        tok = self.tokenizer
        token_id = int(token_id)
        if not 0 <= token_id < tok.vocab_size:
            raise ValueError(f"token id {token_id} out of range [0, {tok.vocab_size})")
        if self.skip_special and token_id in tok._special_ids:
            return ""
        return self._dec.decode(tok._pieces[token_id])

    def flush(self) -> str:
        out = self._dec.decode(b"", final=True)
        self._dec.reset()
        return out
