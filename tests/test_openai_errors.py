"""server/openai/errors.py: the error -> HTTP mapping."""

import json

import pytest

from smallmind.errors import ConfigError, ModelFormatError, ModelNotFoundError, RequestValidationError
from smallmind.server.openai import errors
from tests.openai_bodies import (
    chat_error,
)

# --------------------------------------------------------------------------------------------
# Error mapping
# --------------------------------------------------------------------------------------------


def _bad_temperature() -> RequestValidationError:
    return chat_error(temperature=3)


@pytest.mark.parametrize(
    "make, status, error_type, code, param",
    [
        (_bad_temperature, 400, "invalid_request_error", None, "temperature"),
        (lambda: RequestValidationError("plain"), 400, "invalid_request_error", None, None),
        (
            lambda: errors.ContextLengthError(2048, 2000, 100),
            400,
            "invalid_request_error",
            "context_length_exceeded",
            "messages",
        ),
        (
            lambda: errors.EmbeddingsNotSupportedError("gemma"),
            400,
            "invalid_request_error",
            "embeddings_not_supported",
            "model",
        ),
        (lambda: errors.RouteNotFoundError("/v2/nothing"), 404, "invalid_request_error", "not_found", None),
        (lambda: ModelNotFoundError("no model 'x'"), 404, "invalid_request_error", "model_not_found", None),
        (
            lambda: errors.MethodNotAllowedError("PUT", "/v1/models", ["GET"]),
            405,
            "invalid_request_error",
            "method_not_allowed",
            None,
        ),
        (
            lambda: errors.BodyTooLargeError(1024, 4096),
            413,
            "invalid_request_error",
            "request_too_large",
            None,
        ),
        (lambda: errors.QueueFullError(), 429, "rate_limit_exceeded", "rate_limit_exceeded", None),
        (lambda: errors.NotReadyError(), 503, "service_unavailable", None, None),
        (lambda: errors.RequestTimeoutError(30), 504, "timeout_error", None, None),
    ],
)
def test_error_mapping(make, status, error_type, code, param):
    exc = make()
    got_status, body = errors.error_response(exc, request_id="req-1")
    assert got_status == status
    assert body == {"error": {"message": str(exc), "type": error_type, "code": code, "param": param}}
    assert body["error"]["message"]
    json.dumps(body)


def test_validation_error_code_attribute_is_used():
    err = RequestValidationError("bad template")
    err.code = "invalid_chat_template"
    err.param = "messages"
    status, body = errors.error_response(err)
    assert status == 400
    assert body["error"]["code"] == "invalid_chat_template"
    assert body["error"]["param"] == "messages"


def test_error_messages_carry_the_facts():
    assert "2048" in str(errors.ContextLengthError(2048, 2000, 100))
    assert "2100" in str(errors.ContextLengthError(2048, 2000, 100))
    assert "3000" in str(errors.ContextLengthError(2048, 3000))
    assert "GET" in str(errors.MethodNotAllowedError("PUT", "/v1/models", ["GET"]))
    assert errors.MethodNotAllowedError("PUT", "/v1/models", ["GET", "HEAD"]).allowed == ("GET", "HEAD")
    assert "1024" in str(errors.BodyTooLargeError(1024))
    assert errors.QueueFullError(retry_after=2).retry_after == 2


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("secret /home/user/model.gguf"),
        KeyError("api_key=hunter2"),
        ModelFormatError("tensor blk.0 at /secret/path is broken"),
        ConfigError("ApiKey=hunter2"),
        ZeroDivisionError(),
        RuntimeError(""),
    ],
)
def test_unknown_errors_are_opaque_500s(exc):
    status, body = errors.error_response(exc, request_id="abc123")
    assert status == 500
    error = body["error"]
    assert error["type"] == "internal_error"
    assert error["message"] == "internal server error (request id abc123)"
    text = json.dumps(body)
    for leak in ("secret", "hunter2", "gguf", "Traceback", type(exc).__name__):
        assert leak not in text


def test_500_without_request_id():
    status, body = errors.error_response(RuntimeError("boom"))
    assert status == 500 and body["error"]["message"] == "internal server error"
    assert "boom" not in json.dumps(body)


def test_500_for_raised_exception_with_traceback():
    try:
        raise RuntimeError("deep internal detail")
    except RuntimeError as exc:
        status, body = errors.error_response(exc, request_id="r")
    assert status == 500 and "deep internal detail" not in json.dumps(body)
