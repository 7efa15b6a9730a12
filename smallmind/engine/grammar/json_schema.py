"""JSON Schema (the subset OpenAI structured output uses) -> automaton nodes.

Supported: type (also lists, e.g. ["string", "null"]), enum, const, properties,
required, additionalProperties, items, prefixItems, minItems, maxItems, anyOf, oneOf
(treated as anyOf: an output matching two branches would violate oneOf, so keep
branches disjoint), allOf with one member, $ref into the same document ($defs /
definitions; recursive references are refused), minLength, maxLength, format (accepted
and not enforced: date-time, email, uri, ... are generated as plain strings).
Annotations (title, description, ...) are ignored.  Any other keyword raises
``RequestValidationError`` naming the keyword and where it is; nothing is ignored
silently.

Output simplifications (every output still validates):
* object properties are written in declaration order; optional ones may be skipped;
* declared properties + additionalProperties true/schema: only declared ones are written;
* an object schema without properties is a map: any keys, values from
  additionalProperties (any JSON value when it is absent or true);
* a schema without "type" takes the types its keywords imply (any value if none)."""

import json

from smallmind.errors import RequestValidationError

from .nodes import (AnyOf, Array, FreeString, Literals, Node, Number, Object,
                    any_value)

ANY_VALUE_DEPTH = 8  # nesting allowed inside schema-free values

ANNOTATIONS = frozenset({"title", "description", "examples", "default", "$schema", "$id",
                         "$comment", "deprecated", "readOnly", "writeOnly", "$anchor"})
DEFINITIONS = frozenset({"$defs", "definitions"})
TYPE_KEYWORDS = {
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "prefixItems", "minItems", "maxItems"}),
    "string": frozenset({"minLength", "maxLength", "format"}),
    "number": frozenset(),
    "integer": frozenset(),
    "boolean": frozenset(),
    "null": frozenset(),
}
SUPPORTED = (frozenset({"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"})
             | ANNOTATIONS | DEFINITIONS | frozenset().union(*TYPE_KEYWORDS.values()))
JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool,
              "null": type(None)}


def schema_error(message: str) -> RequestValidationError:
    err = RequestValidationError(f"response_format: {message}")
    err.param = "response_format"  # type: ignore[attr-defined]
    return err


def encode_literal(value) -> bytes:
    """The one JSON text we write for a constant."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def has_type(value, name: str) -> bool:
    """JSON Schema's notion of a value's type (bool is not a number; 1.0 is an integer)."""
    if name in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return name == "number" or float(value).is_integer()
    return isinstance(value, JSON_TYPES[name])


class SchemaCompiler:
    """Compiles one schema document; $ref targets are compiled once each."""

    def __init__(self, root):
        self.root = root
        self.by_ref: dict[str, Node] = {}
        self.resolving: list[str] = []

    def compile(self, schema, path: str = "#") -> Node:
        if schema is True:
            return any_value(ANY_VALUE_DEPTH)
        if schema is False:
            raise schema_error(f"schema false at {path} accepts no value")
        if not isinstance(schema, dict):
            raise schema_error(f"schema at {path} must be an object or a boolean")
        for keyword in schema:
            if keyword not in SUPPORTED:
                raise schema_error(f"unsupported JSON Schema keyword '{keyword}' at {path}")
        active = set(schema) - ANNOTATIONS - DEFINITIONS
        for combinator in ("$ref", "anyOf", "oneOf", "allOf"):
            if combinator in active:
                others = sorted(active - {combinator})
                if others:
                    raise schema_error(f"unsupported combination of '{combinator}' with "
                                       f"'{others[0]}' at {path}")
                return getattr(self, "_" + combinator.strip("$").lower())(
                    schema[combinator], f"{path}/{combinator}")
        if "enum" in active or "const" in active:
            return self._constants(schema, active, path)
        types = self._types(schema, active, path)
        nodes = [self._typed(name, schema, path) for name in types]
        return nodes[0] if len(nodes) == 1 else AnyOf(nodes)

    # ------------------------------------------------------------ combinators
    def _ref(self, ref, path: str) -> Node:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise schema_error(f"only local $ref ('#/...') is supported at {path}")
        if ref in self.resolving:
            raise schema_error(f"unsupported recursive $ref '{ref}' at {path}")
        if ref not in self.by_ref:
            self.resolving.append(ref)
            try:
                self.by_ref[ref] = self.compile(self._resolve(ref, path), ref)
            finally:
                self.resolving.pop()
        return self.by_ref[ref]

    def _resolve(self, ref: str, path: str):
        target = self.root
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise schema_error(f"$ref '{ref}' at {path} points to nothing")
        return target

    def _anyof(self, branches, path: str) -> Node:
        if not isinstance(branches, list) or not branches:
            raise schema_error(f"{path} must be a non-empty array of schemas")
        nodes = [self.compile(b, f"{path}/{i}") for i, b in enumerate(branches)]
        return nodes[0] if len(nodes) == 1 else AnyOf(nodes)

    _oneof = _anyof  # documented simplification: oneOf is generated as anyOf

    def _allof(self, branches, path: str) -> Node:
        if not isinstance(branches, list) or len(branches) != 1:
            raise schema_error(f"unsupported allOf with more than one schema at {path}")
        return self.compile(branches[0], f"{path}/0")

    # ------------------------------------------------------------ constants
    def _constants(self, schema: dict, active: set, path: str) -> Node:
        if "const" in active:
            values, where = [schema["const"]], "const"
        else:
            values, where = schema["enum"], "enum"
            if not isinstance(values, list) or not values:
                raise schema_error(f"{path}/enum must be a non-empty array")
        others = sorted(active - {"enum", "const", "type"})
        if others:
            raise schema_error(f"unsupported keyword '{others[0]}' next to '{where}' "
                               f"at {path}")
        if "type" in active:
            types = self._type_names(schema["type"], path)
            values = [v for v in values if any(has_type(v, t) for t in types)]
            if not values:
                raise schema_error(f"no {where} value at {path} has the schema's type")
        return Literals(sorted({encode_literal(v) for v in values}))

    # ------------------------------------------------------------ types
    def _type_names(self, declared, path: str) -> list[str]:
        names = declared if isinstance(declared, list) else [declared]
        if not names:
            raise schema_error(f"{path}/type must not be empty")
        for name in names:
            if name not in TYPE_KEYWORDS:
                raise schema_error(f"unknown type {name!r} at {path}/type")
        return list(dict.fromkeys(names))

    def _types(self, schema: dict, active: set, path: str) -> list[str]:
        if "type" in schema:
            return self._type_names(schema["type"], path)
        implied = [t for t in ("object", "array", "string") if active & TYPE_KEYWORDS[t]]
        return implied or ["any"]

    def _typed(self, name: str, schema: dict, path: str) -> Node:
        if name == "any":
            return any_value(ANY_VALUE_DEPTH)
        if name == "null":
            return Literals([b"null"])
        if name == "boolean":
            return Literals([b"true", b"false"])
        if name in ("number", "integer"):
            return Number(integer=name == "integer")
        return getattr(self, "_" + name)(schema, path)

    def _string(self, schema: dict, path: str) -> Node:
        min_len = self._count(schema, "minLength", path) or 0
        max_len = self._count(schema, "maxLength", path)
        if max_len is not None and max_len < min_len:
            raise schema_error(f"maxLength < minLength at {path}")
        if "format" in schema and not isinstance(schema["format"], str):
            raise schema_error(f"{path}/format must be a string")
        return FreeString(min_len, max_len)

    def _array(self, schema: dict, path: str) -> Node:
        prefix_schemas = schema.get("prefixItems", [])
        if not isinstance(prefix_schemas, list):
            raise schema_error(f"{path}/prefixItems must be an array of schemas")
        prefix = [self.compile(s, f"{path}/prefixItems/{i}")
                  for i, s in enumerate(prefix_schemas)]
        items = schema.get("items", True)
        if isinstance(items, list):
            raise schema_error(f"unsupported array form of 'items' at {path}/items "
                               "(use prefixItems)")
        rest = None if items is False else self.compile(items, f"{path}/items")
        min_items = self._count(schema, "minItems", path) or 0
        max_items = self._count(schema, "maxItems", path)
        most = max_items
        if rest is None:
            most = len(prefix) if max_items is None else min(max_items, len(prefix))
        if most is not None and most < min_items:
            raise schema_error(f"no array can satisfy minItems at {path}")
        return Array(prefix, rest, min_items, max_items)

    def _object(self, schema: dict, path: str) -> Node:
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        extra = schema.get("additionalProperties", None)
        if not isinstance(properties, dict):
            raise schema_error(f"{path}/properties must be an object")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise schema_error(f"{path}/required must be an array of strings")
        props = [(encode_literal(name), self.compile(sub, f"{path}/properties/{name}"),
                  name in required) for name, sub in properties.items()]
        for name in dict.fromkeys(r for r in required if r not in properties):
            if extra is False:
                raise schema_error(f"required property {name!r} at {path} is not in "
                                   "properties and additionalProperties is false")
            value = self.compile(True if extra is None else extra,
                                 f"{path}/additionalProperties")
            props.append((encode_literal(name), value, True))
        if isinstance(extra, dict) or extra is None or extra is True:
            # compiled even when unused, so its keywords are checked too
            value = self.compile(True if extra is None else extra,
                                 f"{path}/additionalProperties")
        elif extra is not False:
            raise schema_error(f"{path}/additionalProperties must be a schema")
        if props or extra is False:
            return Object(props, extra=None)
        return Object([], extra=value)

    @staticmethod
    def _count(schema: dict, keyword: str, path: str) -> int | None:
        value = schema.get(keyword)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise schema_error(f"{path}/{keyword} must be a non-negative integer")
        return value


def compile_schema(schema) -> Node:
    """The automaton root for a JSON Schema; raises RequestValidationError."""
    return SchemaCompiler(schema).compile(schema)
