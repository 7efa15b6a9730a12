#!/usr/bin/env python
"""Load test for the smallmind server: N concurrent streamed chat completions, each classified.

    python scripts/loadtest.py --url http://127.0.0.1:8080 --requests 32
    python scripts/loadtest.py --start-server --server-arg=--ServerOptions:MaxConcurrentRequests=2 \
        --server-arg=--ServerOptions:MaxQueueDepth=4 --requests 16 --concurrency 8 --json

By default it runs at 4x the server's capacity (capabilities.max_concurrent_requests from
GET /readyz), so some 429s are expected and allowed.  Every request ends up in exactly one
bucket:

  completed     200, a well-formed chat.completion.chunk stream ending in finish_reason + [DONE]
  rejected_429  429 with an OpenAI-style error body and a Retry-After header
  other_errors  any other status, a 429 without Retry-After, connection errors, timeouts
  garbled       200 but the stream breaks the protocol (bad event, no [DONE], U+FFFD, ...)

Exit status 0 only when garbled == 0 and other_errors == 0; 2 for refused usage.

Only the standard library (and smallmind's launcher for --start-server): HTTP/1.1 is spoken
over raw asyncio streams, so what the server actually put on the wire (chunk boundaries, stray
bytes) is what gets checked.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
if not __package__:
    # Run as a file: this checkout's launcher, as the server it starts is this checkout's.
    sys.path.insert(0, str(REPO))

from smallmind.server.launcher import ServerProcess, ServerStartError  # noqa: E402

FALLBACK_CONCURRENCY = 16
CAPACITY_FACTOR = 4
MAX_SAMPLES = 5
PROMPT = "Write a short poem about the sea."

COMPLETED, REJECTED, OTHER, GARBLED = "completed", "rejected_429", "other_errors", "garbled"


# ---------------------------------------------------------------------------------------------
# Wire level: chunked transfer decoding and SSE framing, both fed arbitrary read boundaries.


class ProtocolError(Exception):
    """The bytes on the wire do not follow HTTP/1.1 or SSE framing."""


class ChunkedDecoder:
    """Incremental HTTP/1.1 chunked transfer decoding: feed() raw bytes, get payload bytes."""

    def __init__(self) -> None:
        self._buf = b""
        self._remaining = 0  # payload bytes still owed by the current chunk
        self._need_crlf = False  # the CRLF after a chunk's payload is still to come
        self.finished = False  # the zero-size chunk (and its trailer) has been seen

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = bytearray()
        while not self.finished:
            if self._remaining:
                take = self._buf[: self._remaining]
                out += take
                self._buf = self._buf[len(take) :]
                self._remaining -= len(take)
                if self._remaining:
                    break
                self._need_crlf = True
            if self._need_crlf:
                if len(self._buf) < 2:
                    break
                if self._buf[:2] != b"\r\n":
                    raise ProtocolError("chunk payload not followed by CRLF")
                self._buf, self._need_crlf = self._buf[2:], False
            line_end = self._buf.find(b"\r\n")
            if line_end < 0:
                break
            size_text = self._buf[:line_end].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {self._buf[:line_end][:40]!r}") from None
            self._buf = self._buf[line_end + 2 :]
            if size == 0:
                # Trailers are not expected from this server; the final CRLF may still be in
                # flight, and nothing after it matters since we asked for Connection: close.
                self.finished = True
            self._remaining = size
        return bytes(out)


class SSEParser:
    """Splits a byte stream into SSE events (the joined `data:` lines of each event).

    Lines are split on bytes first and decoded per complete line, so a multi-byte UTF-8
    character cut by a read boundary is never mistaken for invalid text.  Anything that is
    not SSE (a line without a known field, invalid UTF-8) is reported as a ProtocolError."""

    _FIELDS = ("data", "event", "id", "retry")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        events = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                return events
            raw, self._buf = self._buf[:nl], self._buf[nl + 1 :]
            event = self._line(raw.rstrip(b"\r"))
            if event is not None:
                events.append(event)

    def close(self) -> list[str]:
        """Whatever is left at end of stream; an unterminated event is a protocol error."""
        if self._buf.strip() or self._data:
            raise ProtocolError("stream ended in the middle of an event")
        return []

    def _line(self, raw: bytes) -> str | None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"invalid UTF-8 in line {raw[:60]!r}") from None
        if line == "":
            if not self._data:
                return None  # stray blank lines between events are harmless
            event, self._data = "\n".join(self._data), []
            return event
        if line.startswith(":"):
            return None  # SSE comment (keep-alive)
        name, _, value = line.partition(":")
        if name not in self._FIELDS:
            raise ProtocolError(f"not an SSE line: {line[:60]!r}")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


# ---------------------------------------------------------------------------------------------
# Semantics: does the sequence of events form one valid streamed chat completion?


@dataclass
class StreamCheck:
    """Checks the events of one streamed chat completion (n=1) as they arrive."""

    content_chunks: int = 0
    text: str = ""
    finish_reason: str | None = None
    done: bool = False
    problem: str | None = None  # the first protocol violation, if any
    first_content_at: float | None = None
    _stream_id: str | None = None

    def event(self, data: str, now: float) -> None:
        if self.problem is None:
            try:
                self._check(data, now)
            except ProtocolError as e:
                self.problem = str(e)

    def end(self) -> None:
        """The connection ended: a stream without its terminators is garbled."""
        if self.problem is None:
            if self.finish_reason is None:
                self.problem = "stream ended without a finish_reason"
            elif not self.done:
                self.problem = "stream ended without data: [DONE]"

    def _check(self, data: str, now: float) -> None:
        if self.done:
            raise ProtocolError("event after data: [DONE]")
        if data == "[DONE]":
            if self.finish_reason is None:
                raise ProtocolError("data: [DONE] before any finish_reason")
            self.done = True
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ProtocolError(f"event is not JSON: {data[:60]!r}") from None
        if not isinstance(chunk, dict):
            raise ProtocolError("event is not a JSON object")
        if "error" in chunk:
            raise ProtocolError(f"error event in a 200 stream: {json.dumps(chunk['error'])[:200]}")
        self._check_envelope(chunk)
        choices = chunk["choices"]
        if not choices:
            # A usage-only chunk (stream_options.include_usage) may follow the finish.
            if not isinstance(chunk.get("usage"), dict):
                raise ProtocolError("chunk with no choices and no usage")
            return
        if len(choices) != 1:
            raise ProtocolError(f"chunk with {len(choices)} choices, expected 1")
        self._check_choice(choices[0], now)

    def _check_envelope(self, chunk: dict) -> None:
        if chunk.get("object") != "chat.completion.chunk":
            raise ProtocolError(f"object is {chunk.get('object')!r}, not chat.completion.chunk")
        for key, kind in (("id", str), ("created", int), ("model", str), ("choices", list)):
            if not isinstance(chunk.get(key), kind):
                raise ProtocolError(f"chunk field {key!r} missing or not {kind.__name__}")
        # Every chunk of one completion carries the same id; a change means streams mixed.
        if self._stream_id is None:
            self._stream_id = chunk["id"]
        elif chunk["id"] != self._stream_id:
            raise ProtocolError(f"chunk id changed from {self._stream_id!r} to {chunk['id']!r}")

    def _check_choice(self, choice: dict, now: float) -> None:
        if not isinstance(choice, dict) or choice.get("index") != 0:
            raise ProtocolError(f"bad choice {str(choice)[:80]}")
        if self.finish_reason is not None:
            raise ProtocolError("choice chunk after the finish_reason")
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            raise ProtocolError("choice without a delta object")
        content = delta.get("content")
        if content is not None:
            self._check_text(content)
            if content:
                self.content_chunks += 1
                self.text += content
                if self.first_content_at is None:
                    self.first_content_at = now
        reason = choice.get("finish_reason")
        if reason is not None:
            if reason not in ("stop", "length"):
                raise ProtocolError(f"finish_reason {reason!r} not stop/length")
            self.finish_reason = reason

    @staticmethod
    def _check_text(content) -> None:
        if not isinstance(content, str):
            raise ProtocolError(f"delta content is {type(content).__name__}, not a string")
        if "\ufffd" in content:
            raise ProtocolError(f"U+FFFD in content {content[:40]!r} (a token split mid-character?)")
        try:
            content.encode("utf-8")  # a lone surrogate from a \ud8xx escape cannot encode
        except UnicodeEncodeError:
            raise ProtocolError(f"content is not valid text: {content[:40]!r}") from None


# ---------------------------------------------------------------------------------------------
# One request over raw asyncio streams.


@dataclass
class Outcome:
    kind: str
    status: int | None = None
    detail: str = ""
    content_chunks: int = 0
    ttft_s: float | None = None
    elapsed_s: float = 0.0


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    # Connection: close keeps framing simple: one request per connection, EOF ends it.
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def read_head(reader: asyncio.StreamReader) -> HttpResponse:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return HttpResponse(int(parts[1]), headers)


async def iter_body(reader: asyncio.StreamReader, headers: dict[str, str]):
    """Yields body payload bytes as they arrive, undoing chunked transfer encoding."""
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    decoder = ChunkedDecoder() if chunked else None
    left = int(headers["content-length"]) if "content-length" in headers and not chunked else None
    while left is None or left > 0:
        data = await reader.read(65536)
        if not data:
            if decoder is not None and not decoder.finished:
                raise ProtocolError("connection closed before the last chunk")
            if left:
                raise ProtocolError(f"connection closed {left} bytes short of Content-Length")
            return
        if left is not None:
            left -= len(data)
        payload = decoder.feed(data) if decoder else data
        if payload:
            yield payload
        if decoder is not None and decoder.finished:
            return


async def read_all(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    parts = [p async for p in iter_body(reader, headers)]
    return b"".join(parts)


def classify_rejection(response: HttpResponse, body: bytes) -> Outcome:
    """429: allowed backpressure only when it is a proper OpenAI error with Retry-After."""
    try:
        error = json.loads(body)["error"]
        assert isinstance(error, dict) and isinstance(error.get("message"), str)
    except (ValueError, KeyError, TypeError, AssertionError):
        return Outcome(OTHER, 429, f"429 without an OpenAI error body: {body[:120]!r}")
    retry_after = response.headers.get("retry-after")
    if retry_after is None:
        return Outcome(
            OTHER, 429, f"429 without a Retry-After header (error: {error.get('message', '')[:80]})"
        )
    if not retry_after.isdigit():
        return Outcome(OTHER, 429, f"429 with a malformed Retry-After {retry_after!r}")
    return Outcome(REJECTED, 429, f"Retry-After {retry_after}")


async def consume_stream(reader, response: HttpResponse, started: float) -> Outcome:
    parser, check = SSEParser(), StreamCheck()
    try:
        async for payload in iter_body(reader, response.headers):
            now = time.monotonic()
            for data in parser.feed(payload):
                check.event(data, now)
        parser.close()
    except ProtocolError as e:
        check.problem = check.problem or str(e)
    check.end()
    ttft = check.first_content_at - started if check.first_content_at else None
    kind = GARBLED if check.problem else COMPLETED
    return Outcome(kind, 200, check.problem or check.finish_reason or "", check.content_chunks, ttft)


async def one_request(host: str, port: int, body: bytes) -> Outcome:
    started = time.monotonic()
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(build_request(host, port, "/v1/chat/completions", body))
        await writer.drain()
        response = await read_head(reader)
        if response.status == 200:
            outcome = await consume_stream(reader, response, started)
        elif response.status == 429:
            outcome = classify_rejection(response, await read_all(reader, response.headers))
        else:
            text = await read_all(reader, response.headers)
            outcome = Outcome(OTHER, response.status, f"HTTP {response.status}: {text[:160]!r}")
    except ProtocolError as e:
        outcome = Outcome(OTHER, None, f"protocol error before the stream: {e}")
    except asyncio.CancelledError:
        # The overall deadline passed while this request was still running.
        outcome = Outcome(OTHER, None, "timeout: still running at the overall deadline")
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        outcome = Outcome(OTHER, None, f"{type(e).__name__}: {e}")
    finally:
        if writer is not None:
            writer.close()
    outcome.elapsed_s = time.monotonic() - started
    return outcome


# ---------------------------------------------------------------------------------------------
# The run: bounded concurrency, an overall deadline, and the report.


async def run_load(
    host: str, port: int, body: bytes, n_requests: int, concurrency: int, timeout_s: float
) -> tuple[list[Outcome], float]:
    gate = asyncio.Semaphore(concurrency)

    async def gated() -> Outcome:
        async with gate:
            return await one_request(host, port, body)

    started = time.monotonic()
    tasks = [asyncio.create_task(gated()) for _ in range(n_requests)]
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    wall = time.monotonic() - started
    outcomes = []
    for task in tasks:
        # A task cancelled before it got through the gate never produced an Outcome.
        if task.cancelled() or task.exception() is not None:
            outcomes.append(Outcome(OTHER, None, "timeout: not started before the overall deadline"))
        else:
            outcomes.append(task.result())
    return outcomes, wall


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def build_report(outcomes: list[Outcome], wall_s: float, concurrency: int) -> dict:
    counts = {kind: sum(o.kind == kind for o in outcomes) for kind in (COMPLETED, REJECTED, OTHER, GARBLED)}
    done = [o for o in outcomes if o.kind == COMPLETED]
    tokens = sum(o.content_chunks for o in done)
    ttfts = [o.ttft_s for o in done if o.ttft_s is not None]
    samples = {
        kind: [o.detail for o in outcomes if o.kind == kind][:MAX_SAMPLES] for kind in (OTHER, GARBLED)
    }
    return {
        "requests": len(outcomes),
        "concurrency": concurrency,
        **counts,
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall_s, 2) if wall_s > 0 else None,
        "ttft_p50_s": _round(percentile(ttfts, 50)),
        "ttft_p95_s": _round(percentile(ttfts, 95)),
        "wall_s": round(wall_s, 3),
        "finish_reasons": {r: sum(o.detail == r for o in done) for r in ("stop", "length")},
        "samples": {k: v for k, v in samples.items() if v},
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def print_report(report: dict) -> None:
    print(
        f"requests {report['requests']} at concurrency {report['concurrency']}: "
        f"{report['completed']} completed, {report['rejected_429']} rejected (429), "
        f"{report['other_errors']} other errors, {report['garbled']} garbled"
    )
    print(
        f"completion tokens {report['completion_tokens']} "
        f"({report['tokens_per_s']} tokens/s aggregate), "
        f"finish reasons {report['finish_reasons']}"
    )
    print(f"TTFT p50 {report['ttft_p50_s']} s, p95 {report['ttft_p95_s']} s; wall time {report['wall_s']} s")
    for kind, details in report["samples"].items():
        for d in details:
            print(f"  {kind}: {d}")


# ---------------------------------------------------------------------------------------------
# Server discovery and, optionally, a server of our own.


def is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def get_ready(base_url: str, timeout: float = 5) -> tuple[int, dict]:
    """(status, JSON body) of GET /readyz; (0, {}) when unreachable."""
    try:
        with urllib.request.urlopen(base_url + "/readyz", timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read())
        except ValueError:
            return e.code, {}
    except (OSError, ValueError):
        return 0, {}


def default_concurrency(ready: dict) -> int:
    capacity = (ready.get("capabilities") or {}).get("max_concurrent_requests")
    if isinstance(capacity, int) and capacity > 0:
        return CAPACITY_FACTOR * capacity
    return FALLBACK_CONCURRENCY


def request_body(model: str | None, max_tokens: int) -> bytes:
    body = {"messages": [{"role": "user", "content": PROMPT}], "stream": True, "max_tokens": max_tokens}
    if model:
        body["model"] = model
    return json.dumps(body).encode()


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL")
    p.add_argument("--requests", type=int, default=32, help="number of requests (default 32)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="requests in flight at once (default: 4 x the server's "
        "max_concurrent_requests from /readyz, else 16)",
    )
    p.add_argument("--max-tokens", type=int, default=32, help="max_tokens per request (default 32)")
    p.add_argument("--timeout", type=float, default=300, help="overall deadline in seconds (default 300)")
    p.add_argument(
        "--start-server",
        action="store_true",
        help="start python -m smallmind.server on a free port (ignores --url's port)",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="argument passed to the started server (repeatable; use --server-arg=--X=Y)",
    )
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback host")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if args.requests < 1 or (args.concurrency is not None and args.concurrency < 1):
        p.error("--requests and --concurrency must be positive")
    if args.timeout <= 0 or args.max_tokens < 1:
        p.error("--timeout and --max-tokens must be positive")
    return args


def run(args: argparse.Namespace, base_url: str) -> int:
    status, ready = get_ready(base_url)
    if status != 200:
        print(f"warning: {base_url}/readyz answered {status or 'nothing'}; running anyway", file=sys.stderr)
    concurrency = args.concurrency or default_concurrency(ready)
    model = (ready.get("capabilities") or {}).get("model")
    parts = urlsplit(base_url)
    body = request_body(model, args.max_tokens)
    outcomes, wall = asyncio.run(
        run_load(parts.hostname, parts.port or 80, body, args.requests, concurrency, args.timeout)
    )
    report = build_report(outcomes, wall, concurrency)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["garbled"] == 0 and report["other_errors"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = urlsplit(args.url)
    if parts.scheme != "http" or not parts.hostname:
        print(f"error: only http:// URLs are supported, got {args.url!r}", file=sys.stderr)
        return 2
    if not args.allow_remote and not is_local(parts.hostname):
        print(
            f"error: refusing to load-test non-loopback host {parts.hostname!r} "
            "(pass --allow-remote if you mean it)",
            file=sys.stderr,
        )
        return 2
    if not args.start_server:
        return run(args, args.url.rstrip("/"))
    server = ServerProcess(*args.server_arg, cwd=REPO, log_prefix="smallmind-loadtest-")
    try:
        server.wait_ready(timeout=min(args.timeout, 180))
        return run(args, server.url)
    except ServerStartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        code = server.stop()
        # A server that does not exit cleanly on SIGTERM is worth knowing about.
        if not server.stopped_cleanly():
            print(
                f"note: server exited with {code} after SIGTERM; log {server.log_path}:\n"
                f"{server.output(1500)}",
                file=sys.stderr,
            )
        else:
            server.remove_log()  # keep the log only when the server misbehaved


if __name__ == "__main__":
    sys.exit(main())
