"""ServerMetrics: exposed names, per-instance registries, and values that follow the calls."""

import re
import threading

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from smallmind.server.metrics import EXPOSED_NAMES, ServerMetrics
from tests.conftest import REPO


def scrape(metrics: ServerMetrics) -> dict[str, dict[tuple, float]]:
    """sample name -> {sorted label items -> value}, from the rendered text as a scraper sees it."""
    body, _ = metrics.render()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(metrics: ServerMetrics, name: str, **labels: str) -> float:
    return scrape(metrics)[name][tuple(sorted(labels.items()))]


def test_render_returns_prometheus_text_and_content_type():
    body, content_type = ServerMetrics().render()
    assert isinstance(body, bytes)
    assert content_type == CONTENT_TYPE_LATEST
    assert content_type.startswith("text/plain")  # the text exposition format, not protobuf


def test_every_metric_is_exposed_under_its_exact_name():
    metrics = ServerMetrics()
    # A labelled counter has no series until it is first used.
    metrics.request_finished("/v1/chat/completions", 200, 5.0)
    samples = scrape(metrics)
    for name in EXPOSED_NAMES:
        histogram_count = name + "_count"
        assert name in samples or histogram_count in samples, name


def test_exposed_names_are_the_ones_the_readme_documents():
    """The README's Metrics paragraph is the specification a scraper's author reads: the code's
    list and it name the same series."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    paragraph = readme.split("- **Metrics.**", 1)[1].split("\n- **", 1)[0]
    assert set(EXPOSED_NAMES) == set(re.findall(r"smallmind_[a-z_]+", paragraph))


def test_metric_types_are_as_declared():
    metrics = ServerMetrics()
    body, _ = metrics.render()
    types = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    # The parser strips `_total` from counter family names.
    assert types["smallmind_requests"] == "counter"
    assert types["smallmind_requests_inflight"] == "gauge"
    assert types["smallmind_request_duration_ms"] == "histogram"
    assert types["smallmind_time_to_first_token_ms"] == "histogram"
    assert types["smallmind_tokens_generated"] == "counter"
    assert types["smallmind_model_ready"] == "gauge"


def test_a_finished_request_is_counted_by_endpoint_and_status():
    metrics = ServerMetrics()
    metrics.request_started()
    assert value(metrics, "smallmind_requests_inflight") == 1
    metrics.request_finished("/v1/chat/completions", 200, 42.0)
    assert value(metrics, "smallmind_requests_total", endpoint="/v1/chat/completions", status="200") == 1
    assert value(metrics, "smallmind_requests_inflight") == 0
    assert value(metrics, "smallmind_request_duration_ms_count") == 1
    assert value(metrics, "smallmind_request_duration_ms_sum") == 42.0
    assert value(metrics, "smallmind_request_duration_ms_bucket", le="50.0") == 1
    assert value(metrics, "smallmind_request_duration_ms_bucket", le="25.0") == 0


def test_statuses_and_endpoints_are_separate_series():
    metrics = ServerMetrics()
    for endpoint, status in [
        ("/v1/completions", 200),
        ("/v1/completions", "400"),
        ("/v1/completions", 200),
        ("/v1/embeddings", 200),
    ]:
        metrics.request_started()
        metrics.request_finished(endpoint, status, 1.0)
    assert value(metrics, "smallmind_requests_total", endpoint="/v1/completions", status="200") == 2
    assert value(metrics, "smallmind_requests_total", endpoint="/v1/completions", status="400") == 1
    assert value(metrics, "smallmind_requests_total", endpoint="/v1/embeddings", status="200") == 1


def test_histogram_buckets_span_one_millisecond_to_five_minutes():
    metrics = ServerMetrics()
    buckets = scrape(metrics)["smallmind_request_duration_ms_bucket"]
    bounds = {dict(labels)["le"] for labels in buckets}
    assert "1.0" in bounds and "300000.0" in bounds and "+Inf" in bounds


def test_token_counters_accumulate():
    metrics = ServerMetrics()
    metrics.tokens(prompt=12, completion=30)
    metrics.tokens(prompt=3, completion=0, cached=2)
    assert value(metrics, "smallmind_prompt_tokens_total") == 15
    assert value(metrics, "smallmind_tokens_generated_total") == 30
    assert value(metrics, "smallmind_prompt_tokens_cached_total") == 2


def test_negative_inputs_are_clamped_rather_than_raising():
    metrics = ServerMetrics()
    metrics.tokens(prompt=-1, completion=-5)
    metrics.first_token(-2.0)
    assert value(metrics, "smallmind_prompt_tokens_total") == 0
    assert value(metrics, "smallmind_time_to_first_token_ms_sum") == 0


def test_time_to_first_token_is_observed():
    metrics = ServerMetrics()
    metrics.first_token(120.0)
    assert value(metrics, "smallmind_time_to_first_token_ms_count") == 1
    assert value(metrics, "smallmind_time_to_first_token_ms_sum") == 120.0


def test_gauges_take_the_last_value():
    metrics = ServerMetrics()
    metrics.set_queue_depth(3)
    metrics.set_active_sequences(4)
    metrics.set_batch_size(2)
    metrics.set_queue_depth(1)
    assert value(metrics, "smallmind_queue_depth") == 1
    assert value(metrics, "smallmind_active_sequences") == 4
    assert value(metrics, "smallmind_active_batch_size") == 2


def test_batch_size_can_be_set_from_another_thread():
    metrics = ServerMetrics()
    worker = threading.Thread(target=metrics.set_batch_size, args=(7,))
    worker.start()
    worker.join()
    assert value(metrics, "smallmind_active_batch_size") == 7


def test_rejections_and_timeouts_are_counted():
    metrics = ServerMetrics()
    metrics.rejected()
    metrics.rejected()
    metrics.timed_out()
    assert value(metrics, "smallmind_rejected_requests_total") == 2
    assert value(metrics, "smallmind_timed_out_requests_total") == 1


def test_model_ready_flips_between_zero_and_one():
    metrics = ServerMetrics()
    assert value(metrics, "smallmind_model_ready") == 0
    metrics.set_ready(True)
    assert value(metrics, "smallmind_model_ready") == 1
    metrics.set_ready(False)
    assert value(metrics, "smallmind_model_ready") == 0


def test_instances_have_independent_registries():
    first, second = ServerMetrics(), ServerMetrics()  # would raise on a shared registry
    first.rejected()
    assert value(first, "smallmind_rejected_requests_total") == 1
    assert value(second, "smallmind_rejected_requests_total") == 0
    assert first.registry is not second.registry
