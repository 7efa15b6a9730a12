"""JSON Schema, Lark, GBNF and regex sources -> compiled grammars, on llguidance.

Every entry point is a plain function: source in, ``Grammar`` out, ``GrammarError`` (a 400
naming the keyword) for anything llguidance refuses.  Compiled grammars are cached by their
source, the cache bounded by bytes; a grammar keeps one freshly built matcher per vocabulary
and every sequence starts from a copy of it (a copy costs microseconds, a build milliseconds).

JSON is generated in one canonical layout, ``{"a": 1, "b": [2, 3]}``: one space after ``:``
and ``,`` and nowhere else, so a small model cannot wander off into endless whitespace."""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import llguidance

from smallmind.errors import RequestValidationError

from .state import ConstraintState
from .vocabulary import Vocabulary

if TYPE_CHECKING:  # a TypedDict of llguidance's stub, not importable at run time
    from llguidance._lib import JsonCompileOptions

JSON_LAYOUT: JsonCompileOptions = {
    "item_separator": ", ",
    "key_separator": ": ",
    "whitespace_flexible": False,
    # Pydantic writes unions as oneOf; llguidance enforces them as anyOf
    "coerce_one_of": True,
}
ANY_JSON_OBJECT = {"type": "object"}
CACHE_BYTES = 32 << 20  # compiled grammar text kept for repeated requests
CACHE_ENTRIES = 256


class GrammarError(RequestValidationError):
    """A grammar or schema llguidance cannot compile.  ``keyword``: the JSON Schema keyword at
    fault when one is known; ``param`` (the request field it came from) is set by the caller."""

    def __init__(self, message: str, keyword: str | None = None, param: str | None = None):
        super().__init__(message)
        self.keyword = keyword
        self.param = param


class Grammar:
    """A compiled grammar: immutable, shared by every sequence that decodes under it."""

    def __init__(self, kind: str, source: str):
        self.kind = kind  # json_schema | json_object | lark | gbnf | regex
        self.source = source  # llguidance's grammar text
        self._templates: weakref.WeakKeyDictionary[Vocabulary, llguidance.LLMatcher] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return len(self.source)

    def prepare(self, vocab: Vocabulary) -> None:
        """Build the matcher for ``vocab`` now (GrammarError if its lexer refuses the
        grammar), so errors surface before any response is sent."""
        self._template(vocab)

    def _template(self, vocab: Vocabulary) -> llguidance.LLMatcher:
        with self._lock:
            template = self._templates.get(vocab)
            if template is None:
                template = llguidance.LLMatcher(vocab.lltokenizer, self.source, log_level=0)
                if template.is_error():
                    raise _grammar_error(self.kind, template.get_error())
                self._templates[vocab] = template
        return template

    def start(self, vocab: Vocabulary) -> ConstraintState:
        """A new sequence's state, at the start of the grammar."""
        return ConstraintState(self._template(vocab).deep_copy(), vocab)

    def __repr__(self) -> str:
        return f"Grammar({self.kind}, {self.nbytes} bytes)"


# ---- entry points ----


def compile_json_schema(schema, kind: str = "json_schema") -> Grammar:
    """A JSON Schema (dict) -> Grammar; GrammarError naming the keyword llguidance refuses."""
    if not isinstance(schema, (dict, bool)):
        raise GrammarError(f"a JSON schema must be an object, got {type(schema).__name__}")
    try:
        text = json.dumps(schema, ensure_ascii=False)  # key order kept: properties come out in it
    except (TypeError, ValueError) as e:
        raise GrammarError(f"the schema is not JSON: {e}") from None

    def build() -> str:
        generated = schema if kind == "json_object" else tightened(schema)
        # a boolean schema is valid JSON Schema and llguidance takes it; its stub says str | dict
        return llguidance.LLMatcher.grammar_from_json_schema(generated, overrides=JSON_LAYOUT)  # type: ignore[arg-type]

    return _cached(kind, text, build)


# Unbounded numbers are where a small model loops ("population": 1000000...): numbers without
# bounds get these, which no real answer comes near.
NUMBER_LIMIT = 10**15
NUMBER_STEP = 1e-6
# Formatted strings get a length: HH:MM:SS.ffffff+hh:mm, the date-time around it, else an
# e-mail address's longest.
FORMAT_MAX_LENGTH = {"time": 21, "date-time": 32, None: 254}
# RFC 3339 admits year 0000, which no date library represents (nor any answer needs)
YEAR_NOT_ZERO = "^([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-"


_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SCHEMA_VALUES = (
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "additionalItems",
    "unevaluatedItems",
    "unevaluatedProperties",
)
# an object with any of these stays as open as it was given: its properties may come from elsewhere
_OPEN_KEYWORDS = {"additionalProperties", "patternProperties", "unevaluatedProperties", "allOf", "$ref"}


def tightened(schema, close: bool = True):
    """What the model generates under: ``schema`` narrowed where JSON Schema leaves it open but
    no answer needs it, so every output still validates against ``schema`` as given.  Objects
    that declare properties (even none: a function without arguments) get no others (as
    OpenAI's strict mode requires of schemas), and numbers without bounds stay within
    +-NUMBER_LIMIT, with at most 6 decimals; formatted strings without maxLength get
    FORMAT_MAX_LENGTH.  allOf members (and objects with an allOf or $ref) are not closed: that
    would refuse the properties declared elsewhere."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: tightened(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS + ("allOf",):
        if isinstance(out.get(key), list):
            out[key] = [tightened(sub, close=key != "allOf") for sub in out[key]]
    for key in _SCHEMA_VALUES:
        if isinstance(out.get(key), (dict, list)):
            out[key] = [tightened(s) for s in out[key]] if isinstance(out[key], list) else tightened(out[key])
    if close and isinstance(out.get("allOf"), list):
        _declare_parts(out)
    if close and isinstance(out.get("properties"), dict) and not _OPEN_KEYWORDS & out.keys():
        out["additionalProperties"] = False
    declared_type = out.get("type")
    types = declared_type if isinstance(declared_type, list) else [declared_type]
    if "integer" in types or "number" in types:
        if not {"minimum", "exclusiveMinimum"} & out.keys():
            out["minimum"] = -NUMBER_LIMIT
        if not {"maximum", "exclusiveMaximum"} & out.keys():
            out["maximum"] = NUMBER_LIMIT
    if "string" in types and "format" in out and "maxLength" not in out:
        # "20:00:00.000000..." is RFC 3339; microseconds are enough for any answer
        out["maxLength"] = FORMAT_MAX_LENGTH.get(out["format"], FORMAT_MAX_LENGTH[None])
    if out.get("format") in ("date", "date-time") and "pattern" not in out:
        out["pattern"] = YEAR_NOT_ZERO
    if "number" in types and "multipleOf" not in out:
        out["multipleOf"] = NUMBER_STEP  # at most 6 decimals: no endless "0.0000..."
    return out


def _declare_parts(schema: dict) -> None:
    """An object built from allOf parts declares their properties itself, so it can be closed
    like any other (the parts still apply).  Parts that are open, referenced or nested allOf
    leave it as it is."""
    parts = schema["allOf"]
    if (
        not all(isinstance(p, dict) and not _OPEN_KEYWORDS & p.keys() for p in parts)
        or (_OPEN_KEYWORDS - {"allOf"}) & schema.keys()
    ):
        return
    declared: dict[str, Any] = {}
    for part in parts:
        for name, sub in (part.get("properties") or {}).items():
            declared.setdefault(name, sub)
    if declared:
        schema["properties"] = {**declared, **(schema.get("properties") or {})}
        schema["additionalProperties"] = False


def compile_lark(text: str) -> Grammar:
    """A Lark grammar (llguidance's dialect, rule ``start``) -> Grammar."""
    return _cached("lark", text, lambda: llguidance.LLMatcher.grammar_from_lark(text))


def compile_gbnf(text: str) -> Grammar:
    """A GBNF grammar (llama.cpp's, rule ``root``) -> Grammar.  llguidance also takes Lark
    here, as llama.cpp's server does with its llguidance backend."""

    def build() -> str:
        try:
            return llguidance.grammar_from("gbnf", text)
        except ValueError as e:
            raise GrammarError(str(e)) from None

    return _cached("gbnf", text, build)


def compile_regex(pattern: str) -> Grammar:
    """A regular expression (Rust regex syntax, whole output must match) -> Grammar."""
    return _cached("regex", pattern, lambda: llguidance.LLMatcher.grammar_from_regex(pattern))


def compile_response_format(response_format: dict | None) -> Grammar | None:
    """An OpenAI ``response_format`` (shape already checked by the protocol) -> Grammar, None
    for text."""
    if response_format is None or response_format.get("type") == "text":
        return None
    if response_format["type"] == "json_object":
        return compile_json_schema(ANY_JSON_OBJECT, kind="json_object")
    return compile_json_schema(response_format["json_schema"]["schema"])


# ---- compilation, errors and the cache ----

_cache: OrderedDict[tuple[str, str], Grammar] = OrderedDict()
_cache_bytes = 0
_cache_lock = threading.Lock()


def _cached(kind: str, text: str, build) -> Grammar:
    global _cache_bytes
    key = (kind, text)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    grammar = Grammar(kind, _validated(kind, build()))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = grammar
            _cache_bytes += grammar.nbytes + len(text)
        while _cache and (_cache_bytes > CACHE_BYTES or len(_cache) > CACHE_ENTRIES):
            (_, old_text), old = _cache.popitem(last=False)
            _cache_bytes -= old.nbytes + len(old_text)
    return grammar


def _validated(kind: str, source: str) -> str:
    """``source`` if llguidance accepts it (without a vocabulary: the grammar itself)."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(source)
    if is_error:
        raise _grammar_error(kind, messages[0])
    return source


_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[(.*?)\]")
# llguidance's messages -> the JSON Schema keyword they are about
_KEYWORD_HINTS = [
    (re.compile(r"Unknown format"), "format"),
    (re.compile(r"regex|look-around"), "pattern"),
    (re.compile(r"Pointer .* does not exist|\$ref|resolve", re.I), "$ref"),
    (re.compile(r"Invalid type|type"), "type"),
    (re.compile(r"oneOf"), "oneOf"),
]


def _grammar_error(kind: str, message: str) -> GrammarError:
    message = message.strip()
    if kind not in ("json_schema", "json_object"):
        return GrammarError(f"the {kind} grammar does not compile: {message}")
    keyword = None
    found = _UNIMPLEMENTED.search(message)
    if found:
        names = [n.strip().strip('"') for n in found.group(1).split(",")]
        keyword = names[0]
        return GrammarError(
            f"JSON Schema keyword{'s' if len(names) > 1 else ''} "
            f"{', '.join(repr(n) for n in names)} not supported by the grammar "
            f"engine (llguidance)",
            keyword,
        )
    unsatisfiable = re.match(r"Unsatisfiable schema: (\w+)", message)
    if unsatisfiable:
        keyword = unsatisfiable.group(1)
    else:
        keyword = next((kw for pattern, kw in _KEYWORD_HINTS if pattern.search(message)), None)
    where = f" (keyword {keyword!r})" if keyword else ""
    return GrammarError(f"the JSON schema cannot be enforced{where}: {message}", keyword)
