"""Scale-out behind a real load balancer: nginx (docker/nginx-smallmind.conf) in front of two
server processes.  Streams spread over both; SIGTERM to one makes it drain while nginx keeps
serving through the other; no request is lost.  The in-flight streams' length follows the
pace measured on the first streams, so that the drain can finish them at any kernel speed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

from conftest import REPO, default_model_path
from server_process import RawStream, ServerProcess, drain_fitting_tokens, http, metric
from smallmind.server.launcher import free_port

pytestmark = pytest.mark.e2e  # two servers behind nginx

SNIPPET = REPO / "docker" / "nginx-smallmind.conf"
SERVED = {"endpoint": "/v1/completions", "status": "200"}


def nginx_config(prefix, listen: int, upstreams: list[int]) -> str:
    snippet = SNIPPET.read_text()
    servers = iter(upstreams)
    snippet = re.sub(r"server 127\.0\.0\.1:\d+", lambda m: f"server 127.0.0.1:{next(servers)}", snippet)
    snippet = snippet.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{listen};")
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 1;\ndaemon off;\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\nevents {{ worker_connections 512; }}\n"
        f"http {{\n    access_log {prefix}/access.log;\n{temp}\n{snippet}\n}}\n"
    )


@pytest.fixture()
def nginx_binary():
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if path is None:
        pytest.fail("nginx is not installed (scripts/test.sh installs the Debian package)")
    return path


def stream_through(url: str, max_tokens: int, results: list, started: threading.Event | None = None):
    """Appends (status, events, seconds per token after the first) of one stream."""
    body = {"prompt": "1, 2, 3, 4, 5,", "max_tokens": max_tokens, "temperature": 0, "stream": True}
    try:
        s = RawStream(url, "/v1/completions", body)
        first = s.event()
        first_at = time.perf_counter()
        if started is not None:
            started.set()
        events = [first] + s.events() if first is not None else []
        # events: one per token, then [DONE]
        per_token_s = (time.perf_counter() - first_at) / max(len(events) - 2, 1)
        results.append((s.status, events, per_token_s))
    except Exception as e:  # recorded, asserted below: a lost request
        results.append((None, [repr(e)], None))


def run_streams(url: str, n: int, max_tokens: int) -> list:
    results: list = []
    threads = [threading.Thread(target=stream_through, args=(url, max_tokens, results)) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


def complete(result) -> bool:
    status, events, _ = result
    if status != 200 or not events or events[-1] != "[DONE]":
        return False
    last = json.loads(events[-2])["choices"][0]
    return last["finish_reason"] in ("stop", "length")


def test_replicas_behind_nginx_drain_without_losing_requests(tmp_path, nginx_binary):
    default_model_path()
    settings = ("--ServerOptions:MaxConcurrentRequests=2", "--ServerOptions:MaxContextTokens=512")
    replicas = [ServerProcess(*settings), ServerProcess(*settings)]
    nginx = None
    try:
        for r in replicas:
            r.wait_ready()
        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(nginx_config(tmp_path, port, [r.port for r in replicas]))
        nginx = subprocess.Popen(
            [nginx_binary, "-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if http("GET", url + "/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        # 1. streams spread over both replicas
        results = run_streams(url, 6, 12)
        assert all(complete(r) for r in results), results
        served = [metric(r.url, "smallmind_requests_total", SERVED) for r in replicas]
        assert sum(served) == 6 and min(served) >= 1, served
        # those ran as the in-flight ones below will: two per replica, both replicas busy
        in_flight_tokens = drain_fitting_tokens(max(per_token_s for _, _, per_token_s in results))

        # 2. SIGTERM one replica while streams run; keep sending through nginx
        draining, survivor = replicas
        in_flight: list = []
        started = [threading.Event() for _ in range(4)]
        threads = [
            threading.Thread(target=stream_through, args=(url, in_flight_tokens, in_flight, ev))
            for ev in started
        ]
        for t in threads:
            t.start()
        for ev in started:
            assert ev.wait(120)
        draining_before = metric(draining.url, "smallmind_requests_inflight")
        draining.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while http("GET", draining.url + "/readyz")[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http("GET", draining.url + "/readyz")[0] == 503
        later = run_streams(url, 6, 12)
        for t in threads:
            t.join(300)
        assert draining.proc.wait(60) == 0
        assert all(complete(r) for r in in_flight), in_flight
        assert all(complete(r) for r in later), later
        assert len(in_flight) == 4 and len(later) == 6
        assert draining_before >= 2  # it had streams of its own to finish (+ /metrics)
        assert http("GET", url + "/healthz")[0] == 200
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        for r in replicas:
            r.stop()
