"""Sampling parameters: the one owner of every sampling field's default and range.

``SamplingParams`` holds the defaults (its field defaults) and ``RANGES`` the ranges; the HTTP
parser, the server's Default* settings and the CLI judge values through ``with_values`` and
build their defaults from it.  The sampler (engine/sampling.py) takes the result as given."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from smallmind.errors import RequestValidationError
from smallmind.values import Range, is_int, shown

__all__ = ["SamplingParams", "RANGES", "BIAS_RANGE"]

# The one range table of the sampling parameters, in request-field order.  The HTTP parser,
# the server's Default* settings and the CLI all judge values against it.
RANGES: dict[str, Range] = {
    "temperature": Range(False, 0, 2),
    "top_p": Range(False, 0, 1, low_exclusive=True),
    "top_k": Range(True, 0, note="0 disables it"),
    "min_p": Range(False, 0, 1),
    "seed": Range(True, nullable=True),
    "presence_penalty": Range(False, -2, 2),
    "frequency_penalty": Range(False, -2, 2),
    "repetition_penalty": Range(False, 0, low_exclusive=True, note="1 disables it"),
    "penalty_last_n": Range(True, -1, note="-1 = whole context"),
    "max_tokens": Range(True, 1),
    "logprobs": Range(True, 0, 20, nullable=True),
}
BIAS_RANGE = Range(False, -100, 100)  # each logit_bias value


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; the field defaults are the only defaults (llama.cpp's,
    as the product description gives them), RANGES the only ranges.

    ``top_k`` <= 0, ``top_p`` == 1, ``min_p`` == 0 and ``repetition_penalty`` == 1 switch the
    respective stage off.  ``penalty_last_n``: how many recent tokens the penalties look at
    (0 = none, -1 = all of ``recent_tokens``).  ``logit_bias`` maps token ids to an additive
    bias (-100 effectively bans, +100 forces); decimal-string keys, as OpenAI sends them, are
    converted to ints.  ``stop_token_ids``: generation ends when one is sampled (the caller's
    job; the token is not part of the output).  ``seed`` None draws one from OS entropy.
    ``max_tokens``: the tokens to generate at most, before the context's room cuts it.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    penalty_last_n: int = 64
    logit_bias: Mapping[int, float] = field(default_factory=dict, hash=False)
    max_tokens: int = 100
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; k >= 0: chosen token's and the k most likely

    def __post_init__(self) -> None:
        bias = self.logit_bias
        if isinstance(bias, Mapping):
            norm = {}
            for key, value in bias.items():
                if isinstance(key, str):
                    try:
                        key = int(key.strip())
                    except ValueError:
                        pass  # left as is: validate() names it
                norm[key] = value
            object.__setattr__(self, "logit_bias", norm)
        stops = self.stop_token_ids
        if (
            not isinstance(stops, frozenset)
            and isinstance(stops, Iterable)
            and not isinstance(stops, (str, bytes))
        ):
            object.__setattr__(self, "stop_token_ids", frozenset(stops))

    @property
    def greedy(self) -> bool:
        """True when sampling is deterministic argmax (temperature 0)."""
        return self.temperature == 0

    def with_values(
        self, given: Mapping[str, object], aliases: Mapping[str, str] | None = None
    ) -> SamplingParams:
        """These settings with ``given`` (values as a client or a setting sent them) put in:
        each judged against RANGES, the one validation of a parameter's value, and floats
        made float.  ``aliases``: another name a field may come under (OpenAI's
        max_completion_tokens for max_tokens), judged under that name and winning over the
        field's own.  A RequestValidationError names every bad one (the first in ``param``)."""
        aliases = aliases or {}
        found = [
            (name, _problem(name, value, RANGES[aliases.get(name, name)]))
            for name, value in given.items()
            if not RANGES[aliases.get(name, name)].accepts(value)
        ]
        _raise_if(found)
        values: dict[str, Any] = {name: value for name, value in given.items() if name not in aliases}
        values.update((aliases[name], value) for name, value in given.items() if name in aliases)
        typed: dict[str, Any] = {
            name: value if RANGES[name].integer or value is None else float(value)
            for name, value in values.items()
        }
        return replace(self, **typed)

    def problems(self, vocab_size: int) -> list[tuple[str, str]]:
        """Every invalid setting as ``(parameter, message)``, in field order: values outside
        RANGES, then token ids outside the vocabulary."""
        out = [
            (name, _problem(name, getattr(self, name), rule))
            for name, rule in RANGES.items()
            if not rule.accepts(getattr(self, name))
        ]
        lb = self.logit_bias
        if not isinstance(lb, Mapping):
            out.append(
                ("logit_bias", f"logit_bias must be a mapping of token id to bias, got {type(lb).__name__}")
            )
        else:
            out += [
                (
                    "logit_bias",
                    f"logit_bias value for token {tok} must be {BIAS_RANGE.requirement}, got {shown(v)}",
                )
                for tok, v in lb.items()
                if not BIAS_RANGE.accepts(v)
            ]
        if not isinstance(self.stop_token_ids, frozenset):
            out.append(
                (
                    "stop_token_ids",
                    f"stop_token_ids must be a set of token ids, got {type(self.stop_token_ids).__name__}",
                )
            )
        if not isinstance(self.ignore_eos, (bool, np.bool_)):
            out.append(("ignore_eos", f"ignore_eos must be a boolean, got {shown(self.ignore_eos)}"))
        return out + self._vocabulary_problems(vocab_size)

    def _vocabulary_problems(self, vocab_size: int) -> list[tuple[str, str]]:
        out = []
        for name, ids in (
            ("logit_bias", self.logit_bias),
            ("stop_token_ids", sorted(self.stop_token_ids, key=repr)),
        ):
            if isinstance(ids, (Mapping, list)):
                out += [
                    (name, f"{name} has token id {shown(tok)} outside the vocabulary (0..{vocab_size - 1})")
                    for tok in ids
                    if not is_int(tok) or not 0 <= tok < vocab_size
                ]
        return out

    def validate(self, vocab_size: int) -> None:
        """Raise ``RequestValidationError`` naming every bad setting (first one in ``.param``):
        for settings built in code; values from outside come in through ``with_values``."""
        _raise_if(self.problems(vocab_size))

    def check_vocabulary(self, vocab_size: int) -> None:
        """Raise ``RequestValidationError`` if a logit_bias key or stop token id lies outside
        the vocabulary: what ``with_values`` cannot know, and the sampler must."""
        _raise_if(self._vocabulary_problems(vocab_size))


def _problem(name: str, value: object, rule: Range) -> str:
    return f"{name} must be {rule.requirement}, got {shown(value)}"


def _raise_if(found: list[tuple[str, str]]) -> None:
    if found:
        err = RequestValidationError("; ".join(msg for _, msg in found), param=found[0][0])
        err.params = [name for name, _ in found]  # type: ignore[attr-defined]
        raise err
