"""Operations, end to end on the real server and model: backpressure (429), timeouts in the
queue and mid-generation (both response shapes), client disconnects, metrics, API keys, CORS,
the access log, and the SIGTERM drain.

The time budgets are those of native kernels at the least; a slower server (forced scalar
kernels, a loaded machine) gets them in its own measured steps instead, so what is asserted
stays the same at any speed."""

from __future__ import annotations

import json
import signal
import threading
import time

import openai
import pytest

from conftest import default_model_path
from server_process import (
    DEFAULT_DRAIN_S,
    Pace,
    RawStream,
    ServerProcess,
    drain_fitting_tokens,
    http,
    measure_pace,
    metric,
)

pytestmark = pytest.mark.e2e  # every test starts its own server

# Counting keeps the default model going for hundreds of tokens without an end-of-turn.
LONG = {"prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 600, "temperature": 0, "stream": True}
JSON = {"Content-Type": "application/json"}


def start(*settings: str) -> ServerProcess:
    default_model_path()
    return ServerProcess("--ServerOptions:MaxContextTokens=1024", *settings).wait_ready()


def post(server, path, body, headers=JSON):
    t0 = time.perf_counter()
    status, hdrs, raw = http("POST", server.url + path, json.dumps(body).encode(), headers)
    return status, hdrs, json.loads(raw) if raw else None, time.perf_counter() - t0


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def engine_reacts_s(pace: Pace, native_s: float) -> float:
    """Until the engine has acted on a cancel or a freed slot: at its next step, which may be a
    prefill.  native_s on native kernels; a slower server gets four of its own steps."""
    return max(native_s, 4 * pace.first_token_s)


def short_request_s(pace: Pace, n_tokens: int, native_s: float) -> float:
    """A short request that waits for nothing: native_s, or twice its measured time."""
    return max(native_s, 2 * pace.request_s(n_tokens))


def request_limit_s(pace: Pace) -> float:
    """one_slot's RequestTimeoutMs: 4 s on native kernels; a slower server gets room for the
    same couple of dozen tokens, so a stream it cuts off was well into its generation."""
    return max(4.0, 2 * pace.request_s(12))


@pytest.fixture(scope="module")
def pace() -> Pace:
    """How fast a capacity-1 server runs LONG, measured on one started for that alone:
    one_slot's request limit follows from it and must be set before one_slot starts."""
    probe = start("--ServerOptions:MaxConcurrentRequests=1")
    try:
        measured = measure_pace(probe.url, LONG)
    finally:
        probe.stop()
    print(f"pace: first token {measured.first_token_s:.2f} s, then {measured.per_token_s:.3f} s/token")
    return measured


@pytest.fixture(scope="module")
def one_slot(pace):
    """Capacity 1, queue depth 1, requests limited to request_limit_s (4 s when native)."""
    limit_ms = round(request_limit_s(pace) * 1000)
    proc = start(
        "--ServerOptions:MaxConcurrentRequests=1",
        "--ServerOptions:MaxQueueDepth=1",
        f"--ServerOptions:RequestTimeoutMs={limit_ms}",
    )
    yield proc
    proc.stop()


def test_queue_full_is_429_at_once(one_slot, pace):
    running = RawStream(one_slot.url, "/v1/completions", LONG)
    assert running.status == 200 and running.event()  # generating
    queued = RawStream(one_slot.url, "/v1/completions", LONG)  # waits for the slot
    assert queued.status == 200
    assert wait_for(lambda: metric(one_slot.url, "smallmind_queue_depth") == 1)
    rejected_before = metric(one_slot.url, "smallmind_rejected_requests_total")
    status, headers, body, seconds = post(one_slot, "/v1/completions", {"prompt": "hi", "max_tokens": 2})
    assert status == 429 and seconds < 1.0
    assert body["error"]["type"] == "rate_limit_exceeded" and int(headers["Retry-After"]) >= 1
    assert metric(one_slot.url, "smallmind_rejected_requests_total") == rejected_before + 1
    running.close()
    queued.close()
    assert wait_for(
        lambda: (
            metric(one_slot.url, "smallmind_active_sequences") == 0
            and metric(one_slot.url, "smallmind_queue_depth") == 0
        ),
        timeout=engine_reacts_s(pace, 10),
    )


def test_timeouts_in_queue_and_mid_generation(one_slot, pace):
    timed_out_before = metric(one_slot.url, "smallmind_timed_out_requests_total")
    running = RawStream(one_slot.url, "/v1/completions", LONG)
    assert running.event()
    # in the queue, non-streamed: 504 while the slot is still taken
    status, _, body, seconds = post(
        one_slot, "/v1/completions", {"prompt": "hi", "max_tokens": 2, "timeout_ms": 600}
    )
    assert status == 504 and body["error"]["type"] == "timeout_error" and 0.5 < seconds < 2.5
    # in the queue, streamed: an error event, then the stream ends
    queued = RawStream(one_slot.url, "/v1/completions", dict(LONG, timeout_ms=600))
    events = queued.events()
    assert queued.status == 200 and len(events) == 1
    assert json.loads(events[0])["error"]["type"] == "timeout_error"
    # mid-generation, streamed: the long stream hits the server's limit
    rest = running.events()
    assert len(rest) > 5 and json.loads(rest[-1])["error"]["type"] == "timeout_error"
    assert "[DONE]" not in rest
    # mid-generation, not streamed: a limit of its own, past its first tokens
    own_limit_s = max(1.5, 2 * pace.request_s(4))
    status, _, body, seconds = post(
        one_slot, "/v1/completions", dict(LONG, stream=False, timeout_ms=round(own_limit_s * 1000))
    )
    assert status == 504 and body["error"]["type"] == "timeout_error"
    assert own_limit_s - 0.2 < seconds < own_limit_s + 2.5, seconds
    assert metric(one_slot.url, "smallmind_timed_out_requests_total") == timed_out_before + 4
    # every slot is free again
    status, _, body, seconds = post(one_slot, "/v1/completions", {"prompt": "hi", "max_tokens": 2})
    assert status == 200 and seconds < short_request_s(pace, 2, native_s=3.0)


def test_disconnect_frees_the_slot(one_slot, pace):
    stream = RawStream(one_slot.url, "/v1/completions", LONG)
    assert stream.event()
    queued = RawStream(one_slot.url, "/v1/completions", LONG)
    assert wait_for(lambda: metric(one_slot.url, "smallmind_queue_depth") == 1)
    queued.close()  # a queued client leaves: it never starts
    assert wait_for(lambda: metric(one_slot.url, "smallmind_queue_depth") == 0)
    assert metric(one_slot.url, "smallmind_active_sequences") == 1
    stream.close()  # the running client leaves: its slot is freed
    assert wait_for(
        lambda: metric(one_slot.url, "smallmind_active_sequences") == 0, timeout=engine_reacts_s(pace, 3)
    )
    status, _, body, seconds = post(one_slot, "/v1/completions", {"prompt": "hi", "max_tokens": 4})
    # started without waiting for anything (a held slot would hold it to the request limit)
    assert status == 200 and seconds < short_request_s(pace, 4, native_s=2.0), seconds


def test_metrics_move_with_requests(one_slot):
    labels = {"endpoint": "/v1/chat/completions", "status": "200"}
    before = {
        name: metric(one_slot.url, name, lab)
        for name, lab in (
            ("smallmind_requests_total", labels),
            ("smallmind_tokens_generated_total", None),
            ("smallmind_prompt_tokens_total", None),
            ("smallmind_time_to_first_token_ms_count", None),
            ("smallmind_request_duration_ms_count", None),
        )
    }
    status, _, body, _ = post(
        one_slot, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
    )
    assert status == 200
    usage = body["usage"]
    assert metric(one_slot.url, "smallmind_requests_total", labels) == before["smallmind_requests_total"] + 1
    assert (
        metric(one_slot.url, "smallmind_tokens_generated_total")
        == before["smallmind_tokens_generated_total"] + usage["completion_tokens"]
    )
    assert (
        metric(one_slot.url, "smallmind_prompt_tokens_total")
        == before["smallmind_prompt_tokens_total"] + usage["prompt_tokens"]
    )
    assert (
        metric(one_slot.url, "smallmind_time_to_first_token_ms_count")
        == before["smallmind_time_to_first_token_ms_count"] + 1
    )
    assert metric(one_slot.url, "smallmind_model_ready") == 1
    assert metric(one_slot.url, "smallmind_requests_inflight") == 1  # the /metrics request itself


def test_access_log_line_per_request(one_slot):
    status, headers, _, _ = post(
        one_slot,
        "/v1/completions",
        {"prompt": "hi", "max_tokens": 2},
        dict(JSON, **{"X-Request-Id": "trace-me-42"}),
    )
    assert status == 200 and headers["X-Request-Id"] == "trace-me-42"
    assert wait_for(lambda: "trace-me-42" in one_slot.output())
    line = next(ln for ln in one_slot.output().splitlines() if "trace-me-42" in ln)
    record = json.loads(line[line.index("{") :])
    assert record["route"] == "/v1/completions" and record["status"] == 200
    assert record["prompt_tokens"] > 0 and record["completion_tokens"] == 2 and record["duration_ms"] > 0


def test_api_key_and_cors():
    proc = start("--ServerOptions:ApiKey=key-one,key-two", "--ServerOptions:CorsOrigins=http://app.example")
    try:
        assert http("GET", proc.url + "/healthz")[0] == 200  # probes stay open
        assert http("GET", proc.url + "/readyz")[0] == 200
        status, headers, raw = http("GET", proc.url + "/v1/models")
        assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"
        assert http("GET", proc.url + "/metrics")[0] == 401
        assert http("GET", proc.url + "/v1/models", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert http("GET", proc.url + "/v1/models", headers={"Authorization": "Bearer key-two"})[0] == 200
        assert http("GET", proc.url + "/metrics", headers={"Authorization": "Bearer key-one"})[0] == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=proc.url + "/v1", api_key="nope", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=proc.url + "/v1", api_key="key-one", max_retries=0)
        assert ok.completions.create(model="x", prompt="Hi", max_tokens=2).choices[0].text is not None
        status, headers, _ = http(
            "OPTIONS",
            proc.url + "/v1/chat/completions",
            headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert status == 204 and headers["Access-Control-Allow-Origin"] == "http://app.example"
        _, headers, _ = http("GET", proc.url + "/healthz", headers={"Origin": "http://evil.example"})
        assert "Access-Control-Allow-Origin" not in headers
    finally:
        proc.stop()


def test_sigterm_drains_in_flight_streams():
    proc = start("--ServerOptions:MaxConcurrentRequests=2")
    try:
        body = dict(
            LONG, max_tokens=drain_fitting_tokens(measure_pace(proc.url, LONG, streams=2).per_token_s)
        )
        streams = [RawStream(proc.url, "/v1/completions", body) for _ in range(2)]
        for s in streams:
            assert s.event()
        results = [None, None]
        readers = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, streams[i].events())) for i in range(2)
        ]
        for r in readers:
            r.start()
        proc.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: http("GET", proc.url + "/readyz")[0] == 503, timeout=5)
        status, _, raw = http("POST", proc.url + "/v1/completions", b'{"prompt": "hi"}', JSON)
        assert status == 503 and json.loads(raw)["error"]["type"] == "service_unavailable"
        for r in readers:
            r.join(2 * DEFAULT_DRAIN_S)
        for events in results:
            assert events[-1] == "[DONE]"
            finals = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1]]
            assert finals[-1] in ("length", "stop")
        assert proc.proc.wait(30) == 0
    finally:
        proc.stop()


def test_loadtest_at_four_times_capacity_garbles_nothing():
    """scripts/loadtest.py against a 2-slot server: 429s are allowed, garbled streams are not."""
    import subprocess
    import sys

    from conftest import REPO

    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "loadtest.py"),
            "--start-server",
            "--server-arg=--ServerOptions:MaxConcurrentRequests=2",
            "--server-arg=--ServerOptions:MaxQueueDepth=2",
            "--server-arg=--ServerOptions:MaxContextTokens=512",
            "--requests",
            "12",
            "--max-tokens",
            "8",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    print(report)
    assert report["garbled"] == 0 and report["other_errors"] == 0
    assert report["completed"] >= 4 and report["completed"] + report["rejected_429"] == 12
