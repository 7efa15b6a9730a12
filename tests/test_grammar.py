"""Grammar-constrained decoding (smallmind.engine.grammar): the byte automaton, schema
compilation and its errors, and random walks over the real Gemma vocabulary whose
output must parse and validate."""
import json
import random

import jsonschema
import numpy as np
import pytest

from conftest import default_model_path
from smallmind.engine.grammar import TokenIndex, compile_response_format
from smallmind.engine.grammar.automaton import can_end, initial_state, is_complete, run
from smallmind.engine.grammar.json_schema import compile_schema
from smallmind.errors import RequestValidationError


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}


# ---------------------------------------------------------------- automaton on bytes
def accepts(schema, text) -> bool:
    data = text.encode("utf-8") if isinstance(text, str) else text
    state = run(initial_state(compile_schema(schema)), data)
    return state is not None and can_end(state)


def viable_prefix(schema, text) -> bool:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return run(initial_state(compile_schema(schema)), data) is not None


STR = {"type": "string"}


@pytest.mark.parametrize("text", ['""', '"abc"', '"a\\"b\\\\c\\/\\n\\t"', '"\\u00e9\\uD7FF"',
                                  '"héllo wörld ✓ 😀"', '"\x7f"'])
def test_string_accepts(text):
    assert accepts(STR, text)


@pytest.mark.parametrize("text", ['"a', 'abc', '"\\x"', '"\\ud800"', '"\\uDc00"', '"\n"',
                                  '"\t"', b'"\xc0\x80"', b'"\xed\xa0\x80"', b'"\xff"',
                                  '"a" ', ' "a"', "'a'"])
def test_string_rejects(text):
    assert not accepts(STR, text)


def test_string_checks_byte_by_byte():
    # every prefix of a valid string stays viable; the bad byte is where it dies
    text = '"é\\u0041"'.encode()
    for end in range(len(text) + 1):
        assert viable_prefix(STR, text[:end])
    assert not viable_prefix(STR, b'"\xc3\x41')  # continuation byte missing


def test_string_lengths_count_characters():
    schema = {"type": "string", "minLength": 2, "maxLength": 3}
    assert not accepts(schema, '"a"')
    assert accepts(schema, '"ab"') and accepts(schema, '"äöü"') and accepts(schema, '"a\\nb"')
    assert not accepts(schema, '"abcd"') and not accepts(schema, '"äöüß"')


@pytest.mark.parametrize("text,ok", [("0", True), ("-0", True), ("12", True), ("01", False),
                                     ("1.5", True), ("1.", False), (".5", False),
                                     ("-1.25e-3", True), ("1E+2", True), ("1e", False),
                                     ("-", False), ("+1", False), ("1" * 16, True),
                                     ("1" * 17, False)])
def test_numbers(text, ok):
    assert accepts({"type": "number"}, text) == ok


def test_integer_has_no_fraction_or_exponent():
    assert accepts({"type": "integer"}, "-42")
    assert not accepts({"type": "integer"}, "4.0")
    assert not accepts({"type": "integer"}, "4e1")


def test_literals_and_enum_prefixes():
    schema = {"enum": [1, 12, "a", None, True, {"k": [1]}]}
    for text in ["1", "12", '"a"', "null", "true", '{"k":[1]}']:
        assert accepts(schema, text), text
    for text in ["2", "123", '"b"', "false", '{"k": [1]}']:
        assert not accepts(schema, text), text


def test_object_order_optional_and_required():
    schema = {"type": "object", "properties": {"a": STR, "b": {"type": "integer"},
                                               "c": {"type": "boolean"}},
              "required": ["b"]}
    assert accepts(schema, '{"b":1}')
    assert accepts(schema, '{"a":"x","b":1,"c":true}')
    assert accepts(schema, '{ "a": "x", "b": 1 }')
    assert not accepts(schema, '{}')                # b is required
    assert not accepts(schema, '{"b":1,"a":"x"}')   # declaration order
    assert not accepts(schema, '{"b":1,"d":2}')     # no extra properties
    assert not accepts(schema, '{"b":1 ,"c":true}')  # a space after a value must close
    assert not accepts(schema, '{"b":1,  "c":true}')  # at most one space
    assert not accepts(schema, '{\n"b":1}')


def test_map_objects_take_any_keys():
    schema = {"type": "object", "additionalProperties": {"type": "integer"}}
    assert accepts(schema, '{"x":1, "y\\n":2}')
    assert not accepts(schema, '{"x":"1"}')


def test_arrays():
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2}
    assert accepts(schema, "[1]") and accepts(schema, "[1, 2]") and accepts(schema, "[ 1 ]")
    assert not accepts(schema, "[]") and not accepts(schema, "[1,2,3]")
    pair = {"type": "array", "prefixItems": [STR, {"type": "null"}], "items": False}
    assert accepts(pair, '["a",null]') and accepts(pair, '["a"]')
    assert not accepts(pair, '["a",null,1]') and not accepts(pair, '[null]')


def test_anyof_and_type_unions():
    schema = {"anyOf": [{"type": "integer"}, {"type": "object", "properties": {"a": STR},
                                              "required": ["a"]}]}
    assert accepts(schema, "7") and accepts(schema, '{"a":"b"}')
    assert not accepts(schema, '"7"')
    union = {"type": ["string", "null"], "maxLength": 1}
    assert accepts(union, "null") and accepts(union, '"x"') and not accepts(union, '"xy"')


def test_refs():
    schema = {"$defs": {"p": {"type": "object", "properties": {"x": {"type": "number"}},
                              "required": ["x"]}},
              "type": "array", "items": {"$ref": "#/$defs/p"}}
    assert accepts(schema, '[{"x":1},{"x":2.5}]')
    assert not accepts(schema, '[{"y":1}]')


def test_json_object_top_level_is_an_object():
    root = compile_response_format({"type": "json_object"}).root
    state = run(initial_state(root), b'{"a":[1,{"b":null}],"c":"d"}')
    assert state is not None and is_complete(state)
    assert run(initial_state(root), b"[1]") is None
    assert run(initial_state(root), b'"x"') is None


# ---------------------------------------------------------------- schema errors
@pytest.mark.parametrize("schema,keyword,path", [
    ({"type": "string", "pattern": "^a"}, "pattern", "#"),
    ({"type": "object", "properties": {"a": {"not": {"type": "null"}}}}, "not",
     "#/properties/a"),
    ({"type": "array", "items": {"type": "integer", "minimum": 0}}, "minimum", "#/items"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems", "#"),
    ({"if": {"type": "string"}}, "if", "#"),
    ({"type": "object", "patternProperties": {"a": {}}}, "patternProperties", "#"),
    ({"anyOf": [{"type": "string"}, {"type": "string", "format": "x", "contains": 1}]},
     "contains", "#/anyOf/1"),
    ({"$defs": {"d": {"type": "integer", "multipleOf": 2}}, "$ref": "#/$defs/d"},
     "multipleOf", "#/$defs/d"),
])
def test_unsupported_keywords_are_named_with_their_path(schema, keyword, path):
    with pytest.raises(RequestValidationError) as caught:
        compile_response_format(schema_format(schema))
    message = str(caught.value)
    assert f"'{keyword}'" in message and f"at {path}" in message, message
    assert caught.value.param == "response_format"


@pytest.mark.parametrize("response_format", [
    "json", {"type": "xml"}, {"type": "json_schema"},
    {"type": "json_schema", "json_schema": {"name": "x"}},
    schema_format({"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}},
                   "$ref": "#/$defs/n"}),
    schema_format({"type": "string", "minLength": 3, "maxLength": 2}),
    schema_format({"type": "array", "prefixItems": [{}], "items": False, "minItems": 2}),
    schema_format({"enum": []}),
    schema_format({"type": "strnig"}),
    schema_format({"type": "object", "required": ["a"], "additionalProperties": False}),
    schema_format(False),
])
def test_invalid_response_formats(response_format):
    with pytest.raises(RequestValidationError) as caught:
        compile_response_format(response_format)
    assert caught.value.param == "response_format"


def test_text_and_annotations():
    assert compile_response_format({"type": "text"}) is None
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "T",
              "description": "d", "type": "string", "format": "date-time",
              "examples": ["x"], "default": "x", "$comment": "c"}
    assert compile_response_format(schema_format(schema)) is not None


# ---------------------------------------------------------------- real vocabulary
@pytest.fixture(scope="module")
def index():
    from smallmind.engine.tokenizer import Tokenizer
    from smallmind.gguf import GGUFFile
    tokenizer = Tokenizer.from_gguf(GGUFFile(default_model_path()).metadata)
    return TokenIndex.for_tokenizer(tokenizer)


SCHEMAS = {
    "nested": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12},
        "address": {"type": "object", "properties": {
            "city": {"type": "string"}, "zip": {"type": "string", "minLength": 5,
                                                "maxLength": 5}},
            "required": ["city", "zip"], "additionalProperties": False}},
        "required": ["name", "address"]},
    "bounded_array": {"type": "array", "items": {"type": "integer"}, "minItems": 2,
                      "maxItems": 4},
    "enums": {"type": "object", "properties": {
        "color": {"enum": ["red", "green", "blue"]}, "size": {"enum": [1, 2, 10, None]}},
        "required": ["color", "size"]},
    "nullable": {"type": "object", "properties": {
        "nick": {"type": ["string", "null"], "maxLength": 6},
        "score": {"type": ["number", "null"]}}, "required": ["nick", "score"]},
    "any_of": {"type": "array", "maxItems": 3, "items": {"anyOf": [
        {"type": "integer"}, {"type": "boolean"},
        {"type": "object", "properties": {"id": {"type": "string", "maxLength": 4}},
         "required": ["id"]}]}},
    "refs": {"$defs": {"point": {"type": "object", "properties": {
        "x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]}},
        "type": "object", "properties": {"a": {"$ref": "#/$defs/point"},
                                         "b": {"$ref": "#/$defs/point"}},
        "required": ["a"]},
    "const": {"type": "object", "properties": {"v": {"const": "1.0"},
                                               "k": {"const": {"x": [True, None]}}},
              "required": ["v", "k"]},
    "numbers": {"type": "object", "properties": {"i": {"type": "integer"},
                                                 "n": {"type": "number"}},
                "required": ["i", "n"]},
    "tuple": {"type": "array", "prefixItems": [{"type": "string", "format": "email"},
                                               {"type": "boolean"}],
              "items": False, "minItems": 2},
    "map": {"type": "object", "additionalProperties": {"type": "integer"}},
    "one_of_free": {"oneOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]},
}


def tokens_made_of(index, allowed: bytes, max_len: int = 64) -> np.ndarray:
    """Ids of the usable tokens whose bytes all come from ``allowed``."""
    return np.array([i for i, data in enumerate(index.token_bytes)
                     if index.usable[i] and len(data) <= max_len and set(data) <= set(allowed)])


@pytest.fixture(scope="module")
def walker(index):
    closing = tokens_made_of(index, b'"]}')  # they end strings and containers
    single_bytes = np.flatnonzero(index.usable
                                  & np.array([len(b) == 1 for b in index.token_bytes]))

    def walk(grammar, rng, finish_bias: bool, limit: int = 300):
        return random_walk(index, grammar, rng, finish_bias, limit, closing, single_bytes)
    return walk


def random_walk(index, grammar, rng, finish_bias, limit, closing, single_bytes):
    """Pick allowed tokens until end of generation (or ``limit``); check the mask's
    promises on the way.  Biased walks prefer ending, closing bytes and short tokens.
    Returns (text bytes, finished)."""
    state = grammar.start(index)
    text = b""
    for _ in range(limit):
        mask = state.allowed()
        assert mask.any(), f"dead end after {text!r}"
        eog = mask[index.eog_ids].any()
        assert eog == state.can_end
        if state.complete:
            assert mask.sum() == mask[index.eog_ids].sum()
        choice = None
        if finish_bias:
            if eog:
                choice = int(index.eog_ids[mask[index.eog_ids]][0])
            elif rng.random() < 0.3 and mask[closing].any():
                choice = int(rng.choice(closing[mask[closing]].tolist()))
            elif rng.random() < 0.7 and mask[single_bytes].any():
                choice = int(rng.choice(single_bytes[mask[single_bytes]].tolist()))
        if choice is None:
            ids = np.flatnonzero(mask)
            choice = int(ids[rng.randrange(len(ids))])
        state.advance(choice)
        if choice in index.eog_set:
            return text, True
        text += index.token_bytes[choice]
    return text, False


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_random_walks_validate(walker, name):
    schema = SCHEMAS[name]
    grammar = compile_response_format(schema_format(schema))
    rng = random.Random(name)
    finished = 0
    for walk in range(8):
        text, done = walker(grammar, rng, finish_bias=walk >= 3)
        if done:
            finished += 1
            value = json.loads(text.decode("utf-8"))
            jsonschema.validate(value, schema)
        elif walk >= 3:
            pytest.fail(f"biased walk did not finish: {text!r}")
    assert finished >= 5


def test_json_object_walks_are_objects(walker):
    grammar = compile_response_format({"type": "json_object"})
    rng = random.Random(7)
    for _ in range(6):
        text, done = walker(grammar, rng, finish_bias=True)
        assert done
        assert isinstance(json.loads(text.decode("utf-8")), dict)


def test_advance_refuses_disallowed_tokens(index):
    grammar = compile_response_format(schema_format(SCHEMAS["numbers"]))
    state = grammar.start(index)
    mask = state.allowed()
    assert mask.dtype == bool and mask.shape == (index.vocab_size,)
    refused = int(np.flatnonzero(~mask)[0])
    with pytest.raises(ValueError):
        state.advance(refused)
    eog = int(index.eog_ids[0])
    assert not mask[index.eog_ids].any()
    with pytest.raises(ValueError):
        state.advance(eog)
    for special in (0, 2, 3):  # <pad>, <bos>, <unk>
        with pytest.raises(ValueError):
            state.advance(special)
    # the state did not move: a full valid text still goes through
    for byte in b'{"i":1,"n":2}':
        token = next(i for i in state.allowed_ids() if index.token_bytes[i] == bytes([byte]))
        state.advance(int(token))
    assert state.complete and state.can_end
    assert state.allowed()[index.eog_ids].all() and state.allowed().sum() == len(index.eog_ids)
    state.advance(eog)
    with pytest.raises(ValueError):
        state.advance(eog)


def test_mask_logits_matches_mask(index):
    grammar = compile_response_format(schema_format(SCHEMAS["nested"]))
    state = grammar.start(index)
    for text_token in (b"{", b'"', b"name"):
        logits = np.random.default_rng(0).standard_normal(index.vocab_size).astype(np.float32)
        state.mask_logits(logits)
        assert np.array_equal(np.isfinite(logits), state.allowed())
        token = next(i for i in state.allowed_ids() if index.token_bytes[i] == text_token)
        state.advance(int(token))


def test_multibyte_fragments_inside_strings(index):
    # byte-fallback tokens may split a character; the grammar follows UTF-8 state
    grammar = compile_response_format(schema_format({"type": "string", "maxLength": 2}))
    state = grammar.start(index)
    byte_token = {index.token_bytes[i]: i for i in range(index.vocab_size)
                  if len(index.token_bytes[i]) == 1}
    for byte in '"€'.encode():
        assert state.allowed()[byte_token[bytes([byte])]]
        state.advance(byte_token[bytes([byte])])
    assert not state.allowed()[byte_token[b"\x82"]]  # no stray continuation byte
    state.advance(byte_token[b"a"])
    allowed = state.allowed()
    assert not allowed[byte_token[b"b"]]  # maxLength reached
    assert allowed[byte_token[b'"']]
