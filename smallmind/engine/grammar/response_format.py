"""OpenAI ``response_format`` -> a compiled grammar (None for plain text).

Compiled grammars are cached by the exact request text, so repeated requests with the
same schema share their automaton and its cached allowed sets (the first request with a
new schema pays for building them).  The cache is bounded by the bytes its grammars hold
(GRAMMAR_CACHE_BYTES), since one schema's automaton can take from kilobytes to hundreds
of megabytes, and by entries."""

import json
import threading
import weakref
from collections import OrderedDict

from .json_schema import ANY_VALUE_DEPTH, compile_schema, schema_error
from .matcher import GrammarState, Matcher
from .nodes import ByteTrie, Node, Object, any_value
from .token_index import TokenIndex

GRAMMAR_CACHE_SIZE = 64
GRAMMAR_CACHE_BYTES = 128 << 20
MAX_STATES_PER_MATCHER = 200_000  # past this a fresh matcher starts (bounds memory)
# Approximate memory per automaton part, measured as RSS growth while compiling schemas of
# 300-1,500 optional properties (130-200 bytes per trie node): rounded up.
_TRIE_NODE_BYTES = 250
_NODE_BYTES = 200


class Grammar:
    """A compiled response format; immutable and shared by every sequence using it."""

    def __init__(self, root: Node, kind: str):
        self.root = root
        self.kind = kind  # "json_object" or "json_schema"
        self._matchers: "weakref.WeakKeyDictionary[TokenIndex, Matcher]" = \
            weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.compiled_bytes = _automaton_bytes(root)

    @property
    def nbytes(self) -> int:
        """Approximate memory held: the automaton, plus the allowed sets its matchers have
        cached so far (they grow with use, up to MASK_CACHE_BYTES each)."""
        with self._lock:
            matchers = list(self._matchers.values())
        return self.compiled_bytes + sum(m.cached_bytes for m in matchers)

    def start(self, index: TokenIndex) -> GrammarState:
        """A new sequence's state, at the beginning of the value."""
        with self._lock:
            matcher = self._matchers.get(index)
            if matcher is None or len(matcher.states) > MAX_STATES_PER_MATCHER:
                matcher = self._matchers[index] = Matcher(self.root, index)
        return GrammarState(matcher, matcher.start_id)

    def __repr__(self) -> str:
        return f"Grammar({self.kind})"


def _automaton_bytes(root: Node) -> int:
    """Approximate memory of the automaton under ``root`` (shared parts counted once)."""
    seen: set[int] = set()
    stack: list = [root]
    total = 0
    while stack:
        part = stack.pop()
        if id(part) in seen:
            continue
        seen.add(id(part))
        if isinstance(part, ByteTrie):
            total += len(part.children) * _TRIE_NODE_BYTES
        elif isinstance(part, (list, tuple)):
            stack.extend(part)
        elif isinstance(part, Node):
            total += _NODE_BYTES
            stack.extend(getattr(part, name, None) for cls in type(part).__mro__
                         for name in getattr(cls, "__slots__", ()))
    return total


def _entry_bytes(key: str, grammar: "Grammar | None") -> int:
    return len(key) + (grammar.nbytes if grammar is not None else 0)


_cache: "OrderedDict[str, Grammar | None]" = OrderedDict()
_cache_lock = threading.Lock()


def compile_response_format(response_format) -> Grammar | None:
    """Validate an OpenAI ``response_format`` and compile it.  None for ``text``;
    RequestValidationError (param "response_format") for anything we cannot honour."""
    if response_format is None:
        return None
    try:
        key = json.dumps(response_format, ensure_ascii=False)
    except (TypeError, ValueError):
        raise schema_error("response_format must be a JSON object") from None
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    grammar = build_grammar(response_format)
    with _cache_lock:
        _cache[key] = grammar
        total = sum(_entry_bytes(k, g) for k, g in _cache.items())
        while len(_cache) > GRAMMAR_CACHE_SIZE or (total > GRAMMAR_CACHE_BYTES and _cache):
            evicted = _cache.popitem(last=False)
            total -= _entry_bytes(*evicted)
    return grammar


def cached_bytes() -> int:
    """Approximate memory the grammar cache holds."""
    with _cache_lock:
        return sum(_entry_bytes(k, g) for k, g in _cache.items())


def build_grammar(response_format) -> Grammar | None:
    """compile_response_format without the cache."""
    if not isinstance(response_format, dict):
        raise schema_error("response_format must be an object")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return Grammar(Object([], extra=any_value(ANY_VALUE_DEPTH)), kind)
    if kind != "json_schema":
        raise schema_error(f"unsupported response_format type {kind!r} "
                           "(expected text, json_object or json_schema)")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise schema_error("response_format.json_schema must be an object")
    name = spec.get("name")
    if name is not None and not isinstance(name, str):
        raise schema_error("response_format.json_schema.name must be a string")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise schema_error("response_format.json_schema.strict must be a boolean")
    if "schema" not in spec:
        raise schema_error("response_format.json_schema.schema is required")
    return Grammar(compile_schema(spec["schema"]), kind)
