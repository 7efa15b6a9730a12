"""Prometheus metrics for one server instance.

Every `ServerMetrics` owns its own `CollectorRegistry` instead of using prometheus_client's
global default one: registering the same metric name twice in one registry raises, so a
process that builds several servers (the tests do) needs one registry per server.

The recording methods are deliberately tiny and never raise on odd input (a negative count,
an int status): a metrics hiccup must not turn into a failed request.  prometheus_client is
thread-safe, so `set_batch_size` may be called from the engine thread while the event loop
records the rest.

Counters are declared without the ``_total`` suffix because prometheus_client appends it
itself; the exposed names are the ones listed in `EXPOSED_NAMES`.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["ServerMetrics", "LATENCY_BUCKETS_MS", "EXPOSED_NAMES"]

# Milliseconds from 1 ms (a health check) to 300 s (the default request timeout), roughly
# 1-2.5-5 per decade so both a fast embedding and a long generation land in a useful bucket.
LATENCY_BUCKETS_MS = (
    1,
    2.5,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    120_000,
    300_000,
)

# The names a scraper sees (counters carry prometheus_client's `_total`), for docs and tests.
EXPOSED_NAMES = (
    "smallmind_requests_total",
    "smallmind_requests_inflight",
    "smallmind_request_duration_ms",
    "smallmind_tokens_generated_total",
    "smallmind_prompt_tokens_total",
    "smallmind_prompt_tokens_cached_total",
    "smallmind_queue_depth",
    "smallmind_time_to_first_token_ms",
    "smallmind_active_batch_size",
    "smallmind_active_sequences",
    "smallmind_rejected_requests_total",
    "smallmind_timed_out_requests_total",
    "smallmind_model_ready",
)


def _non_negative(value: float) -> float:
    """Counters refuse negative increments and durations cannot be negative; clamp instead."""
    return value if value > 0 else 0


def _latency_ms(name: str, documentation: str, registry: CollectorRegistry) -> Histogram:
    """A latency histogram in milliseconds; every latency shares LATENCY_BUCKETS_MS."""
    return Histogram(name, documentation, buckets=LATENCY_BUCKETS_MS, registry=registry)


class ServerMetrics:
    """The server's metric objects, in a registry of their own, plus small recording methods.

    `request_finished` counts a request under its *route pattern* (``/v1/models/(.+)`` rather
    than ``/v1/models/gemma``), so label cardinality stays bounded; callers should pass a
    fixed name such as ``"unmatched"`` for requests that matched no route.  Rejections (429)
    and timeouts (504, or a stream cut short) are counted by the explicit `rejected` and
    `timed_out` calls, not inferred from the status: a streaming timeout happens after a 200
    has already been sent.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "smallmind_requests",
            "HTTP requests answered, by route and status.",
            ["endpoint", "status"],
            registry=reg,
        )
        self.inflight = Gauge("smallmind_requests_inflight", "HTTP requests being handled now.", registry=reg)
        self.request_duration_ms = _latency_ms(
            "smallmind_request_duration_ms", "Time from request start to the last byte, in ms.", reg
        )
        self.completion_tokens = Counter(
            "smallmind_tokens_generated", "Completion tokens generated.", registry=reg
        )
        self.prompt_tokens = Counter("smallmind_prompt_tokens", "Prompt tokens processed.", registry=reg)
        self.cached_prompt_tokens = Counter(
            "smallmind_prompt_tokens_cached",
            "Prompt tokens taken from the prefix cache instead of being computed.",
            registry=reg,
        )
        self.queue_depth = Gauge("smallmind_queue_depth", "Requests waiting for admission.", registry=reg)
        self.time_to_first_token_ms = _latency_ms(
            "smallmind_time_to_first_token_ms", "Time from request start to the first token, in ms.", reg
        )
        self.batch_size = Gauge(
            "smallmind_active_batch_size", "Sequences in the engine's last decoding step.", registry=reg
        )
        self.active_sequences = Gauge(
            "smallmind_active_sequences", "Sequences admitted to the engine.", registry=reg
        )
        self.rejections = Counter(
            "smallmind_rejected_requests", "Requests refused because the queue was full (429).", registry=reg
        )
        self.timeouts = Counter(
            "smallmind_timed_out_requests",
            "Requests that hit the request timeout (504 or a cut stream).",
            registry=reg,
        )
        self.model_ready = Gauge(
            "smallmind_model_ready", "1 when the model is loaded and serving.", registry=reg
        )

    # -- per request -------------------------------------------------------------------

    def request_started(self) -> None:
        self.inflight.inc()

    def request_finished(self, endpoint: str, status: int | str, duration_ms: float) -> None:
        """Count the request and its latency; pairs with one earlier `request_started`."""
        self.inflight.dec()
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.request_duration_ms.observe(_non_negative(duration_ms))

    def tokens(self, prompt: int, completion: int, cached: int = 0) -> None:
        self.prompt_tokens.inc(_non_negative(prompt))
        self.completion_tokens.inc(_non_negative(completion))
        self.cached_prompt_tokens.inc(_non_negative(cached))

    def first_token(self, ms: float) -> None:
        self.time_to_first_token_ms.observe(_non_negative(ms))

    def rejected(self) -> None:
        self.rejections.inc()

    def timed_out(self) -> None:
        self.timeouts.inc()

    # -- server and engine state ---------------------------------------------------------

    def set_queue_depth(self, n: int) -> None:
        self.queue_depth.set(n)

    def set_active_sequences(self, n: int) -> None:
        self.active_sequences.set(n)

    def set_batch_size(self, n: int) -> None:
        """Called from the engine thread; Gauge.set is thread-safe."""
        self.batch_size.set(n)

    def set_ready(self, ready: bool) -> None:
        self.model_ready.set(1 if ready else 0)

    # -- exposition -----------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus text format: (body, value for the Content-Type header)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
