"""End-to-end test helpers: the real server (`python -m smallmind.server`, started by
smallmind/server/launcher.py) from this checkout, and HTTP, SSE and /metrics helpers."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from smallmind.server import launcher

REPO = Path(__file__).resolve().parent.parent


class ServerProcess(launcher.ServerProcess):
    """The launcher's server, started from the checkout that holds tests/: `-m` imports the
    smallmind/ there (or, in the wheel check's copy without one, the installed wheel)."""

    def __init__(self, *args: str, **kwargs):
        super().__init__(*args, cwd=REPO, **kwargs)


def running_server(*args: str, **kwargs):
    """A ServerProcess started with ``args``, ready; stopped when the block ends."""
    return launcher.running_server(*args, cwd=REPO, **kwargs)


def start_and_expect_exit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs the server with ``args`` on a free port; it must end by itself (for settings or
    models it refuses): one still running after ``timeout`` seconds fails the test."""
    port = str(launcher.free_port())
    command = [a.replace("{port}", port) for a in launcher.smallmind_command(*args)]
    try:
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server was still running after {timeout} s: {args}")


def http(
    method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 60
) -> tuple[int, dict, bytes]:
    """(status, headers, body) without raising on 4xx/5xx."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class RawStream:
    """A streamed POST over http.client, read event by event; close() is a client leaving."""

    def __init__(self, base_url: str, path: str, body: dict, headers: dict | None = None):
        import http.client
        from urllib.parse import urlparse

        u = urlparse(base_url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        self.conn.request(
            "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
        )
        self.response = self.conn.getresponse()
        self.status = self.response.status

    def event(self) -> str | None:
        """The next `data:` payload, or None at the end of the stream."""
        while True:
            line = self.response.readline()
            if not line:
                return None
            line = line.strip()
            if line.startswith(b"data: "):
                return line[6:].decode()

    def events(self) -> list[str]:
        out = []
        while (e := self.event()) is not None:
            out.append(e)
        return out

    def close(self) -> None:
        self.conn.close()


def metric(base_url: str, name: str, labels: dict | None = None, headers: dict | None = None) -> float:
    """One sample's value from /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    _, _, body = http("GET", base_url + "/metrics", headers=headers)
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return sample.value
    return 0.0


@dataclass(frozen=True)
class Pace:
    """How fast a server generates, measured on it.  End-to-end time budgets follow this
    rather than assume native kernels: forced scalar ones are ~5x slower per token and ~30x
    slower in prefill, and a loaded machine slows either down several times more."""

    first_token_s: float  # request sent -> first token on an idle slot: prefill and one step
    per_token_s: float  # each further token of a running stream

    def request_s(self, n_tokens: int) -> float:
        """A whole request of n_tokens at this pace."""
        return self.first_token_s + (n_tokens - 1) * self.per_token_s


def timed_stream(base_url: str, body: dict) -> tuple[float, list[float]]:
    """(seconds to the first token, arrival times of the token events) of one streamed
    completion; every event of a completion stream carries one step's token."""
    sent = time.perf_counter()
    stream = RawStream(base_url, "/v1/completions", dict(body, stream=True))
    arrivals = []
    while (event := stream.event()) not in (None, "[DONE]"):
        assert "error" not in json.loads(event), event
        arrivals.append(time.perf_counter())
    stream.close()
    return arrivals[0] - sent, arrivals


def measure_pace(base_url: str, body: dict, n_tokens: int = 16, streams: int = 1) -> Pace:
    """Pace of `streams` concurrent greedy streams of body's prompt (the slowest of them):
    a sequence's time per token grows with the batch it shares the CPU with."""
    results: list = []
    request = dict(body, max_tokens=n_tokens, temperature=0)
    workers = [
        threading.Thread(target=lambda: results.append(timed_stream(base_url, request)))
        for _ in range(streams)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(results) == streams, "a pace measurement stream failed (see above)"
    assert all(len(arrivals) > 1 for _, arrivals in results), f"{body} ended at once"
    per_token = [(arrivals[-1] - arrivals[0]) / (len(arrivals) - 1) for _, arrivals in results]
    return Pace(first_token_s=max(first for first, _ in results), per_token_s=max(per_token))


DEFAULT_DRAIN_S = 30.0  # DrainTimeoutMs when not set


def drain_fitting_tokens(per_token_s: float, native_tokens: int = 48) -> int:
    """max_tokens for streams a SIGTERM drain must let finish: native_tokens on native kernels,
    fewer on a slower server, so that they take at most a third of the default drain timeout
    (yet still run several steps past the signal)."""
    return max(8, min(native_tokens, int(DEFAULT_DRAIN_S / 3 / per_token_s)))
