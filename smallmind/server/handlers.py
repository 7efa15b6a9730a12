"""The base handler (request ids, API keys, CORS, errors, metrics, access log) and the small
endpoints: probes, models, metrics, unknown routes."""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid

import tornado.web

from smallmind.errors import ModelNotFoundError, RequestValidationError, SmallMindError
from smallmind.server.access_log import log_access
from smallmind.server.openai import responses
from smallmind.server.openai.errors import (
    AuthenticationError,
    BodyTooLargeError,
    MethodNotAllowedError,
    NotReadyError,
    QueueFullError,
    RouteNotFoundError,
    error_response,
)
from smallmind.server.openapi import openapi_document

log = logging.getLogger("smallmind.server")


_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def _request_id(given: str | None) -> str:
    """The client's X-Request-Id when it is a sane token (so its logs and ours line up),
    else a fresh one."""
    if given and len(given) <= 64 and set(given) <= _ID_CHARS:
        return given
    return uuid.uuid4().hex[:16]


class BaseHandler(tornado.web.RequestHandler):
    """ROUTE names the endpoint in metrics and logs; PROTECTED ones need the API key."""

    ROUTE = "unknown"
    PROTECTED = False

    def initialize(self, state) -> None:
        self.state = state
        self.started = time.perf_counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.client_gone = False
        self._accounted = False  # on_finish ran (it may be reached twice)
        state.metrics.request_started()

    def set_default_headers(self) -> None:
        # Runs again when an error clears the headers, so the id survives into error answers.
        if not hasattr(self, "request_id"):
            self.request_id = _request_id(self.request.headers.get("X-Request-Id"))
        self.set_header("X-Request-Id", self.request_id)
        self.set_header("Content-Type", "application/json")
        self.clear_header("Server")  # Tornado's names its version: no use to clients

    def prepare(self) -> None:
        self.allow_cors()
        if self.PROTECTED and self.request.method != "OPTIONS":
            self.authorize()

    # ---- security ----

    def authorize(self) -> None:
        keys = self.state.options.api_keys
        if not keys:
            return
        header = self.request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        given_bytes = given.strip().encode()
        # Compare against every key, always, so timing does not tell which one nearly matched.
        matches = [hmac.compare_digest(given_bytes, key.encode()) for key in keys]
        if scheme.lower() != "bearer" or not any(matches):
            raise AuthenticationError()

    def allow_cors(self) -> None:
        origins = self.state.options.cors_origin_list
        origin = self.request.headers.get("Origin")
        if not origins or not origin:
            return
        if "*" in origins:
            self.set_header("Access-Control-Allow-Origin", "*")
        elif origin in origins:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")
        else:
            return
        self.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
        self.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.set_header("Access-Control-Expose-Headers", "X-Request-Id, Retry-After")

    def options(self, *args) -> None:
        """CORS preflight."""
        self.set_status(204)
        self.finish()

    # ---- answers ----

    def send_json(self, body: dict, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) or exc is None:
            exc = self._typed_http_error(status_code, getattr(exc, "log_message", None))
        self.allow_cors()
        if isinstance(exc, MethodNotAllowedError):
            self.set_header("Allow", ", ".join(exc.allowed))
        if isinstance(exc, QueueFullError) and exc.retry_after:
            self.set_header("Retry-After", str(exc.retry_after))
        if isinstance(exc, AuthenticationError):
            self.set_header("WWW-Authenticate", 'Bearer realm="smallmind"')
        status, body = error_response(exc, request_id=self.request_id)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body, ensure_ascii=False))

    def _typed_http_error(self, status: int, message: str | None) -> Exception:
        """Tornado's own refusals (unsupported method, unreadable body) as our typed errors."""
        method, path = self.request.method, self.request.path
        if status == 405:
            base = tornado.web.RequestHandler
            allowed = [
                m
                for m in ("GET", "HEAD", "POST")
                if getattr(type(self), m.lower()) is not getattr(base, m.lower())
            ]
            return MethodNotAllowedError(method, path, allowed)
        if status == 404:
            return RouteNotFoundError(path)
        if status == 413:
            return BodyTooLargeError(self.state.options.max_body_bytes)
        if 400 <= status < 500:
            return RequestValidationError(message or f"bad request ({status})")
        return RuntimeError(message or f"HTTP {status}")

    def log_exception(self, typ, value, tb) -> None:
        # Expected outcomes are answers, not faults: no traceback for client errors (4xx),
        # not-ready (503) or timeouts (504); only a 500 is a fault worth one.
        if isinstance(value, (SmallMindError, tornado.web.HTTPError)):
            status = getattr(value, "status_code", None) or error_response(value)[0]
            if status < 500:
                log.info("request %s: %d %s", self.request_id, status, value)
                return
            if status != 500:
                log.warning("request %s: %d %s", self.request_id, status, value)
                return
        log.error("request %s failed", self.request_id, exc_info=(typ, value, tb))

    def on_finish(self) -> None:
        if self._accounted:
            return
        self._accounted = True
        duration_ms = (time.perf_counter() - self.started) * 1000
        # 499 (nginx's "client closed request"): nobody received what the status says.
        status = 499 if self.client_gone else self.get_status()
        self.state.metrics.request_finished(self.ROUTE, status, duration_ms)
        log_access(
            self.request_id,
            self.request.method,
            self.ROUTE,
            self.request.path,
            status,
            duration_ms,
            self.prompt_tokens,
            self.completion_tokens,
            self.request.remote_ip,
        )

    def served(self):
        """The loaded model, or NotReadyError (loading, failed, draining)."""
        if not self.state.ready:
            raise NotReadyError(f"the model is not ready: {self.state.reason}")
        return self.state.served


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        raise RouteNotFoundError(self.request.path)


class HealthHandler(BaseHandler):
    ROUTE = "/healthz"

    def get(self) -> None:
        self.send_json({"status": "healthy"})

    head = get  # Tornado sends the headers of the GET answer without its body


class ReadyHandler(BaseHandler):
    ROUTE = "/readyz"

    def get(self) -> None:
        st = self.state
        if not st.ready:
            self.send_json({"status": "not ready", "reason": st.reason}, 503)
            return
        served = st.served
        self.send_json(
            {
                "status": "ready",
                "capabilities": {
                    "model": served.model_id,
                    "chat_completions": True,
                    "completions": True,
                    "embeddings": True,
                    "streaming": True,
                    "context_length": served.n_ctx,
                    "max_concurrent_requests": st.options.max_concurrent_requests,
                },
            }
        )

    head = get


class ModelsHandler(BaseHandler):
    ROUTE = "/v1/models"
    PROTECTED = True

    def get(self, model_id: str | None = None) -> None:
        served = self.served()
        if model_id is None:
            self.send_json(responses.model_list([(served.model_id, served.created, "smallmind")]))
        elif model_id == served.model_id:
            self.send_json(responses.model_entry(served.model_id, served.created, "smallmind"))
        else:
            raise ModelNotFoundError(
                f"the model {model_id!r} does not exist; this server serves {served.model_id!r}"
            )

    head = get


class MetricsHandler(BaseHandler):
    ROUTE = "/metrics"
    PROTECTED = True

    def get(self) -> None:
        self.state.refresh_gauges()
        body, content_type = self.state.metrics.render()
        self.set_header("Content-Type", content_type)
        self.finish(body)


class OpenApiHandler(BaseHandler):
    ROUTE = "/openapi.json"

    def get(self) -> None:
        self.send_json(openapi_document())

    head = get
