"""How one field of a request body is read: the body as a JSON object, then booleans,
strings, integers in a range and the text-or-token-ids lists of ``prompt`` / ``input``.

A reader takes the parsed body and a field's name and returns the field's value (None, or
False for a boolean, when it is absent or JSON null, which means "not given"), or raises
``RequestValidationError`` whose ``param`` names the field.  Which fields each request reads,
and what it holds, is ``requests.py``'s."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from smallmind.errors import RequestValidationError
from smallmind.values import Range, clip, is_int, json_type, shown


def invalid(param: str | None, message: str) -> RequestValidationError:
    """The error for a bad field (``param`` None: the body as a whole)."""
    return RequestValidationError(message, param)


# A JSON escape of a UTF-16 surrogate: \ud800-\udfff.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


def load_object(body: bytes | str) -> dict:
    """The body as a JSON object whose strings are all valid Unicode."""

    def reject_constant(name: str) -> None:
        # Python's json accepts NaN and Infinity; JSON does not.
        raise ValueError(f"{name} is not valid JSON")

    try:
        parsed = json.loads(body, parse_constant=reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, deep nesting
        raise invalid(None, f"invalid JSON body: {clip(str(exc), 200)}") from None
    if not isinstance(parsed, dict):
        raise invalid(None, f"invalid JSON body: expected an object, got {json_type(parsed)}")
    _refuse_lone_surrogates(parsed, body)
    return parsed


def _refuse_lone_surrogates(fields: dict, body: bytes | str) -> None:
    """JSON may escape half of a UTF-16 pair ("\\ud800") and Python's json then yields a
    str that no UTF-8 can hold: it would fail wherever it is encoded (tokenizer, echo,
    stream, schema literal).  Refused here, as raw invalid UTF-8 already is.  Only bodies
    holding such an escape at all are searched."""
    if isinstance(body, bytes):
        escaped = _SURROGATE_ESCAPE_BYTES.search(body) is not None
    else:
        escaped = _SURROGATE_ESCAPE.search(body) is not None
    if not escaped:
        return
    for name, value in fields.items():
        if not all(_encodable(text) for text in _strings_in(name, value)):
            raise invalid(
                name,
                f"{name} holds a lone UTF-16 surrogate (an unpaired escape "
                f"such as \\ud800), which is not valid Unicode text",
            )


def _strings_in(*values: Any) -> Iterable[str]:
    """Every string in JSON values, object keys included (iteratively: no depth limit)."""
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def read_bool(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(name, f"{name} must be a boolean, got {shown(value)}")
    return value


def read_string(body: dict, name: str) -> str | None:
    """An optional string field (null: not given)."""
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid(name, f"{name} must be a string, got {shown(value)}")
    return value


def read_text_field(body: dict, name: str) -> str | None:
    """An optional non-empty string field (the ``grammar`` and ``regex`` extensions)."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise invalid(name, f"{name} must be a non-empty string, got {shown(value)}")
    return value


@dataclass(frozen=True)
class NumberField:
    """A numeric request field that is the request's own, not a sampling parameter (each
    one is an integer)."""

    name: str
    rule: Range

    def __post_init__(self) -> None:
        assert self.rule.integer, f"{self.name}: read() returns an int"

    def read(self, body: dict) -> int | None:
        """The field's value, or None if absent or null."""
        value = body.get(self.name)
        if value is not None and not self.rule.accepts(value):
            raise invalid(self.name, f"{self.name} must be {self.rule.requirement}, got {shown(value)}")
        return value


def token_ids(value: list, where: str, param: str) -> list[int]:
    """``value`` as a non-empty list of token ids (integers >= 0); ``where`` names it in
    messages (``prompt[2]``), ``param`` is the field the error names."""
    if not value:
        raise invalid(param, f"{where} must not be empty")
    for i, token in enumerate(value):
        if not is_int(token) or token < 0:
            raise invalid(param, f"{where}[{i}] must be a token id (an integer >= 0), got {shown(token)}")
    return value


def read_texts_or_tokens(
    body: dict, param: str, *, max_items: int, allow_empty_text: bool
) -> list[str | list[int]]:
    """A ``prompt`` / ``input`` field: a string, a list of strings, a list of token ids (one
    item) or a list of token-id lists.  Returns one entry per item."""
    value = body.get(param)
    shapes = "a string, a list of strings, a list of token ids or a list of token-id lists"
    if value is None:
        raise invalid(param, f"{param} is required")
    if isinstance(value, str):
        items: list = [value]
    elif isinstance(value, list) and value:
        first = value[0]
        if is_int(first):  # one tokenised item
            return [token_ids(value, param, param)]
        if not isinstance(first, (str, list)):
            raise invalid(param, f"{param} must be {shapes}, got {shown(value)}")
        items = value
    else:
        raise invalid(param, f"{param} must be {shapes} (non-empty), got {shown(value)}")
    if len(items) > max_items:
        raise invalid(param, f"{param} may hold at most {max_items} items, got {len(items)}")
    kind = type(items[0])
    for i, item in enumerate(items):
        where = f"{param}[{i}]" if isinstance(value, list) else param
        if type(item) is not kind:  # mixed lists are ambiguous
            raise invalid(
                param, f"{where} must be a {json_type(items[0])} like the first item, got {shown(item)}"
            )
        if kind is list:
            token_ids(item, where, param)
        elif not item and not allow_empty_text:
            raise invalid(param, f"{where} must not be an empty string")
    return list(items)
