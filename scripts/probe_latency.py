#!/usr/bin/env python
"""How long /healthz takes to answer while one hostile or heavy request is being processed.

    python scripts/probe_latency.py --url http://127.0.0.1:8080
    python scripts/probe_latency.py --start-server [--server-arg=--ServerOptions:MaxSchemaBytes=65536]

For each case (the requests of issue 16, items 1, 3 and 8) one thread sends the request
while another GETs /healthz every 50 ms on a fresh connection; the table gives the
request's status and time and the probes' p50 / p99 / max in milliseconds.  The event loop
keeps up when every probe answers in well under 100 ms.

Exit status 0 when every case got its expected status and every probe answered within
--bound-ms (default 100).  The probes use only the standard library, so they run against any
server; --start-server starts this checkout's through smallmind's launcher.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
if not __package__:
    # Run as a file: this checkout's launcher, as the server it starts is this checkout's.
    sys.path.insert(0, str(REPO))

from smallmind.server.launcher import ServerProcess, ServerStartError  # noqa: E402

PROBE_INTERVAL_S = 0.05
MIN_PROBES = 3


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: bytes  # sent as is, so lone surrogates travel as JSON escapes
    expected_status: int


@dataclass(frozen=True)
class Result:
    case: Case
    status: int
    seconds: float
    probes_ms: list[float]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.probes_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _json(body: dict) -> bytes:
    return json.dumps(body).encode()  # ensure_ascii: "\ud800" stays an escape


def _chat(content="Hi", **fields) -> bytes:
    return _json({"messages": [{"role": "user", "content": content}], "max_tokens": 2, **fields})


def _schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def _int_properties(n: int, prefix: str = "p") -> dict:
    return {"type": "object", "properties": {f"{prefix}{i}": {"type": "integer"} for i in range(n)}}


def _nested(levels: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def cases() -> list[Case]:
    tool_call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    return [
        # item 1: work that grows with the request
        Case(
            "schema 3,000 properties",
            "/v1/chat/completions",
            _chat(response_format=_schema_format(_int_properties(3000))),
            400,
        ),
        Case(
            "schema 450 properties (compiled)",
            "/v1/chat/completions",
            _chat(response_format=_schema_format(_int_properties(450, "q"))),
            200,
        ),
        Case("/tokenize 8 MB", "/tokenize", _json({"content": "x" * 8_000_000}), 400),
        Case("/tokenize 256 KB", "/tokenize", _json({"content": "x" * 250_000}), 200),
        Case("chat content 2 MB", "/v1/chat/completions", _chat("x" * 2_000_000), 400),
        Case(
            "completion prompt 150 KB",
            "/v1/completions",
            _json({"prompt": "x" * 150_000, "max_tokens": 2}),
            400,
        ),
        Case(
            "chat top_logprobs 20, n 4",
            "/v1/chat/completions",
            _chat("Count to ten.", max_tokens=32, n=4, logprobs=True, top_logprobs=20),
            200,
        ),
        Case(
            "embeddings 256 inputs",
            "/v1/embeddings",
            _json({"input": [f"sentence number {i}" for i in range(256)]}),
            200,
        ),
        # item 3: formerly 500
        Case(
            "lone surrogate, echoed",
            "/v1/completions",
            _json({"prompt": "a\ud800b", "echo": True, "max_tokens": 2}),
            400,
        ),
        Case("lone surrogate, streamed", "/v1/chat/completions", _chat("a\ud800b", stream=True), 400),
        Case(
            "lone surrogate in schema enum",
            "/v1/chat/completions",
            _chat(response_format=_schema_format({"enum": ["a\ud800b"]})),
            400,
        ),
        Case(
            "lone surrogate in schema const",
            "/v1/chat/completions",
            _chat(response_format=_schema_format({"const": "a\ud800b"})),
            400,
        ),
        Case(
            "logit_bias key of 4,301 digits", "/v1/chat/completions", _chat(logit_bias={"1" * 4301: 1}), 400
        ),
        Case(
            "repetition_penalty 1e400 (int)",
            "/v1/chat/completions",
            b'{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2,"repetition_penalty":1'
            + b"0" * 400
            + b"}",
            400,
        ),
        Case(
            "schema nested 200 levels",
            "/v1/chat/completions",
            _chat(response_format=_schema_format(_nested(200))),
            400,
        ),
        # item 8: formerly accepted
        Case(
            "tool message without tool_call_id",
            "/v1/chat/completions",
            _json(
                {
                    "messages": [
                        {"role": "user", "content": "Hi"},
                        {"role": "assistant", "tool_calls": [tool_call]},
                        {"role": "tool", "content": "42"},
                    ],
                    "max_tokens": 2,
                }
            ),
            400,
        ),
        Case(
            "tool_calls entry without function",
            "/v1/chat/completions",
            _json(
                {
                    "messages": [
                        {"role": "user", "content": "Hi"},
                        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function"}]},
                        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
                    ],
                    "max_tokens": 2,
                }
            ),
            400,
        ),
        *[
            Case(
                f"encoding_format {json.dumps(v)}",
                "/v1/embeddings",
                _json({"input": "hi", "encoding_format": v}),
                400,
            )
            for v in (0, False, [], {})
        ],
        Case("user 5", "/v1/chat/completions", _chat(user=5), 400),
        Case("suffix 5", "/v1/completions", _json({"prompt": "Hi", "max_tokens": 2, "suffix": 5}), 400),
        Case("best_of 'x'", "/v1/completions", _json({"prompt": "Hi", "max_tokens": 2, "best_of": "x"}), 400),
        Case("parallel_tool_calls 'yes'", "/v1/chat/completions", _chat(parallel_tool_calls="yes"), 400),
        Case(
            "seed 10^4000",
            "/v1/chat/completions",
            b'{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2,"seed":1' + b"0" * 4000 + b"}",
            400,
        ),
        Case(
            "seed -10^4000",
            "/v1/chat/completions",
            b'{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2,"seed":-1' + b"0" * 4000 + b"}",
            400,
        ),
        Case("lone surrogate in embeddings input", "/v1/embeddings", _json({"input": "a\ud800b"}), 400),
    ]


def _request(url: str, method: str, path: str, body: bytes | None, timeout: float) -> int:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def run_case(url: str, case: Case, timeout: float = 300) -> Result:
    """Sends the case's request while probing /healthz every 50 ms (at least MIN_PROBES)."""

    def send() -> int:
        try:
            return _request(url, "POST", case.path, case.body, timeout)
        except (OSError, http.client.HTTPException):
            return 0

    return _while_probing(url, case, send, timeout)


def run_command(url: str, command: str, timeout: float = 1800) -> Result:
    """Runs a shell command against the server ({url} replaced by its address; e.g. a
    schemathesis run) while probing /healthz; the row's status is the command's exit code."""

    def send() -> int:
        return subprocess.run(
            command.replace("{url}", url),
            shell=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        ).returncode

    return _while_probing(url, Case(f"command: {command}", "", b"", 0), send, timeout)


def _while_probing(url: str, case: Case, send, timeout: float) -> Result:
    outcome: dict = {}

    def timed_send() -> None:
        start = time.perf_counter()
        outcome["status"] = send()
        outcome["seconds"] = time.perf_counter() - start

    sender = threading.Thread(target=timed_send)
    sender.start()
    probes: list[float] = []
    while sender.is_alive() or len(probes) < MIN_PROBES:
        start = time.perf_counter()
        try:
            ok = _request(url, "GET", "/healthz", None, timeout) == 200
        except (OSError, http.client.HTTPException):
            ok = False
        elapsed = time.perf_counter() - start
        probes.append(elapsed * 1000 if ok else float("inf"))
        time.sleep(max(0.0, PROBE_INTERVAL_S - elapsed))
    sender.join()
    return Result(case, outcome["status"], outcome["seconds"], probes)


def table(results: list[Result]) -> str:
    lines = [
        f"{'case':40} {'status':>6} {'want':>4} {'req s':>7} {'probes':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
    ]
    for r in results:
        lines.append(
            f"{r.case.name[:40]:40} {r.status:>6} {r.case.expected_status:>4} {r.seconds:>7.2f} "
            f"{len(r.probes_ms):>6} {r.percentile(0.5):>7.1f} {r.percentile(0.99):>7.1f} "
            f"{max(r.probes_ms):>7.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start one with --start-server)")
    parser.add_argument(
        "--start-server", action="store_true", help="start python -m smallmind.server on a free port"
    )
    parser.add_argument(
        "--server-arg", action="append", default=[], help="an argument for the started server"
    )
    parser.add_argument("--bound-ms", type=float, default=100.0, help="the slowest probe allowed")
    parser.add_argument("--only", help="run only the cases whose name contains this text")
    parser.add_argument(
        "--during",
        metavar="COMMAND",
        help="instead of the cases, probe while this shell command runs ({url}: the "
        "server's address), e.g. a schemathesis run",
    )
    args = parser.parse_args(argv)
    if bool(args.url) == args.start_server:
        parser.error("give exactly one of --url and --start-server")
    server = None
    url = args.url
    if args.start_server:
        server = ServerProcess(*args.server_arg, cwd=REPO, log_prefix="probe-latency-")
        try:
            url = server.wait_ready(timeout=300).url
        except ServerStartError as e:
            server.stop()
            raise SystemExit(f"the server did not become ready: {e}") from None
    try:
        if args.during:
            results = [run_command(url, args.during)]
        else:
            results = [run_case(url, case) for case in cases() if not args.only or args.only in case.name]
    finally:
        if server is not None:
            server.stop()
            server.remove_log()
    print(table(results))
    bad = [r for r in results if r.status != r.case.expected_status or max(r.probes_ms) >= args.bound_ms]
    for r in bad:
        print(
            f"FAILED: {r.case.name}: status {r.status} (want {r.case.expected_status}), "
            f"slowest probe {max(r.probes_ms):.1f} ms",
            file=sys.stderr,
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
