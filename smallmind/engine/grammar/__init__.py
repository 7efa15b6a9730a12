"""Grammar-constrained decoding for OpenAI structured output (``response_format``).

    grammar = compile_response_format(response_format)   # None for {"type": "text"}
    index = TokenIndex.for_tokenizer(tokenizer)          # once per tokenizer (~1-2 s)
    state = grammar.start(index)                         # per sequence
    state.mask_logits(logits)  # or: mask = state.allowed()
    state.advance(token_id)    # ValueError if the token was not allowed
    state.complete             # finished: only end of generation may follow

Modules: ``nodes`` / ``automaton`` (byte-level JSON pushdown automaton), ``json_schema``
(schema -> automaton), ``token_index`` (vocabulary tries and masks), ``matcher``
(allowed sets per automaton state), ``response_format`` (entry point and cache)."""

from .matcher import GrammarState
from .response_format import Grammar, compile_response_format
from .token_index import TokenIndex

__all__ = ["Grammar", "GrammarState", "TokenIndex", "compile_response_format"]
