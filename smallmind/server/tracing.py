"""Optional OpenTelemetry tracing: a ``request`` span per HTTP request, a ``generation`` span
inside it.

opentelemetry is not a dependency.  When ``opentelemetry-api`` imports, spans go to whatever
tracer provider the deployment configured (with the API alone they are non-recording and
cost next to nothing); when it does not, every span is a shared no-op object.  Either way
the handlers use the same code: ``with tracer.request_span(...) as span: span.set_attribute(...)``.

Tracing is an aid, never a reason for a request to fail: every call into opentelemetry is
guarded, and a failure degrades to the no-op span.  Exceptions raised by the *handler* inside
a span are recorded on the span and re-raised untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["Tracer", "NoopSpan", "NOOP_SPAN"]

log = logging.getLogger("smallmind.tracing")


class NoopSpan:
    """Stands in for a span when tracing is off; accepts everything and records nothing."""

    trace_id: str | None = None
    recording = False

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        pass


NOOP_SPAN = NoopSpan()


class _OtelSpan:
    """A real span behind the same small surface as `NoopSpan`, with every call guarded.

    None values are dropped because opentelemetry rejects them (with a warning per call),
    and handlers naturally have None for things like "no max_tokens given"."""

    def __init__(self, span: Any) -> None:
        self._span = span

    @property
    def recording(self) -> bool:
        try:
            return bool(self._span.is_recording())
        except Exception:
            return False

    @property
    def trace_id(self) -> str | None:
        """The 32-hex trace id, for correlating logs with traces; None if there is none."""
        try:
            ctx = self._span.get_span_context()
            return format(ctx.trace_id, "032x") if ctx.is_valid else None
        except Exception:
            return None

    def set_attribute(self, key: str, value: Any) -> None:
        if value is None:
            return
        try:
            self._span.set_attribute(key, value)
        except Exception:
            log.debug("could not set span attribute %r", key, exc_info=True)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        try:
            clean = {k: v for k, v in (attributes or {}).items() if v is not None}
            self._span.add_event(name, clean)
        except Exception:
            log.debug("could not add span event %r", name, exc_info=True)


class Tracer:
    """Makes the server's spans, through opentelemetry when available.

    ``use_otel``: None = use it if importable, False = never (no-op mode), True = same as None
    (a missing or broken opentelemetry still only disables tracing, it never raises).
    ``tracer_provider``: an explicit provider, e.g. an SDK provider in tests; default is the
    globally configured one.
    """

    def __init__(
        self, service_name: str = "smallmind", *, use_otel: bool | None = None, tracer_provider: Any = None
    ) -> None:
        self.service_name = service_name
        # opentelemetry is optional: its modules are held as Any, set only when it imports.
        self._trace: Any = None  # the opentelemetry.trace module when enabled
        self._context: Any = None  # opentelemetry.context
        self._propagate: Any = None  # opentelemetry.propagate
        self._tracer: Any = None
        if use_otel is False:
            return
        try:
            from opentelemetry import context, propagate, trace

            self._tracer = trace.get_tracer(service_name, tracer_provider=tracer_provider)
        except Exception as exc:  # ImportError, or a provider that fails to hand out tracers
            if not isinstance(exc, ImportError):
                log.warning("tracing disabled: opentelemetry failed to start: %s", exc)
            self._tracer = None
            return
        self._trace, self._context, self._propagate = trace, context, propagate

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextmanager
    def request_span(
        self, headers: Mapping[str, str], route: str, method: str
    ) -> Iterator[NoopSpan | _OtelSpan]:
        """The server span for one HTTP request, continuing the caller's W3C trace if the
        headers carry a ``traceparent``."""
        if not self.enabled:
            yield NOOP_SPAN
            return
        parent = self._extract(headers)
        attributes = {"http.request.method": method, "http.route": route}
        with self._span("request", parent, "SERVER", attributes) as span:
            yield span

    @contextmanager
    def generation_span(self, n_prompt_tokens: int, max_tokens: int) -> Iterator[NoopSpan | _OtelSpan]:
        """The engine's work for a request; a child of whatever span is current."""
        if not self.enabled:
            yield NOOP_SPAN
            return
        attributes = {"gen_ai.usage.input_tokens": n_prompt_tokens, "gen_ai.request.max_tokens": max_tokens}
        with self._span("generation", None, "INTERNAL", attributes) as span:
            yield span

    # -- internals ------------------------------------------------------------------------

    def _extract(self, headers: Mapping[str, str]) -> Any:
        """The parent context from the incoming headers, or None (= a new trace).

        Keys are lower-cased first: the default getter looks up ``traceparent`` exactly, and a
        plain dict may spell it ``Traceparent``.  (Tornado's HTTPHeaders would not care.)"""
        try:
            carrier = {str(k).lower(): v for k, v in headers.items()}
            return self._propagate.extract(carrier)
        except Exception:
            log.debug("could not read trace context from headers", exc_info=True)
            return None

    @contextmanager
    def _span(
        self, name: str, parent: Any, kind: str, attributes: dict[str, Any]
    ) -> Iterator[NoopSpan | _OtelSpan]:
        """Start `name`, make it current for the body, end it afterwards.

        Done by hand rather than with ``start_as_current_span`` so that a failure inside
        opentelemetry (start, attach, end) is told apart from an exception of the body: the
        former is swallowed, the latter recorded and re-raised."""
        started = self._start(name, parent, kind, attributes)
        if started is None:
            yield NOOP_SPAN
            return
        span, token = started
        try:
            yield _OtelSpan(span)
        except Exception as exc:
            self._record_failure(span, exc)
            raise
        finally:
            self._finish(span, token)

    def _start(self, name: str, parent: Any, kind: str, attributes: dict[str, Any]) -> tuple[Any, Any] | None:
        """(span, context token) with the span made current, or None if opentelemetry failed."""
        try:
            span = self._tracer.start_span(
                name, context=parent, kind=self._trace.SpanKind[kind], attributes=attributes
            )
        except Exception:
            log.debug("could not start span %r", name, exc_info=True)
            return None
        try:
            return span, self._context.attach(self._trace.set_span_in_context(span))
        except Exception:
            log.debug("could not make span %r current", name, exc_info=True)
            self._finish(span, None)
            return None

    def _record_failure(self, span: Any, exc: Exception) -> None:
        try:
            span.record_exception(exc)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, type(exc).__name__))
        except Exception:
            log.debug("could not record exception on span", exc_info=True)

    def _finish(self, span: Any, token: Any) -> None:
        try:
            if token is not None:
                self._context.detach(token)
        except Exception:
            log.debug("could not detach span context", exc_info=True)
        try:
            span.end()
        except Exception:
            log.debug("could not end span", exc_info=True)
