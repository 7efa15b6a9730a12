"""Typed errors of the HTTP API and the one table that maps every error to its HTTP status
and OpenAI error type (``error_response``).

The errors a request's fields cause are ``RequestValidationError``s carrying the field in
``param`` (OpenAI's error.param); the engine's own errors (``smallmind.errors``) map here too.
No parsing here: admission and runtime import their errors from this module alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from smallmind.errors import ModelNotFoundError, RequestValidationError, SmallMindError
from smallmind.values import clip

__all__ = [
    "ContextLengthError",
    "EmbeddingsNotSupportedError",
    "RouteNotFoundError",
    "MethodNotAllowedError",
    "BodyTooLargeError",
    "QueueFullError",
    "RequestTimeoutError",
    "AuthenticationError",
    "LimitExceededError",
    "MalformedRequestError",
    "HeadersTooLargeError",
    "UrlTooLongError",
    "ClientTooSlowError",
    "NotReadyError",
    "RequestValidationError",
    "error_response",
]


class ContextLengthError(RequestValidationError):
    """Prompt plus requested completion do not fit the model's context."""

    code = "context_length_exceeded"

    def __init__(
        self,
        context_length: int,
        prompt_tokens: int,
        max_tokens: int | None = None,
        param: str | None = "messages",
        at_least: bool = False,
    ) -> None:
        # at_least: prompt_tokens is a lower bound from the prompt's length in bytes (the
        # prompt was refused before it was tokenized)
        some = "at least " if at_least else ""
        if max_tokens is None:
            asked = f"{some}{prompt_tokens} tokens in the prompt, leaving no room for a completion"
        else:
            asked = (
                f"{some}{prompt_tokens + max_tokens} tokens ({some}{prompt_tokens} in the "
                f"prompt, {max_tokens} in the completion)"
            )
        super().__init__(
            f"This model's maximum context length is {context_length} tokens, "
            f"however you requested {asked}. Please reduce the length of the "
            f"prompt or of max_tokens.",
            param=param,
        )
        self.context_length = context_length
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens


class LimitExceededError(RequestValidationError):
    """A request part is larger than a configured limit of this server (the message names
    the setting)."""

    code = "limit_exceeded"

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message, param)


class EmbeddingsNotSupportedError(RequestValidationError):
    """The loaded model cannot produce embeddings."""

    code = "embeddings_not_supported"

    def __init__(self, model: str | None = None) -> None:
        which = f"model {model!r}" if model else "the loaded model"
        super().__init__(f"{which} does not support embeddings", param="model")


class RouteNotFoundError(SmallMindError):
    """No endpoint at this path."""

    def __init__(self, path: str) -> None:
        super().__init__(f"no endpoint at {clip(path)}")
        self.path = path


class MethodNotAllowedError(SmallMindError):
    """The path exists but not for this HTTP method; ``allowed`` feeds the Allow header."""

    def __init__(self, method: str, path: str, allowed: Sequence[str]) -> None:
        super().__init__(
            f"method {clip(method)} is not allowed on {clip(path)} (allowed: {', '.join(allowed)})"
        )
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

    def __init__(
        self,
        message: str = "the server is busy: too many requests queued, retry later",
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeoutError(SmallMindError):
    """The request did not finish within the configured time."""

    def __init__(self, timeout_s: float | None = None) -> None:
        after = f" after {timeout_s:g} s" if timeout_s is not None else ""
        super().__init__(f"the request timed out{after}")


class AuthenticationError(SmallMindError):
    """No API key, or not one of the configured keys."""

    def __init__(
        self, message: str = "invalid or missing API key: send it as 'Authorization: Bearer <key>'"
    ) -> None:
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
    mapping = next((_HTTP_ERRORS[cls] for cls in type(exc).__mro__ if cls in _HTTP_ERRORS), None)
    if mapping is None:
        where = f" (request id {request_id})" if request_id else ""
        return 500, _error_body(f"internal server error{where}", "internal_error", None, None)
    code = getattr(exc, "code", None) or mapping.code
    param = getattr(exc, "param", None)
    message = str(exc) or mapping.error_type
    return mapping.status, _error_body(message, mapping.error_type, code, param)


def _error_body(message: str, error_type: str, code: str | None, param: str | None) -> dict:
    return {"error": {"message": message, "type": error_type, "code": code, "param": param}}
