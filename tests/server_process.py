"""Starting the real server (`python -m smallmind.server`) on a free port for end-to-end tests."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 60) -> tuple[int, dict, bytes]:
    """(status, headers, body) without raising on 4xx/5xx."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class ServerProcess:
    """The server as a child process; `url` once /readyz says ready."""

    def __init__(self, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"smallmind-server-{self.port}.log"
        self.log = open(self.log_path, "w+b")
        full_env = dict(os.environ, **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smallmind.server", "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=REPO, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                status, _, body = http("GET", self.url + "/readyz", timeout=5)
                if status == 200:
                    return self
                if json.loads(body).get("reason", "").startswith("loading the model failed"):
                    raise RuntimeError(f"server failed to load:\n{self.output()}")
            except (ConnectionError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class RawStream:
    """A streamed POST over http.client, read event by event; close() is a client leaving."""

    def __init__(self, base_url: str, path: str, body: dict, headers: dict | None = None):
        import http.client
        from urllib.parse import urlparse

        u = urlparse(base_url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        self.conn.request("POST", path, json.dumps(body).encode(),
                          {"Content-Type": "application/json", **(headers or {})})
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
