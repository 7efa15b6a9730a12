"""The Tornado application: the server's shared state and its routes.

Handlers (`handlers.py`, `completions.py`) parse with `openai.requests`, build prompts with
`ServedModel`, pass admission, and hand generation to the engine thread (`Scheduler`); they
only await and write.  Every failure becomes an OpenAI-style JSON error through
`openai.errors.error_response`, the one place statuses are decided."""

from __future__ import annotations

from dataclasses import dataclass, field

import tornado.web

from smallmind.server.admission import Admission
from smallmind.server.completions import (
    ChatHandler,
    CompletionHandler,
    DetokenizeHandler,
    EmbeddingHandler,
    TokenizeHandler,
)
from smallmind.server.config import ServerOptions
from smallmind.server.handlers import (
    HealthHandler,
    MetricsHandler,
    ModelsHandler,
    NotFoundHandler,
    OpenApiHandler,
    ReadyHandler,
)
from smallmind.server.metrics import ServerMetrics
from smallmind.server.runtime import ServedModel
from smallmind.server.tracing import Tracer


@dataclass
class ServerState:
    """What the handlers share: settings, the model once loaded, readiness, admission,
    metrics and tracing."""

    options: ServerOptions
    served: ServedModel | None = None
    status: str = "loading"  # loading | ready | failed | draining
    reason: str = "the model is loading"
    active_requests: int = 0  # POST requests being handled (drain waits for 0)
    admission: Admission = field(init=False)  # sized by options, so made in __post_init__
    metrics: ServerMetrics = field(init=False, default_factory=ServerMetrics)
    tracer: Tracer = field(init=False, default_factory=Tracer)

    def __post_init__(self) -> None:
        self.admission = Admission(self.options.max_concurrent_requests, self.options.max_queue_depth)

    @property
    def ready(self) -> bool:
        return self.status == "ready" and self.served is not None

    def set_status(self, status: str, reason: str = "") -> None:
        self.status, self.reason = status, reason
        self.metrics.set_ready(self.ready)

    def refresh_gauges(self) -> None:
        self.metrics.set_queue_depth(self.admission.waiting)
        self.metrics.set_active_sequences(self.admission.active)


def make_app(state: ServerState) -> tornado.web.Application:
    kw = {"state": state}
    routes = [
        (r"/healthz", HealthHandler, kw),
        (r"/readyz", ReadyHandler, kw),
        (r"/metrics", MetricsHandler, kw),
        (r"/v1/models", ModelsHandler, kw),
        (r"/v1/models/(.+)", ModelsHandler, kw),
        (r"/v1/chat/completions", ChatHandler, kw),
        (r"/v1/completions", CompletionHandler, kw),
        (r"/v1/embeddings", EmbeddingHandler, kw),
        (r"/tokenize", TokenizeHandler, kw),
        (r"/detokenize", DetokenizeHandler, kw),
        (r"/openapi.json", OpenApiHandler, kw),
    ]
    # The access log is ours (one structured line per request, written in on_finish).
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=kw,
        log_function=lambda handler: None,
    )
