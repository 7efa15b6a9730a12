"""The OpenAI wire protocol: request parsing and validation, response shapes, error mapping.

Pure Python (no Tornado, no native code) so it can be tested on its own.  Three jobs:

* ``parse_chat`` / ``parse_completion`` / ``parse_embedding`` turn a request body into a typed
  request, or raise ``RequestValidationError`` whose ``param`` names the offending field.
  Unknown fields are ignored, because OpenAI clients send many we do not implement
  (``logprobs``, ``tools``, ``response_format``, ...).  A JSON ``null`` means "not given".
* the response builders return plain dicts in OpenAI's exact shapes;
* ``error_response`` is the one place where a typed error becomes an HTTP status and an
  OpenAI error body.

Sampling determinism: choice ``j`` of a request with ``seed`` s samples with seed ``s + j``
(``choice_params``), so the ``n`` choices differ from each other yet a repeated request
reproduces every one of them.  Without a seed each choice draws its own OS entropy.

Completion choices are numbered prompt-major: choice ``j`` of prompt ``i`` has index
``i * n + j`` (``choice_index``), as OpenAI numbers them.

Vocabulary-dependent checks (token ids in range, logit_bias keys) need the loaded model and
are done by ``check_vocabulary``; context-length fitting by ``fit_max_tokens``.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from smallmind import __version__ as SMALLMIND_VERSION
from smallmind.engine.sampling import SamplingParams
from smallmind.errors import ModelNotFoundError, RequestValidationError, SmallMindError

__all__ = [
    # requests
    "Defaults", "GenerationRequest", "ChatRequest", "CompletionRequest", "EmbeddingRequest",
    "parse_chat", "parse_completion", "parse_embedding", "parse_tokenize", "parse_detokenize",
    "TokenizeRequest", "token_piece",
    "choice_params", "choice_index", "fit_max_tokens", "check_vocabulary",
    "MAX_N", "MAX_STOP", "MAX_PROMPTS", "MAX_EMBEDDING_INPUTS",
    # responses
    "new_id", "usage", "chat_completion", "chat_chunk", "chat_logprobs", "completion_logprobs",
    "tool_call_deltas", "usage_chunk", "completion",
    "completion_chunk", "embedding_list", "model_entry", "model_list",
    "CHAT_ID_PREFIX", "COMPLETION_ID_PREFIX",
    # errors
    "ContextLengthError", "EmbeddingsNotSupportedError", "RouteNotFoundError",
    "MethodNotAllowedError", "BodyTooLargeError", "QueueFullError", "RequestTimeoutError",
    "AuthenticationError", "LimitExceededError", "MalformedRequestError", "HeadersTooLargeError",
    "UrlTooLongError", "ClientTooSlowError",
    "NotReadyError", "error_response",
    # limits
    "check_schema_limits", "min_prompt_tokens",
]

MAX_N = 8                      # choices per prompt
MAX_STOP = 4                   # stop strings, as OpenAI allows
MAX_PROMPTS = 16               # prompts in one completions request
MAX_EMBEDDING_INPUTS = 2048    # inputs in one embeddings request, as OpenAI allows

CHAT_ID_PREFIX = "chatcmpl"
COMPLETION_ID_PREFIX = "cmpl"


# ============================================================================================
# Errors
# ============================================================================================

class ContextLengthError(RequestValidationError):
    """Prompt plus requested completion do not fit the model's context."""

    code = "context_length_exceeded"

    def __init__(self, context_length: int, prompt_tokens: int,
                 max_tokens: int | None = None, param: str | None = "messages",
                 at_least: bool = False) -> None:
        # at_least: prompt_tokens is a lower bound from the prompt's length in bytes (the
        # prompt was refused before it was tokenized)
        some = "at least " if at_least else ""
        if max_tokens is None:
            asked = f"{some}{prompt_tokens} tokens in the prompt, leaving no room for a completion"
        else:
            asked = (f"{some}{prompt_tokens + max_tokens} tokens ({some}{prompt_tokens} in the "
                     f"prompt, {max_tokens} in the completion)")
        super().__init__(f"This model's maximum context length is {context_length} tokens, "
                         f"however you requested {asked}. Please reduce the length of the "
                         f"prompt or of max_tokens.")
        self.param = param
        self.context_length = context_length
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens


class LimitExceededError(RequestValidationError):
    """A request part is larger than a configured limit of this server (the message names
    the setting)."""

    code = "limit_exceeded"

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


class EmbeddingsNotSupportedError(RequestValidationError):
    """The loaded model cannot produce embeddings."""

    code = "embeddings_not_supported"

    def __init__(self, model: str | None = None) -> None:
        which = f"model {model!r}" if model else "the loaded model"
        super().__init__(f"{which} does not support embeddings")
        self.param = "model"


class RouteNotFoundError(SmallMindError):
    """No endpoint at this path."""

    def __init__(self, path: str) -> None:
        super().__init__(f"no endpoint at {_clip(path)}")
        self.path = path


class MethodNotAllowedError(SmallMindError):
    """The path exists but not for this HTTP method; ``allowed`` feeds the Allow header."""

    def __init__(self, method: str, path: str, allowed: Sequence[str]) -> None:
        super().__init__(f"method {_clip(method)} is not allowed on {_clip(path)} "
                         f"(allowed: {', '.join(allowed)})")
        self.allowed = tuple(allowed)


class BodyTooLargeError(SmallMindError):
    """The request body exceeds the configured limit."""

    def __init__(self, limit_bytes: int, size_bytes: int | None = None) -> None:
        size = f" ({size_bytes} bytes)" if size_bytes is not None else ""
        super().__init__(f"request body{size} exceeds the limit of {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class MalformedRequestError(SmallMindError):
    """The request is not valid HTTP/1.1 framing (bad Content-Length, chunk size, ...)."""


class HeadersTooLargeError(SmallMindError):
    """Too many header lines, or too many header bytes."""


class UrlTooLongError(SmallMindError):
    """The request line (method, URL, version) is longer than the server reads."""


class ClientTooSlowError(SmallMindError):
    """The client did not send its headers or its body within the configured time."""


class QueueFullError(SmallMindError):
    """Every worker is busy and the wait queue is full; ``retry_after`` is in seconds."""

    def __init__(self, message: str = "the server is busy: too many requests queued, "
                                      "retry later", retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeoutError(SmallMindError):
    """The request did not finish within the configured time."""

    def __init__(self, timeout_s: float | None = None) -> None:
        after = f" after {timeout_s:g} s" if timeout_s is not None else ""
        super().__init__(f"the request timed out{after}")


class AuthenticationError(SmallMindError):
    """No API key, or not one of the configured keys."""

    def __init__(self, message: str = "invalid or missing API key: send it as "
                                      "'Authorization: Bearer <key>'") -> None:
        super().__init__(message)


class NotReadyError(SmallMindError):
    """The model is still loading (or failed to load)."""

    def __init__(self, message: str = "the model is not loaded yet, retry later") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class _HttpMapping:
    status: int
    error_type: str
    code: str | None


# Exception class -> HTTP mapping, looked up along the exception's MRO so a subclass maps like
# its parent unless listed itself.  Anything not found is a 500 whose text is never shown,
# since it may hold paths, internals or user data.
_HTTP_ERRORS: dict[type, _HttpMapping] = {
    RequestValidationError: _HttpMapping(400, "invalid_request_error", None),
    AuthenticationError: _HttpMapping(401, "invalid_request_error", "invalid_api_key"),
    ModelNotFoundError: _HttpMapping(404, "invalid_request_error", "model_not_found"),
    RouteNotFoundError: _HttpMapping(404, "invalid_request_error", "not_found"),
    MethodNotAllowedError: _HttpMapping(405, "invalid_request_error", "method_not_allowed"),
    BodyTooLargeError: _HttpMapping(413, "invalid_request_error", "request_too_large"),
    MalformedRequestError: _HttpMapping(400, "invalid_request_error", "malformed_request"),
    ClientTooSlowError: _HttpMapping(408, "invalid_request_error", "request_timeout"),
    UrlTooLongError: _HttpMapping(414, "invalid_request_error", "url_too_long"),
    HeadersTooLargeError: _HttpMapping(431, "invalid_request_error", "headers_too_large"),
    QueueFullError: _HttpMapping(429, "rate_limit_exceeded", "rate_limit_exceeded"),
    NotReadyError: _HttpMapping(503, "service_unavailable", None),
    RequestTimeoutError: _HttpMapping(504, "timeout_error", None),
}


def error_response(exc: BaseException, request_id: str | None = None) -> tuple[int, dict]:
    """``(status, {"error": {message, type, code, param}})`` for any exception.

    A ``code`` or ``param`` attribute on the exception (``RequestValidationError`` carries
    them) overrides the mapping's defaults.  Unknown exceptions become a 500 naming only
    ``request_id``, which the server also logs next to the traceback."""
    mapping = next((_HTTP_ERRORS[cls] for cls in type(exc).__mro__ if cls in _HTTP_ERRORS),
                   None)
    if mapping is None:
        where = f" (request id {request_id})" if request_id else ""
        return 500, _error_body(f"internal server error{where}", "internal_error", None, None)
    code = getattr(exc, "code", None) or mapping.code
    param = getattr(exc, "param", None)
    message = str(exc) or mapping.error_type
    return mapping.status, _error_body(message, mapping.error_type, code, param)


def _error_body(message: str, error_type: str, code: str | None, param: str | None) -> dict:
    return {"error": {"message": message, "type": error_type, "code": code, "param": param}}


def _invalid(param: str | None, message: str) -> RequestValidationError:
    err = RequestValidationError(message)
    err.param = param  # type: ignore[attr-defined]  # becomes OpenAI's error.param
    return err


def _clip(value: Any, limit: int = 60) -> str:
    """repr-like text of a client value, short enough for an error message."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _shown(value: Any) -> str:
    """A client's value as error messages quote it ('hot', 3.5, True), clipped."""
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


# ============================================================================================
# Request types
# ============================================================================================

@dataclass(frozen=True)
class Defaults:
    """Values for sampling fields a request leaves out (the server fills it from its config)."""

    max_tokens: int = 100
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature,
                              top_p=self.top_p, top_k=self.top_k, min_p=self.min_p)


@dataclass(kw_only=True)
class GenerationRequest:
    """What chat and completions requests share."""

    sampling: SamplingParams   # seed is the request's; per-choice seeds via choice_params()
    max_tokens_given: bool     # user-set max_tokens must fit the context; a default is clipped
    stop: list[str]
    n: int
    stream: bool
    include_usage: bool        # stream_options.include_usage: a final usage-only chunk
    model: str | None          # accepted and ignored: one model is served
    timeout_ms: int | None = None   # extension: at most the server's RequestTimeoutMs
    logprobs: int | None = None     # None: off; k: the chosen token's and the k most likely
    response_format: dict | None = None   # {"type": "json_object" | "json_schema", ...}; None: text
    grammar: str | None = None      # extension (llama.cpp's): a GBNF or Lark grammar the output follows
    regex: str | None = None        # extension (vLLM's guided_regex): a regex the whole output matches


@dataclass(kw_only=True)
class ChatRequest(GenerationRequest):
    messages: list[dict]       # only checked to be objects; the chat template checks deeper
    tools: list[dict] = field(default_factory=list)   # each {"type": "function", "function": {...}}
    tool_choice: str | dict = "auto"      # "none" | "auto" | "required" | {"type": "function", ...}
    legacy_functions: bool = False        # asked with functions/function_call: answer with function_call


@dataclass(kw_only=True)
class CompletionRequest(GenerationRequest):
    prompts: list[str | list[int]]   # text or token ids; each is its own prompt
    echo: bool


@dataclass(kw_only=True)
class EmbeddingRequest:
    inputs: list[str | list[int]]
    encoding_format: str       # "float" or "base64"
    model: str | None


# ============================================================================================
# Field readers
# ============================================================================================

_INT64_MIN, _INT64_MAX = -2**63, 2**63 - 1


def _is_int(value: Any) -> bool:
    # JSON has no bool/number confusion, Python does: True is an int.  JSON has no size
    # limit, Python's int neither: 1 followed by 400 zeros would overflow float() and the
    # native code behind every field; no field's valid value lies outside int64 (seed is
    # OpenAI's int64 too), so the type check refuses those outright.
    return isinstance(value, int) and not isinstance(value, bool) and _INT64_MIN <= value <= _INT64_MAX


def _is_number(value: Any) -> bool:
    # Infinite floats come from literals such as 1e999.
    if isinstance(value, float):
        return math.isfinite(value)
    return _is_int(value)


@dataclass(frozen=True)
class _NumberField:
    """One numeric request field: its type, accepted range and how to describe it."""

    name: str
    integer: bool
    accepts: Callable[[Any], bool]
    expected: str                  # completes "<name> must be ..."

    def read(self, body: dict) -> int | float | None:
        """The field's value (float for non-integer fields), or None if absent or null."""
        value = body.get(self.name)
        if value is None:
            return None
        valid_type = _is_int(value) if self.integer else _is_number(value)
        if not valid_type or not self.accepts(value):
            raise _invalid(self.name, f"{self.name} must be {self.expected}, "
                                      f"got {_shown(value)}")
        return value if self.integer else float(value)


# The request's sampling fields, each named as in SamplingParams.
_SAMPLING_FIELDS = (
    _NumberField("temperature", False, lambda v: 0 <= v <= 2, "a number between 0 and 2"),
    _NumberField("top_p", False, lambda v: 0 < v <= 1,
                 "a number greater than 0 and at most 1"),
    _NumberField("top_k", True, lambda v: v >= 0, "an integer >= 0 (0 disables it)"),
    _NumberField("min_p", False, lambda v: 0 <= v <= 1, "a number between 0 and 1"),
    _NumberField("seed", True, lambda v: True, "an integer or null"),
    _NumberField("presence_penalty", False, lambda v: -2 <= v <= 2,
                 "a number between -2 and 2"),
    _NumberField("frequency_penalty", False, lambda v: -2 <= v <= 2,
                 "a number between -2 and 2"),
    _NumberField("repetition_penalty", False, lambda v: v > 0,
                 "a number greater than 0 (1 disables it)"),
)
_MAX_TOKENS = _NumberField("max_tokens", True, lambda v: v >= 1, "an integer >= 1 or null")
_MAX_COMPLETION_TOKENS = dataclasses.replace(_MAX_TOKENS, name="max_completion_tokens")
_N = _NumberField("n", True, lambda v: 1 <= v <= MAX_N, f"an integer between 1 and {MAX_N}")
# Not OpenAI's: a client may ask for a shorter time limit than the server's RequestTimeoutMs.
_TOP_LOGPROBS = _NumberField("top_logprobs", True, lambda v: 0 <= v <= 20,
                             "an integer between 0 and 20 or null")
_COMPLETION_LOGPROBS = _NumberField("logprobs", True, lambda v: 0 <= v <= 5,
                                    "an integer between 0 and 5 or null")
_TIMEOUT_MS = _NumberField("timeout_ms", True, lambda v: v >= 1, "an integer >= 1 or null")

_BEST_OF = _NumberField("best_of", True, lambda v: 1 <= v <= 20, "an integer between 1 and 20 or null")

# At most 18 digits: every token id fits, and int() never meets Python's 4,300-digit limit.
_TOKEN_ID_KEY = re.compile(r"[0-9]{1,18}", re.ASCII)
# A JSON escape of a UTF-16 surrogate: \ud800-\udfff.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


def _load_object(body: bytes | str) -> dict:
    def reject_constant(name: str) -> None:
        # Python's json accepts NaN and Infinity; JSON does not.
        raise ValueError(f"{name} is not valid JSON")

    try:
        parsed = json.loads(body, parse_constant=reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, deep nesting
        raise _invalid(None, f"invalid JSON body: {_clip(str(exc), 200)}") from None
    if not isinstance(parsed, dict):
        raise _invalid(None, f"invalid JSON body: expected an object, "
                             f"got {_json_type(parsed)}")
    _refuse_lone_surrogates(parsed, body)
    return parsed


def _refuse_lone_surrogates(fields: dict, body: bytes | str) -> None:
    """JSON may escape half of a UTF-16 pair ("\\ud800") and Python's json then yields a
    str that no UTF-8 can hold: it would fail wherever it is encoded (tokenizer, echo,
    stream, schema literal).  Refused here, as raw invalid UTF-8 already is.  Only bodies
    holding such an escape at all are searched."""
    escapes = _SURROGATE_ESCAPE_BYTES if isinstance(body, bytes) else _SURROGATE_ESCAPE
    if not escapes.search(body):
        return
    for name, value in fields.items():
        if not all(_encodable(text) for text in _strings_in(name, value)):
            raise _invalid(name, f"{name} holds a lone UTF-16 surrogate (an unpaired escape "
                                 f"such as \\ud800), which is not valid Unicode text")


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


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _read_bool(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _invalid(name, f"{name} must be a boolean, got {_shown(value)}")
    return value


def _read_string(body: dict, name: str) -> str | None:
    """An optional string field (null: not given)."""
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid(name, f"{name} must be a string, got {_shown(value)}")
    return value


def _read_model(body: dict) -> str | None:
    return _read_string(body, "model")


def _read_stop(body: dict) -> list[str]:
    stop = body.get("stop")
    expected = f"stop must be a string or a list of at most {MAX_STOP} non-empty strings"
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOP:
        raise _invalid("stop", f"{expected}, got {_shown(stop)}")
    for text in stops:
        if not isinstance(text, str) or not text:
            raise _invalid("stop", f"{expected}, got {_shown(text)} in it")
    return list(stops)


def _read_logit_bias(body: dict) -> dict[int, float]:
    bias = body.get("logit_bias")
    if bias is None:
        return {}
    if not isinstance(bias, dict):
        raise _invalid("logit_bias", f"logit_bias must be an object mapping token ids to "
                                     f"numbers, got {_shown(bias)}")
    out: dict[int, float] = {}
    for key, value in bias.items():
        if not _TOKEN_ID_KEY.fullmatch(key):
            raise _invalid("logit_bias", f"logit_bias keys must be token ids (decimal "
                                         f"integers >= 0), got {_shown(key)}")
        if not _is_number(value) or not -100 <= value <= 100:
            raise _invalid("logit_bias", f"logit_bias value for token {key} must be a number "
                                         f"between -100 and 100, got {_shown(value)}")
        out[int(key)] = float(value)
    return out


def _read_include_usage(body: dict, stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise _invalid("stream_options", "stream_options is only allowed when stream is true")
    if not isinstance(options, dict):
        raise _invalid("stream_options", f"stream_options must be an object, "
                                         f"got {_shown(options)}")
    include = options.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise _invalid("stream_options", f"stream_options.include_usage must be a boolean, "
                                         f"got {_shown(include)}")
    return bool(include)


def _read_sampling(body: dict, defaults: Defaults) -> tuple[SamplingParams, bool]:
    """SamplingParams from the body over ``defaults``, and whether max_tokens was given."""
    given = {field.name: value for field in _SAMPLING_FIELDS
             if (value := field.read(body)) is not None}
    # Both are read so a bad value in either is reported; the newer name wins.
    max_tokens = _MAX_TOKENS.read(body)
    max_completion_tokens = _MAX_COMPLETION_TOKENS.read(body)
    if max_completion_tokens is not None:
        max_tokens = max_completion_tokens
    if max_tokens is not None:
        given["max_tokens"] = max_tokens
    given["logit_bias"] = _read_logit_bias(body)
    return dataclasses.replace(defaults.sampling(), **given), max_tokens is not None


def _read_generation(body: dict, defaults: Defaults) -> dict[str, Any]:
    """The GenerationRequest fields, as keyword arguments."""
    sampling, max_tokens_given = _read_sampling(body, defaults)
    stream = _read_bool(body, "stream")
    _read_string(body, "user")     # accepted and ignored, but only as OpenAI accepts it
    return dict(sampling=sampling, max_tokens_given=max_tokens_given, stop=_read_stop(body),
                n=_N.read(body) or 1, stream=stream,
                include_usage=_read_include_usage(body, stream), model=_read_model(body),
                timeout_ms=_TIMEOUT_MS.read(body), grammar=_read_text_field(body, "grammar"),
                regex=_read_text_field(body, "regex"))


def _read_text_field(body: dict, name: str) -> str | None:
    """An optional non-empty string field (the ``grammar`` and ``regex`` extensions)."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _invalid(name, f"{name} must be a non-empty string, got {_shown(value)}")
    return value


def _check_one_constraint(req: "GenerationRequest", forced_call: bool = False) -> None:
    """At most one of response_format, grammar, regex and a forced tool call shapes the output."""
    given = [name for name, present in (("response_format", req.response_format is not None),
                                        ("grammar", req.grammar is not None), ("regex", req.regex is not None),
                                        ("tool_choice", forced_call)) if present]
    if len(given) > 1:
        raise _invalid(given[1], f"{given[1]} cannot be combined with {given[0]}: each fixes the output's shape")


def _read_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if messages is None:
        raise _invalid("messages", "messages is required")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", f"messages must be a non-empty list of message objects, "
                                   f"got {_shown(messages)}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid("messages", f"messages[{i}] must be an object, "
                                       f"got {_shown(message)}")
    return messages


def _token_ids(value: list, where: str, param: str) -> list[int]:
    if not value:
        raise _invalid(param, f"{where} must not be empty")
    for i, token in enumerate(value):
        if not _is_int(token) or token < 0:
            raise _invalid(param, f"{where}[{i}] must be a token id (an integer >= 0), "
                                  f"got {_shown(token)}")
    return value


def _read_texts_or_tokens(body: dict, param: str, *, max_items: int,
                          allow_empty_text: bool) -> list[str | list[int]]:
    """A ``prompt`` / ``input`` field: a string, a list of strings, a list of token ids (one
    item) or a list of token-id lists.  Returns one entry per item."""
    value = body.get(param)
    shapes = "a string, a list of strings, a list of token ids or a list of token-id lists"
    if value is None:
        raise _invalid(param, f"{param} is required")
    if isinstance(value, str):
        items: list = [value]
    elif isinstance(value, list) and value:
        first = value[0]
        if _is_int(first):  # one tokenised item
            return [_token_ids(value, param, param)]
        if not isinstance(first, (str, list)):
            raise _invalid(param, f"{param} must be {shapes}, got {_shown(value)}")
        items = value
    else:
        raise _invalid(param, f"{param} must be {shapes} (non-empty), got {_shown(value)}")
    if len(items) > max_items:
        raise _invalid(param, f"{param} may hold at most {max_items} items, got {len(items)}")
    kind = type(items[0])
    for i, item in enumerate(items):
        where = f"{param}[{i}]" if isinstance(value, list) else param
        if type(item) is not kind:  # mixed lists are ambiguous
            raise _invalid(param, f"{where} must be a {_json_type(items[0])} like the first "
                                  f"item, got {_shown(item)}")
        if kind is list:
            _token_ids(item, where, param)
        elif not item and not allow_empty_text:
            raise _invalid(param, f"{where} must not be an empty string")
    return list(items)


# ============================================================================================
# Parsers
# ============================================================================================

def parse_chat(body: bytes | str, defaults: Defaults = Defaults()) -> ChatRequest:
    """A /v1/chat/completions body as a ChatRequest (RequestValidationError if invalid)."""
    fields = _load_object(body)
    messages = _read_messages(fields)
    req = ChatRequest(messages=messages, **_read_generation(fields, defaults))
    req.logprobs = _read_chat_logprobs(fields)
    req.response_format = _read_response_format(fields)
    req.legacy_functions = _map_legacy_functions(fields)
    req.tools = _read_tools(fields)
    req.tool_choice = _read_tool_choice(fields, req.tools)
    _read_bool(fields, "parallel_tool_calls")   # at most one call per answer is found anyway
    if req.tools and req.tool_choice != "none" and req.response_format is not None:
        raise _invalid("response_format", "response_format cannot be combined with tools")
    _check_one_constraint(req, forced_call=req.tool_choice not in ("none", "auto"))
    return req


def _map_legacy_functions(fields: dict) -> bool:
    """The deprecated ``functions`` / ``function_call`` become ``tools`` / ``tool_choice``
    (answers then use the legacy ``function_call`` shape)."""
    if "functions" not in fields and "function_call" not in fields:
        return False
    if "tools" in fields or "tool_choice" in fields:
        raise _invalid("functions", "functions/function_call cannot be combined with tools/tool_choice")
    functions = fields.pop("functions", None)
    if functions is None:
        raise _invalid("function_call", "function_call needs functions")
    if not isinstance(functions, list):
        raise _invalid("functions", f"functions must be a list, got {_shown(functions)}")
    fields["tools"] = [{"type": "function", "function": f} for f in functions]
    call = fields.pop("function_call", None)
    if isinstance(call, dict):
        fields["tool_choice"] = {"type": "function", "function": call}
    elif call is not None:
        fields["tool_choice"] = call
    return True


def _read_response_format(fields: dict) -> dict | None:
    """Only the shape is checked here; the engine's grammar compiler judges the schema."""
    rf = fields.get("response_format")
    if rf is None:
        return None
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise _invalid("response_format", "response_format.type must be 'text', 'json_object' or "
                                          f"'json_schema', got {_shown(kind)}")
    spec = rf.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise _invalid("response_format", "response_format.json_schema must be an object with a 'name'")
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise _invalid("response_format", "response_format.json_schema.schema must be an object")
    return {"type": "json_schema", "json_schema": {"name": spec["name"], "schema": schema,
                                                   "strict": bool(spec.get("strict"))}}


_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NO_PARAMETERS = {"type": "object", "properties": {}}   # a function declared without parameters


def _read_tools(fields: dict) -> list[dict]:
    tools = fields.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _invalid("tools", f"tools must be a list, got {_shown(tools)}")
    seen = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise _invalid("tools", f"{where} must be {{\"type\": \"function\", \"function\": {{...}}}}")
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise _invalid("tools", f"{where}.function.name must be 1-64 letters, digits, _ or -, got {_shown(name)}")
        if name in seen:
            raise _invalid("tools", f"{where}.function.name {name!r} is used twice")
        seen.add(name)
        params = fn.get("parameters", _NO_PARAMETERS)
        if not isinstance(params, dict):
            raise _invalid("tools", f"{where}.function.parameters must be a JSON schema object")
    return [{"type": "function", "function": dict(t["function"], parameters=t["function"].get(
        "parameters", _NO_PARAMETERS))} for t in tools]


def _read_tool_choice(fields: dict, tools: list[dict]) -> str | dict:
    choice = fields.get("tool_choice")
    if choice is None:
        return "auto" if tools else "none"
    if choice in ("none", "auto", "required"):
        if choice == "required" and not tools:
            raise _invalid("tool_choice", "tool_choice 'required' needs tools")
        return choice
    names = {t["function"]["name"] for t in tools}
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in names:
            raise _invalid("tool_choice", f"tool_choice names function {_shown(name)}, which is not in tools")
        return {"type": "function", "function": {"name": name}}
    raise _invalid("tool_choice", "tool_choice must be 'none', 'auto', 'required' or "
                                  f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {_shown(choice)}")


def _read_chat_logprobs(fields: dict) -> int | None:
    """Chat asks with logprobs: true and top_logprobs: k (which needs logprobs)."""
    wanted = _read_bool(fields, "logprobs")
    top = _TOP_LOGPROBS.read(fields)
    if top is not None and not wanted:
        raise _invalid("top_logprobs", "top_logprobs needs logprobs: true")
    return (top or 0) if wanted else None


def parse_completion(body: bytes | str, defaults: Defaults = Defaults()) -> CompletionRequest:
    """A /v1/completions body as a CompletionRequest (RequestValidationError if invalid)."""
    fields = _load_object(body)
    # An empty text prompt is allowed, as OpenAI allows it: generation starts from BOS.
    prompts = _read_texts_or_tokens(fields, "prompt", max_items=MAX_PROMPTS,
                                    allow_empty_text=True)
    req = CompletionRequest(prompts=prompts, echo=_read_bool(fields, "echo"),
                            **_read_generation(fields, defaults))
    # Accepted and ignored as before, but only with the types OpenAI accepts.
    _read_string(fields, "suffix")
    _BEST_OF.read(fields)
    req.logprobs = _COMPLETION_LOGPROBS.read(fields)
    req.response_format = _read_response_format(fields)   # as vLLM takes it on completions
    _check_one_constraint(req)
    return req


def parse_embedding(body: bytes | str) -> EmbeddingRequest:
    """A /v1/embeddings body as an EmbeddingRequest (RequestValidationError if invalid)."""
    fields = _load_object(body)
    inputs = _read_texts_or_tokens(fields, "input", max_items=MAX_EMBEDDING_INPUTS,
                                   allow_empty_text=False)
    encoding_format = fields.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    elif encoding_format not in ("float", "base64"):
        raise _invalid("encoding_format", f"encoding_format must be 'float' or 'base64', "
                                          f"got {_shown(encoding_format)}")
    if fields.get("dimensions") is not None:
        raise _invalid("dimensions", "dimensions is not supported: embeddings always have "
                                     "the model's own size")
    _read_string(fields, "user")
    return EmbeddingRequest(inputs=inputs, encoding_format=encoding_format,
                            model=_read_model(fields))


@dataclass(kw_only=True)
class TokenizeRequest:
    """llama.cpp's POST /tokenize."""

    content: str
    add_special: bool
    parse_special: bool
    with_pieces: bool


def parse_tokenize(body: bytes | str, max_bytes: int) -> TokenizeRequest:
    """A /tokenize body; content longer than ``max_bytes`` (UTF-8) is a LimitExceededError."""
    fields = _load_object(body)
    content = fields.get("content")
    if not isinstance(content, str):
        raise _invalid("content", f"content must be a string, got {_shown(content)}")
    if len(content) > max_bytes or len(content.encode("utf-8")) > max_bytes:
        raise LimitExceededError(f"content is longer than this server's limit of {max_bytes} "
                                 f"bytes (MaxTokenizeBytes)", "content")
    parse_special = fields.get("parse_special", True)
    if not isinstance(parse_special, bool):
        raise _invalid("parse_special", f"parse_special must be a boolean, got {_shown(parse_special)}")
    return TokenizeRequest(content=content, add_special=_read_bool(fields, "add_special"),
                           parse_special=parse_special, with_pieces=_read_bool(fields, "with_pieces"))


def parse_detokenize(body: bytes | str) -> list[int]:
    """The token ids of a POST /detokenize body."""
    fields = _load_object(body)
    tokens = fields.get("tokens")
    if not isinstance(tokens, list):
        raise _invalid("tokens", f"tokens must be a list of token ids, got {_shown(tokens)}")
    return _token_ids(tokens, "tokens", "tokens") if tokens else []


def token_piece(piece: bytes) -> str | list[int]:
    """A token's text as llama.cpp's /tokenize shows it: a string when the bytes are whole
    UTF-8, else the list of byte values (a piece of a multi-byte character)."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)


# ============================================================================================
# Helpers for the server
# ============================================================================================

def choice_params(req: GenerationRequest, choice: int) -> SamplingParams:
    """Sampling settings of choice ``choice`` (0-based within its prompt): seed s -> s + choice,
    so choices differ yet reproduce; no seed stays no seed (fresh entropy per choice)."""
    seed = req.sampling.seed
    if seed is not None and choice > 0:
        seed += choice
    return dataclasses.replace(req.sampling, seed=seed, logprobs=req.logprobs)


def choice_index(prompt: int, choice: int, n: int) -> int:
    """OpenAI's prompt-major index of choice ``choice`` of prompt ``prompt``."""
    return prompt * n + choice


def fit_max_tokens(req: GenerationRequest, prompt_tokens: int, context_length: int,
                   at_least: bool = False) -> int:
    """The max_tokens to generate with: a default is clipped to the room the prompt leaves,
    a user-given one that does not fit is a ContextLengthError, as is a prompt that leaves
    no room at all.  With ``at_least``, prompt_tokens is only a lower bound (from
    min_prompt_tokens): the refusals are as certain, the returned number is not final."""
    param = "messages" if isinstance(req, ChatRequest) else "prompt"
    room = context_length - prompt_tokens
    if room < 1:
        raise ContextLengthError(context_length, prompt_tokens, None, param=param, at_least=at_least)
    wanted = req.sampling.max_tokens
    if wanted <= room:
        return wanted
    if req.max_tokens_given:
        raise ContextLengthError(context_length, prompt_tokens, wanted, param=param, at_least=at_least)
    return room


def min_prompt_tokens(text: str, max_token_bytes: int) -> int:
    """A lower bound on the tokens of ``text`` that needs no tokenizing: no token stands for
    more than ``max_token_bytes`` bytes of text, so B bytes take at least ceil(B / max)."""
    return -(-len(text.encode("utf-8")) // max_token_bytes)


def check_schema_limits(schema: Any, param: str, where: str, max_bytes: int, max_depth: int) -> None:
    """A LimitExceededError (naming ``param``) for a JSON schema nested deeper than
    ``max_depth`` objects/arrays or longer than ``max_bytes`` as compact JSON: measured before
    anything compiles it, since compiling costs more than linear time and memory and
    recurses once per level."""
    if _nesting_depth(schema, max_depth) > max_depth:
        raise LimitExceededError(f"{where} is nested more than {max_depth} levels deep (objects "
                                 f"and arrays); this server's limit is {max_depth} (MaxSchemaDepth)",
                                 param)
    size = len(json.dumps(schema, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > max_bytes:
        raise LimitExceededError(f"{where} is {size} bytes as compact JSON; this server's limit "
                                 f"is {max_bytes} bytes (MaxSchemaBytes)", param)


def _nesting_depth(value: Any, stop_after: int) -> int:
    """How deeply objects and arrays nest in ``value`` (a scalar: 0), counted no further than
    one past ``stop_after``; iterative, so any depth is measured safely."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > stop_after:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_vocabulary(req: GenerationRequest | EmbeddingRequest, vocab_size: int) -> None:
    """The checks that need the model: token ids in prompts / inputs and logit_bias keys
    must lie in the vocabulary (RequestValidationError naming the field)."""
    if isinstance(req, GenerationRequest):
        req.sampling.validate(vocab_size)
    if isinstance(req, CompletionRequest):
        _check_token_ids(req.prompts, vocab_size, "prompt")
    elif isinstance(req, EmbeddingRequest):
        _check_token_ids(req.inputs, vocab_size, "input")


def _check_token_ids(items: list[str | list[int]], vocab_size: int, param: str) -> None:
    for item in items:
        if isinstance(item, list):
            bad = next((t for t in item if t >= vocab_size), None)
            if bad is not None:
                raise _invalid(param, f"{param} has token id {bad} outside the vocabulary "
                                      f"(0..{vocab_size - 1})")


# ============================================================================================
# Responses
# ============================================================================================

# OpenAI's system_fingerprint names the backend configuration; ours is the server's version.
SYSTEM_FINGERPRINT = f"fp_smallmind_{SMALLMIND_VERSION}"


def new_id(prefix: str) -> str:
    """A fresh response id such as ``chatcmpl-`` + 24 hex digits."""
    return f"{prefix.rstrip('-')}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's usage object; cached_tokens: prompt tokens taken from the prefix cache."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def chat_completion(id: str, created: int, model: str,
                    choices: Iterable[tuple[str, str]], usage: dict,
                    logprobs: Sequence[dict | None] | None = None,
                    tool_calls: Sequence[list | None] | None = None, legacy: bool = False) -> dict:
    """A chat.completion; ``choices`` are (text, finish_reason) in index order; ``logprobs``
    (from chat_logprobs) and ``tool_calls`` per choice when there are any (``legacy``: as
    the deprecated ``function_call``)."""
    choices = list(choices)
    logprobs = logprobs or [None] * len(choices)
    tool_calls = tool_calls or [None] * len(choices)
    return {
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": i, "message": _assistant_message(text, calls, legacy),
                     "logprobs": lp, "finish_reason": finish_reason}
                    for i, ((text, finish_reason), lp, calls)
                    in enumerate(zip(choices, logprobs, tool_calls))],
        "usage": usage,
    }


def _assistant_message(text: str, calls: list | None, legacy: bool = False) -> dict:
    if calls and legacy:
        return {"role": "assistant", "content": None, "refusal": None, "function_call": calls[0]["function"]}
    if calls:
        return {"role": "assistant", "content": None, "refusal": None, "tool_calls": calls}
    return {"role": "assistant", "content": text, "refusal": None}


def tool_call_deltas(calls: list[dict], legacy: bool = False) -> list[dict]:
    """The stream deltas of finished calls, as OpenAI sends them: id, type and name first,
    then the arguments (clients concatenate argument pieces by index).  ``legacy``: the
    deprecated ``function_call`` deltas of the first call."""
    if legacy and calls:
        fn = calls[0]["function"]
        return [{"function_call": {"name": fn["name"], "arguments": ""}},
                {"function_call": {"arguments": fn["arguments"]}}]
    deltas = []
    for i, call in enumerate(calls):
        fn = call["function"]
        deltas.append({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                       "function": {"name": fn["name"], "arguments": ""}}]})
        deltas.append({"tool_calls": [{"index": i, "function": {"arguments": fn["arguments"]}}]})
    return deltas


def chat_logprobs(entries: Iterable, piece: Callable[[int], bytes]) -> dict:
    """OpenAI's choice.logprobs of a chat answer from TokenLogprob-like entries (token,
    logprob, top_ids, top_logprobs); ``piece(id)`` gives a token's bytes."""
    def one(token: int, logprob: float) -> dict:
        raw = piece(token)
        return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}

    content = [dict(one(e.token, e.logprob),
                    top_logprobs=[one(t, lp) for t, lp in zip(e.top_ids, e.top_logprobs)])
               for e in entries]
    return {"content": content, "refusal": None}


def completion_logprobs(entries: Sequence, piece: Callable[[int], bytes], text_start: int = 0,
                        with_top: bool = True) -> dict:
    """The legacy completions logprobs object: tokens, token_logprobs, top_logprobs and each
    token's character offset in the choice's text (counting from ``text_start``).  An entry
    may be None: the first prompt token under echo, which nothing predicts."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    offset = text_start
    for token, e in entries:
        text = piece(token).decode("utf-8", "replace")
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        token_logprobs.append(None if e is None else e.logprob)
        tops.append(None if e is None else
                    {piece(t).decode("utf-8", "replace"): lp for t, lp in zip(e.top_ids, e.top_logprobs)})
    return {"tokens": tokens, "token_logprobs": token_logprobs,
            "top_logprobs": tops if with_top else None, "text_offset": offsets}


def chat_chunk(id: str, created: int, model: str, index: int, delta: dict,
               finish_reason: str | None = None, *, include_usage: bool = False,
               logprobs: dict | None = None) -> dict:
    """One chat.completion.chunk for choice ``index``; ``delta`` e.g. {"role": "assistant"},
    {"content": "..."} or {} with the finish_reason.  With include_usage every chunk carries
    "usage": null, as OpenAI does, before the final usage_chunk."""
    chunk = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
             "system_fingerprint": SYSTEM_FINGERPRINT,
             "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                          "finish_reason": finish_reason}]}
    if include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(id: str, created: int, model: str, usage: dict, *, chat: bool = True) -> dict:
    """The last chunk of a stream with include_usage: no choices, only usage."""
    return {"id": id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created, "model": model, "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [], "usage": usage}


def completion(id: str, created: int, model: str,
               choices: Iterable[tuple[str, str]], usage: dict,
               logprobs: Sequence[dict | None] | None = None) -> dict:
    """A text_completion; ``choices`` are (text, finish_reason) in (prompt-major) index order."""
    choices = list(choices)
    logprobs = logprobs or [None] * len(choices)
    return {
        "id": id, "object": "text_completion", "created": created, "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": i, "text": text, "logprobs": lp,
                     "finish_reason": finish_reason}
                    for i, ((text, finish_reason), lp) in enumerate(zip(choices, logprobs))],
        "usage": usage,
    }


def completion_chunk(id: str, created: int, model: str, index: int, text: str,
                     finish_reason: str | None = None, *, include_usage: bool = False,
                     logprobs: dict | None = None) -> dict:
    """One streamed text_completion piece for choice ``index``."""
    chunk = {"id": id, "object": "text_completion", "created": created, "model": model,
             "system_fingerprint": SYSTEM_FINGERPRINT,
             "choices": [{"index": index, "text": text, "logprobs": logprobs,
                          "finish_reason": finish_reason}]}
    if include_usage:
        chunk["usage"] = None
    return chunk


def _encode_embedding(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    values = np.asarray(vector, dtype="<f4").ravel()  # OpenAI's base64 is little-endian f32
    if encoding_format == "base64":
        return base64.b64encode(values.tobytes()).decode("ascii")
    return values.tolist()


def embedding_list(model: str, vectors: Sequence[np.ndarray], encoding_format: str,
                   prompt_tokens: int) -> dict:
    """The /v1/embeddings response: one embedding per input, in input order."""
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i,
                  "embedding": _encode_embedding(vector, encoding_format)}
                 for i, vector in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def model_entry(id: str, created: int, owned_by: str) -> dict:
    """One model object (GET /v1/models/{id})."""
    return {"id": id, "object": "model", "created": created, "owned_by": owned_by}


def model_list(models: Iterable[tuple[str, int, str]]) -> dict:
    """GET /v1/models: ``models`` are (id, created, owned_by)."""
    return {"object": "list", "data": [model_entry(*m) for m in models]}
