"""Issue 17's acceptance: 20 schemas mixing the JSON Schema keywords llguidance enforces
(pattern, format, numeric bounds, min/maxLength, min/maxItems, $defs/$ref, anyOf/oneOf/allOf,
additionalProperties, enum/const), nested, 3 prompts each, greedy: every answer, streamed and
not, parses and validates with jsonschema's format checker."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from conftest import server_fixture

FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER  # the draft's own meaning of each format


server = server_fixture("--ServerOptions:MaxContextTokens=1024")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300)


NAME = {"type": "string", "minLength": 1, "maxLength": 30}
SCHEMAS = {
    "person": {
        "type": "object",
        "required": ["name", "age", "email"],
        "properties": {
            "name": NAME,
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "email": {"type": "string", "format": "email"},
        },
    },
    "product": {
        "type": "object",
        "required": ["sku", "price", "tags"],
        "properties": {
            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
            "price": {"type": "number", "exclusiveMinimum": 0, "maximum": 10000},
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 15},
                "minItems": 1,
                "maxItems": 4,
            },
        },
        "additionalProperties": False,
    },
    "event": {
        "type": "object",
        "required": ["title", "date", "start"],
        "properties": {
            "title": NAME,
            "date": {"type": "string", "format": "date"},
            "start": {"type": "string", "format": "time"},
            "online": {"type": "boolean"},
        },
    },
    "server": {
        "type": "object",
        "required": ["host", "ip", "port"],
        "properties": {
            "host": {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,20}$"},
            "ip": {"type": "string", "format": "ipv4"},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        },
    },
    "order": {
        "$defs": {
            "item": {
                "type": "object",
                "required": ["name", "qty"],
                "properties": {"name": NAME, "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
                "additionalProperties": False,
            }
        },
        "type": "object",
        "required": ["id", "items"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1, "maxItems": 3},
        },
    },
    "shape": {
        "type": "object",
        "required": ["shape"],
        "properties": {
            "shape": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["kind", "radius"],
                        "properties": {
                            "kind": {"const": "circle"},
                            "radius": {"type": "number", "minimum": 0, "maximum": 100},
                        },
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "required": ["kind", "side"],
                        "properties": {
                            "kind": {"const": "square"},
                            "side": {"type": "number", "minimum": 0, "maximum": 100},
                        },
                        "additionalProperties": False,
                    },
                ]
            }
        },
    },
    "weather": {
        "type": "object",
        "required": ["city", "temp", "unit", "sky"],
        "properties": {
            "city": NAME,
            "temp": {"type": "number", "minimum": -60, "maximum": 60},
            "unit": {"enum": ["C", "F"]},
            "sky": {"enum": ["sunny", "cloudy", "rain", "snow"]},
        },
    },
    "contact": {
        "type": "object",
        "required": ["name", "phone"],
        "properties": {
            "name": NAME,
            "phone": {"type": "string", "pattern": "^\\+[0-9]{6,12}$"},
            "website": {"anyOf": [{"type": "string", "format": "uri"}, {"type": "null"}]},
        },
    },
    "book": {
        "type": "object",
        "required": ["title", "author", "year", "isbn"],
        "properties": {
            "title": NAME,
            "author": NAME,
            "year": {"type": "integer", "minimum": 1450, "maximum": 2025},
            "isbn": {"type": "string", "pattern": "^97[89][0-9]{10}$"},
        },
    },
    "matrix": {
        "type": "object",
        "required": ["rows"],
        "properties": {
            "rows": {
                "type": "array",
                "minItems": 2,
                "maxItems": 3,
                "items": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": -9, "maximum": 9},
                    "minItems": 2,
                    "maxItems": 3,
                },
            }
        },
    },
    "employee": {
        "allOf": [
            {"type": "object", "required": ["name"], "properties": {"name": NAME}},
            {
                "type": "object",
                "required": ["salary"],
                "properties": {
                    "salary": {"type": "integer", "multipleOf": 1000, "minimum": 10000, "maximum": 500000}
                },
            },
        ]
    },
    "settings": {
        "type": "object",
        "required": ["theme", "volume"],
        "properties": {
            "theme": {"enum": ["light", "dark"]},
            "volume": {"type": "integer", "minimum": 0, "maximum": 10},
            "extras": {"type": "object", "additionalProperties": {"type": "boolean"}, "maxProperties": 3},
        },
        "additionalProperties": False,
    },
    "log": {
        "type": "object",
        "required": ["level", "at", "message"],
        "properties": {
            "level": {"enum": ["debug", "info", "warning", "error"]},
            "at": {"type": "string", "format": "date-time"},
            "message": {"type": "string", "maxLength": 60},
        },
    },
    "family": {
        "$defs": {
            "member": {
                "type": "object",
                "required": ["name", "age"],
                "properties": {
                    "name": {"type": "string", "maxLength": 20},
                    "age": {"type": "integer", "minimum": 0, "maximum": 110},
                },
            }
        },
        "type": "object",
        "required": ["parent", "children"],
        "properties": {
            "parent": {"$ref": "#/$defs/member"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/member"}, "maxItems": 3},
        },
    },
    "answer": {
        "type": "object",
        "required": ["answer", "confidence"],
        "properties": {
            "answer": {"type": "string", "maxLength": 80},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "version": {"const": 1},
        },
    },
    "coordinates": {
        "type": "array",
        "prefixItems": [
            {"type": "number", "minimum": -90, "maximum": 90},
            {"type": "number", "minimum": -180, "maximum": 180},
        ],
        "items": False,
        "minItems": 2,
    },
    "user_account": {
        "type": "object",
        "required": ["username", "password_hint", "created"],
        "properties": {
            "username": {"type": "string", "pattern": "^[a-z_]{3,16}$"},
            "password_hint": {"type": "string", "minLength": 3, "maxLength": 20},
            "created": {"type": "string", "format": "date"},
            "admin": {"type": "boolean"},
        },
    },
    "vehicle": {
        "type": "object",
        "required": ["make", "wheels", "fuel"],
        "properties": {
            "make": NAME,
            "wheels": {"type": "integer", "enum": [2, 3, 4, 6]},
            "fuel": {"anyOf": [{"enum": ["petrol", "diesel", "electric"]}, {"type": "null"}]},
        },
    },
    "recipe": {
        "type": "object",
        "required": ["dish", "ingredients", "minutes"],
        "properties": {
            "dish": NAME,
            "ingredients": {
                "type": "array",
                "minItems": 2,
                "maxItems": 5,
                "items": {
                    "type": "object",
                    "required": ["name", "grams"],
                    "properties": {
                        "name": {"type": "string", "maxLength": 20},
                        "grams": {"type": "integer", "minimum": 1, "maximum": 2000},
                    },
                },
            },
            "minutes": {"type": "integer", "minimum": 1, "maximum": 600},
        },
    },
    "network": {
        "type": "object",
        "required": ["ipv6", "mask"],
        "properties": {
            "ipv6": {"type": "string", "format": "ipv6"},
            "mask": {"type": "integer", "minimum": 0, "maximum": 128},
            "gateway": {"type": "string", "format": "ipv4"},
        },
    },
}
PROMPTS = [
    "Fill in a realistic example for: {name}.",
    "Give me a {name} as JSON.",
    "Invent one {name}; answer in JSON only.",
]
CASES = [(name, prompt.format(name=name.replace("_", " "))) for name in SCHEMAS for prompt in PROMPTS]


def test_twenty_schemas_three_prompts():
    assert len(SCHEMAS) == 20 and len(CASES) == 60


def request(name: str, prompt: str) -> dict:
    return dict(
        model="x",
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=400,
        response_format={"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name]}},
    )


@pytest.mark.parametrize("name, prompt", CASES)
def test_schema_answers_validate(client, name, prompt):
    r = client.chat.completions.create(**request(name, prompt))
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMAS[name], format_checker=FORMATS)
    streamed, finish = "", None
    for chunk in client.chat.completions.create(stream=True, **request(name, prompt)):
        if chunk.choices:
            streamed += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop"
    jsonschema.validate(json.loads(streamed), SCHEMAS[name], format_checker=FORMATS)
