"""Grammar-constrained decoding (smallmind.engine.grammar, on llguidance) over the real Gemma
vocabulary: what each JSON Schema keyword admits, the errors for what cannot be enforced,
Lark / GBNF / regex grammars, and random walks whose output must validate with jsonschema's
format checker."""

import json
import random

import jsonschema
import numpy as np
import pytest

from conftest import default_model_path
from smallmind.engine.grammar import (
    GrammarError,
    Vocabulary,
    compile,
    compile_gbnf,
    compile_json_schema,
    compile_lark,
    compile_regex,
    compile_response_format,
)
from smallmind.errors import RequestValidationError

FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


@pytest.fixture(scope="module")
def tokenizer():
    from smallmind.engine.tokenizer import Tokenizer
    from smallmind.gguf import GGUFFile

    return Tokenizer.from_gguf(GGUFFile(default_model_path()).metadata)


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return Vocabulary.for_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def accepts(tokenizer, vocab):
    """accepts(grammar, text): the text, tokenized as the model would write it, is a complete
    value of the grammar."""

    def check(grammar, text: str) -> bool:
        state = grammar.start(vocab)
        for token in tokenizer.encode(text, add_special=False):
            if not state.allowed()[token]:
                return False
            state.advance(token)
        return state.can_end

    return check


def schema_format(schema) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}


# ---------------------------------------------------------------- what keywords admit
KEYWORD_CASES = [
    ({"type": "integer", "minimum": 3, "maximum": 5}, ["3", "5"], ["2", "6", "4.5"]),
    (
        {"type": "integer", "exclusiveMinimum": -1000, "exclusiveMaximum": 1000},
        ["-999", "3"],
        ["1000", "-1000"],
    ),
    ({"type": "number", "minimum": 0.5}, ["0.5", "7.25"], ["0.25", "-1"]),
    ({"type": "integer", "multipleOf": 5}, ["10", "-5"], ["7"]),
    ({"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}, ['"AB-123"'], ['"ab-123"', '"AB-12"']),
    ({"type": "string", "format": "email"}, ['"ann@example.com"'], ['"not an email"']),
    ({"type": "string", "format": "date"}, ['"2024-02-29"'], ['"yesterday"']),
    ({"type": "string", "format": "uuid"}, ['"123e4567-e89b-12d3-a456-426614174000"'], ['"123"']),
    ({"type": "string", "format": "ipv4"}, ['"10.0.0.1"'], ['"10.0.0"']),
    ({"type": "string", "minLength": 2, "maxLength": 3}, ['"ab"', '"äöü"'], ['"a"', '"abcd"']),
    (
        {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2},
        ["[1]", "[1, 2]"],
        ["[]", "[1, 2, 3]"],
    ),
    (
        {
            "$defs": {
                "p": {
                    "type": "object",
                    "properties": {"x": {"type": "number"}},
                    "required": ["x"],
                    "additionalProperties": False,
                }
            },
            "type": "array",
            "items": {"$ref": "#/$defs/p"},
        },
        ['[{"x": 1}, {"x": 2.5}]'],
        ['[{"y": 1}]'],
    ),
    ({"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 1}]}, ["7", '"x"'], ['"xy"', "true"]),
    ({"oneOf": [{"type": "boolean"}, {"type": "null"}]}, ["true", "null"], ["1"]),
    ({"allOf": [{"type": "integer"}, {"minimum": 2}]}, ["2"], ["1"]),
    (
        {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
        ['{"a": 1}', "{}"],
        ['{"b": 1}'],
    ),
    ({"type": "object", "additionalProperties": {"type": "integer"}}, ['{"x": 1, "y": 2}'], ['{"x": "1"}']),
    ({"enum": ["red", 2, None]}, ['"red"', "2", "null"], ['"blue"', "3"]),
    ({"const": {"k": [True]}}, ['{"k": [true]}'], ['{"k": [false]}']),
]


@pytest.mark.parametrize("schema,good,bad", KEYWORD_CASES, ids=[json.dumps(c[0])[:60] for c in KEYWORD_CASES])
def test_keywords_are_enforced(accepts, schema, good, bad):
    grammar = compile_json_schema(schema)
    for text in good:
        assert accepts(grammar, text), text
        jsonschema.validate(json.loads(text), schema, format_checker=FORMATS)
    for text in bad:
        assert not accepts(grammar, text), text


def test_one_canonical_layout(accepts):
    # one space after ':' and ',', none elsewhere: a small model cannot loop on whitespace
    grammar = compile_json_schema(
        {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
    )
    assert accepts(grammar, '{"a": 1, "b": 2}')
    for text in ('{"a":1,"b":2}', '{ "a": 1 }', '{"a": 1,\n"b": 2}', '{"a":  1}'):
        assert not accepts(grammar, text), text


def test_json_object_is_any_object(accepts):
    grammar = compile_response_format({"type": "json_object"})
    assert accepts(grammar, '{"a": [1, {"b": null}], "c": "d"}')
    assert not accepts(grammar, "[1]") and not accepts(grammar, '"x"')
    assert compile_response_format({"type": "text"}) is None


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "schema,keyword",
    [
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "properties": {"a": {"not": {"type": "null"}}}}, "not"),
        ({"if": {"type": "string"}, "then": {}}, "if"),
        ({"type": "array", "contains": {"type": "integer"}}, "contains"),
        ({"type": "string", "format": "no-such-format"}, "format"),
        ({"type": "string", "pattern": "(?<=a)b"}, "pattern"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "$ref"),
        ({"type": "string", "minLength": 3, "maxLength": 2}, "minLength"),
        ({"type": "strnig"}, "type"),
    ],
)
def test_refused_schemas_name_the_keyword(schema, keyword):
    with pytest.raises(GrammarError) as caught:
        compile_json_schema(schema)
    assert caught.value.keyword == keyword
    assert keyword in str(caught.value)
    assert isinstance(caught.value, RequestValidationError)  # a 400


def test_not_a_schema():
    with pytest.raises(GrammarError):
        compile_json_schema("string")


def test_cache_is_bounded_by_bytes(monkeypatch):
    monkeypatch.setattr(compile, "CACHE_BYTES", 4000)
    monkeypatch.setattr(compile, "_cache", type(compile._cache)())
    monkeypatch.setattr(compile, "_cache_bytes", 0)
    first = compile_json_schema({"type": "integer", "minimum": 0})
    assert compile_json_schema({"type": "integer", "minimum": 0}) is first  # cached
    for i in range(40):
        compile_json_schema({"type": "integer", "minimum": i + 1})
    assert compile._cache_bytes <= 4000
    assert compile_json_schema({"type": "integer", "minimum": 0}) is not first  # evicted


# ---------------------------------------------------------------- other grammar kinds
def test_lark_gbnf_and_regex(accepts):
    assert accepts(compile_lark('start: "yes" | "no"'), "yes")
    assert not accepts(compile_lark('start: "yes" | "no"'), "maybe")
    gbnf = compile_gbnf('root ::= "(" [0-9]+ ")"')
    assert accepts(gbnf, "(42)") and not accepts(gbnf, "(4a)")
    regex = compile_regex(r"[A-Z][a-z]+ [0-9]{2}")
    assert accepts(regex, "Alice 42") and not accepts(regex, "alice 42")


@pytest.mark.parametrize(
    "build,source", [(compile_lark, "start: foo"), (compile_gbnf, "root ::= ("), (compile_regex, "[0-9")]
)
def test_broken_grammars_are_errors(build, source):
    with pytest.raises(GrammarError):
        build(source)


# ---------------------------------------------------------------- masks on the real vocabulary
SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "born": {"type": "string", "format": "date"},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                },
                "required": ["city", "zip"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "address"],
    },
    "bounded_array": {
        "type": "array",
        "items": {"type": "integer", "minimum": -5, "maximum": 5},
        "minItems": 2,
        "maxItems": 4,
    },
    "enums": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "size": {"enum": [1, 2, 10, None]}},
        "required": ["color", "size"],
    },
    "refs": {
        "$defs": {
            "point": {
                "type": "object",
                "properties": {"x": {"type": "number", "exclusiveMinimum": 0}, "y": {"type": "number"}},
                "required": ["x", "y"],
            }
        },
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}},
        "required": ["a"],
    },
    "formats": {
        "type": "array",
        "prefixItems": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "uuid"}],
        "items": False,
        "minItems": 2,
    },
}


def random_walk(vocab, grammar, rng, limit=400):
    """Allowed tokens picked at random (short ones preferred, so values finish) until end of
    generation; the mask's promises are checked on the way.  Returns the text."""
    state = grammar.start(vocab)
    text = b""
    short = np.array([len(b) <= 2 for b in vocab.token_bytes])
    closing = np.array(
        [b in (b'"', b"}", b"]") for b in vocab.token_bytes]
    )  # they end strings and containers
    for _ in range(limit):
        mask = state.allowed()
        assert mask.any(), f"dead end after {text!r}"
        assert mask[vocab.eog_ids].any() == state.can_end
        if state.can_end:
            return text
        if rng.random() < 0.3 and (mask & closing).any():
            ids = np.flatnonzero(mask & closing)
        elif rng.random() < 0.9 and (mask & short).any():
            ids = np.flatnonzero(mask & short)
        else:
            ids = np.flatnonzero(mask)
        choice = int(ids[rng.randrange(len(ids))])
        state.advance(choice)
        text += vocab.token_bytes[choice]
    pytest.fail(f"walk did not finish: {text!r}")


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_random_walks_validate(vocab, name):
    schema = SCHEMAS[name]
    grammar = compile_json_schema(schema)
    rng = random.Random(name)
    for _ in range(5):
        value = json.loads(random_walk(vocab, grammar, rng).decode("utf-8"))
        jsonschema.validate(value, schema, format_checker=FORMATS)


def test_advance_refuses_disallowed_tokens(tokenizer, vocab):
    grammar = compile_json_schema(
        {"type": "object", "properties": {"i": {"type": "integer"}}, "required": ["i"]}
    )
    state = grammar.start(vocab)
    mask = state.allowed()
    assert mask.dtype == bool and mask.shape == (vocab.vocab_size,)
    assert not mask[vocab.eog_ids].any()
    for special in (0, 2, 3):  # <pad>, <bos>, <unk>: never text
        assert not mask[special]
    with pytest.raises(ValueError):
        state.copy().advance(int(np.flatnonzero(~mask)[0]))
    for token in tokenizer.encode('{"i": 12}', add_special=False):
        state.advance(token)
    assert state.complete and state.can_end
    assert set(state.allowed_ids()) == set(vocab.eog_ids.tolist())


def test_mask_logits_matches_mask(tokenizer, vocab):
    state = compile_json_schema(SCHEMAS["nested"]).start(vocab)
    for token in tokenizer.encode('{"name": "Al', add_special=False):
        logits = np.random.default_rng(token).standard_normal(vocab.vocab_size).astype(np.float32)
        state.mask_logits(logits)
        assert np.array_equal(np.isfinite(logits), state.allowed())
        state.advance(token)


def test_states_are_independent(tokenizer, vocab):
    grammar = compile_json_schema({"type": "string", "maxLength": 3})
    one, two = grammar.start(vocab), grammar.start(vocab)
    for token in tokenizer.encode('"abc"', add_special=False):
        one.advance(token)
    assert one.complete and not two.can_end
    assert two.allowed()[tokenizer.encode('"', add_special=False)[0]]


def test_generation_is_narrowed_but_stays_valid(accepts):
    # declared properties only, unless the schema opens the object itself; unbounded numbers
    # stay within NUMBER_LIMIT (small models loop on digits); allOf parts stay open
    closed = compile_json_schema({"type": "object", "properties": {"a": {"type": "integer"}}})
    assert accepts(closed, '{"a": 1}') and not accepts(closed, '{"a": 1, "b": 2}')
    assert accepts(
        compile_json_schema({"type": "object", "properties": {"a": {}}, "additionalProperties": True}),
        '{"a": 1, "b": 2}',
    )
    both = compile_json_schema(
        {
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "integer"}}},
                {"type": "object", "properties": {"b": {"type": "integer"}}},
            ]
        }
    )
    assert accepts(both, '{"a": 1, "b": 2}') and not accepts(both, '{"a": 1, "b": 2, "c": 3}')
    assert not accepts(compile_json_schema({"type": "string", "format": "date"}), '"0000-01-01"')
    number = compile_json_schema({"type": "integer"})
    assert accepts(number, str(compile.NUMBER_LIMIT)) and not accepts(number, str(10 * compile.NUMBER_LIMIT))
    fraction = compile_json_schema({"type": ["number", "null"]})
    assert accepts(fraction, "0.125") and accepts(fraction, "null") and not accepts(fraction, "0.0000001")
    time = compile_json_schema({"type": "string", "format": "time"})
    assert accepts(time, '"20:00:00.123456+01:00"') and not accepts(time, '"20:00:00.1234567890123+01:00"')


def test_constrained_and_free_sequences_share_a_batch(tokenizer, vocab):
    """Each sequence masks its own row with its own matcher: two schemas and free text step
    together, and each constrained answer is complete and valid."""
    from smallmind.engine.engine import Engine
    from smallmind.engine.model import Model
    from smallmind.engine.sampling_params import SamplingParams

    model = Model.load(default_model_path(), n_ctx=256, n_slots=3)
    engine = Engine(model, eog_ids=tokenizer.eog_ids)
    prompt = tokenizer.encode(
        "<start_of_turn>user\nDescribe a dog.<end_of_turn>\n<start_of_turn>model\n",
        add_special=True,
        parse_special=True,
    )
    schemas = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 12},
                "age": {"type": "integer", "minimum": 0, "maximum": 20},
            },
            "required": ["name", "age"],
        },
        {"type": "array", "items": {"enum": ["bark", "sit", "run"]}, "minItems": 1, "maxItems": 3},
    ]
    sequences = [
        engine.submit(
            prompt, SamplingParams(temperature=0, max_tokens=60), compile_json_schema(s).start(vocab)
        )
        for s in schemas
    ]
    free = engine.submit(prompt, SamplingParams(temperature=0, max_tokens=8))
    shared_steps = 0
    while engine.has_work():
        events = engine.step()
        shared_steps += len({e.sequence.id for e in events}) == 3
    assert shared_steps >= 3
    for seq, schema in zip(sequences, schemas):
        assert seq.finish_reason == "stop"
        jsonschema.validate(json.loads(tokenizer.decode(seq.output_ids)), schema)
    assert free.finish_reason == "length" and len(free.output_ids) == 8
