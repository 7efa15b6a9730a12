"""How client and configuration values are judged and quoted in error messages.

Shared by the request parser, the settings loader and the sampling parameters, so a value is
described the same way wherever it is refused."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeGuard

from smallmind.errors import RequestValidationError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def is_int(value: Any) -> TypeGuard[int]:
    """An integer, and not a bool (Python's True is an int; JSON's true is not a number).
    JSON, like Python, has no size limit: 1 followed by 400 zeros would overflow float() and
    the native code behind every field; no valid value lies outside int64 (seed is OpenAI's
    int64 too), so the type check refuses those outright."""
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and INT64_MIN <= int(value) <= INT64_MAX
    )


def is_number(value: Any) -> TypeGuard[float]:
    """A finite real number (infinite floats come from JSON literals such as 1e999)."""
    if isinstance(value, numbers.Integral):
        return is_int(value)
    return isinstance(value, numbers.Real) and math.isfinite(value)


def clip(value: Any, limit: int = 60) -> str:
    """A string as is, anything else as its repr; cut to ``limit`` characters + '...'."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def shown(value: Any) -> str:
    """A value as error messages quote it ('hot', 3.5, True), clipped."""
    return clip(repr(value))


_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
    type(None): "null",
}


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type: 'object', 'array', 'null', ..."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def check_token_ids(ids: Iterable[int], vocab_size: int, param: str) -> None:
    """A RequestValidationError naming ``param`` if an id lies outside the vocabulary."""
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise RequestValidationError(
            f"{param} has token id {bad} outside the vocabulary (0..{vocab_size - 1})", param=param
        )


@dataclass(frozen=True)
class Range:
    """What one numeric parameter accepts, and how an error message describes it."""

    integer: bool
    low: float | None = None
    high: float | None = None
    low_exclusive: bool = False  # value must be > low rather than >= low
    nullable: bool = False  # None is a valid value (seed: draw one)
    note: str = ""  # what a special value means, e.g. "0 disables it"

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if not is_number(value) or (self.integer and not is_int(value)):  # an int is a number
            return False
        if self.low is not None and (value < self.low or (self.low_exclusive and value == self.low)):
            return False
        return self.high is None or value <= self.high

    def json_schema(self) -> dict:
        """The same rule as JSON Schema (for the OpenAPI document); null is not part of it."""
        schema: dict = {"type": "integer" if self.integer else "number"}
        if self.low is not None:
            schema["exclusiveMinimum" if self.low_exclusive else "minimum"] = self.low
        if self.high is not None:
            schema["maximum"] = self.high
        return schema

    @property
    def requirement(self) -> str:
        """What a valid value looks like: 'a number between 0 and 2', 'an integer >= 1'."""
        text = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            text += (
                f" greater than {_num(self.low)} and at most {_num(self.high)}"
                if self.low_exclusive
                else f" between {_num(self.low)} and {_num(self.high)}"
            )
        elif self.low is not None:
            text += f" greater than {_num(self.low)}" if self.low_exclusive else f" >= {_num(self.low)}"
        if self.note:
            text += f" ({self.note})"
        return text + (" or null" if self.nullable else "")


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)
