"""Tracer: a no-op without opentelemetry, real request/generation spans with it.

The SDK tests need opentelemetry-sdk, which is optional for smallmind; they are skipped
(not failed) where it is not installed."""

import sys

import pytest

from smallmind.server.tracing import NOOP_SPAN, Tracer

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"


def exercise(tracer: Tracer) -> None:
    """What a handler does: a request span with a generation span inside, attributes set."""
    headers = {"traceparent": TRACEPARENT}
    with tracer.request_span(headers, "/v1/chat/completions", "POST") as request:
        request.set_attribute("http.response.status_code", 200)
        request.set_attribute("smallmind.absent", None)
        with tracer.generation_span(n_prompt_tokens=12, max_tokens=100) as generation:
            generation.set_attribute("gen_ai.usage.output_tokens", 7)
            generation.set_attributes({"smallmind.finish_reason": "stop"})
            generation.add_event("first_token", {"ms": 3.5})


# -- no-op mode ------------------------------------------------------------------------------


def test_disabled_tracer_yields_noop_spans():
    tracer = Tracer(use_otel=False)
    assert not tracer.enabled
    with tracer.request_span({}, "/healthz", "GET") as span:
        assert span is NOOP_SPAN
        assert span.trace_id is None
    exercise(tracer)


def test_missing_opentelemetry_means_noop_not_an_error(monkeypatch):
    # A None entry in sys.modules makes `import opentelemetry` raise ImportError.
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    tracer = Tracer(service_name="smallmind")
    assert not tracer.enabled
    exercise(tracer)


def test_noop_span_lets_handler_exceptions_through():
    tracer = Tracer(use_otel=False)
    with pytest.raises(ZeroDivisionError), tracer.request_span({}, "/v1/completions", "POST"):
        raise ZeroDivisionError("the handler's own error")


class BrokenProvider:
    """A tracer provider that fails the way a misconfigured deployment might."""

    def get_tracer(self, *args, **kwargs):
        raise RuntimeError("exporter misconfigured")


class TracerThatCannotStartSpans:
    def start_span(self, *args, **kwargs):
        raise RuntimeError("cannot start span")


def test_misconfigured_provider_disables_tracing():
    pytest.importorskip("opentelemetry.trace")
    tracer = Tracer(tracer_provider=BrokenProvider())
    assert not tracer.enabled
    exercise(tracer)


def test_span_that_fails_to_start_degrades_to_noop():
    pytest.importorskip("opentelemetry.trace")
    tracer = Tracer()
    tracer._tracer = TracerThatCannotStartSpans()
    with tracer.request_span({}, "/v1/completions", "POST") as span:
        assert span is NOOP_SPAN


# -- real spans (needs opentelemetry-sdk) -------------------------------------------------------


@pytest.fixture
def recorded():
    """A Tracer on its own SDK provider, and the exporter that collects its finished spans."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracer(tracer_provider=provider), exporter


def spans_by_name(exporter) -> dict:
    return {span.name: span for span in exporter.get_finished_spans()}


def test_request_and_generation_spans_are_recorded(recorded):
    tracer, exporter = recorded
    assert tracer.enabled
    exercise(tracer)
    spans = spans_by_name(exporter)
    assert set(spans) == {"request", "generation"}
    request, generation = spans["request"], spans["generation"]
    assert generation.parent.span_id == request.context.span_id
    assert request.attributes["http.route"] == "/v1/chat/completions"
    assert request.attributes["http.request.method"] == "POST"
    assert request.attributes["http.response.status_code"] == 200
    assert "smallmind.absent" not in request.attributes
    assert generation.attributes["gen_ai.usage.input_tokens"] == 12
    assert generation.attributes["gen_ai.request.max_tokens"] == 100
    assert generation.attributes["gen_ai.usage.output_tokens"] == 7
    assert generation.attributes["smallmind.finish_reason"] == "stop"
    assert [event.name for event in generation.events] == ["first_token"]


def test_incoming_traceparent_is_continued(recorded):
    tracer, exporter = recorded
    with tracer.request_span({"Traceparent": TRACEPARENT}, "/v1/completions", "POST") as span:
        assert span.trace_id == TRACE_ID
    request = spans_by_name(exporter)["request"]
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert format(request.parent.span_id, "016x") == PARENT_SPAN_ID
    assert request.parent.is_remote


def test_without_traceparent_a_new_trace_starts(recorded):
    tracer, exporter = recorded
    with tracer.request_span({}, "/v1/completions", "POST"):
        pass
    request = spans_by_name(exporter)["request"]
    assert request.parent is None
    assert format(request.context.trace_id, "032x") != TRACE_ID


def test_handler_exception_is_recorded_and_reraised(recorded):
    from opentelemetry.trace import StatusCode

    tracer, exporter = recorded
    with pytest.raises(ValueError), tracer.request_span({}, "/v1/completions", "POST"):
        raise ValueError("bad request")
    request = spans_by_name(exporter)["request"]
    assert request.status.status_code == StatusCode.ERROR
    assert [event.name for event in request.events] == ["exception"]


def test_spans_end_and_context_is_restored(recorded):
    from opentelemetry import trace

    tracer, exporter = recorded
    before = trace.get_current_span()
    exercise(tracer)
    assert trace.get_current_span() is before
    assert all(span.end_time is not None for span in exporter.get_finished_spans())
