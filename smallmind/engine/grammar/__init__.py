"""Grammar-constrained decoding on llguidance: structured output, forced tool calls, and the
``grammar`` / ``regex`` request extensions.

    grammar = compile_json_schema(schema)          # or compile_response_format / _lark / _gbnf / _regex
    vocab = Vocabulary.for_tokenizer(tokenizer)    # once per tokenizer (~1.5 s)
    state = grammar.start(vocab)                   # per sequence: its own matcher
    state.mask_logits(logits)                      # or: mask = state.allowed()
    state.advance(token_id)                        # ValueError if the token was not allowed
    state.complete                                 # only end of generation may follow

Modules: ``compile`` (sources -> grammars, errors, the cache), ``vocabulary`` (the tokenizer
as llguidance sees it), ``state`` (one sequence's matcher)."""

from .compile import (
    Grammar,
    GrammarError,
    compile_gbnf,
    compile_json_schema,
    compile_lark,
    compile_regex,
    compile_response_format,
)
from .state import ConstraintState
from .vocabulary import Vocabulary

__all__ = [
    "ConstraintState",
    "Grammar",
    "GrammarError",
    "Vocabulary",
    "compile_gbnf",
    "compile_json_schema",
    "compile_lark",
    "compile_regex",
    "compile_response_format",
]
