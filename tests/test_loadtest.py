"""The load test's wire parsing and stream classification, on handcrafted bytes (no server)."""

from __future__ import annotations

import asyncio
import json

import pytest

from scripts import loadtest


def chunk(delta: dict, finish_reason=None, *, id="chatcmpl-1", index=0) -> bytes:
    body = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
GOOD = (
    chunk({"role": "assistant", "content": ""})
    + chunk({"content": "Hel"})
    + chunk({"content": "lo ☃"})
    + chunk({}, "stop")
    + DONE
)


def check(stream: bytes, pieces: int = 1) -> loadtest.StreamCheck:
    """Feeds `stream` in `pieces` roughly equal reads and returns the finished check."""
    parser, result = loadtest.SSEParser(), loadtest.StreamCheck()
    step = max(1, -(-len(stream) // pieces))
    try:
        for i in range(0, len(stream), step):
            for data in parser.feed(stream[i : i + step]):
                result.event(data, now=float(i))
        parser.close()
    except loadtest.ProtocolError as e:
        result.problem = result.problem or str(e)
    result.end()
    return result


def test_good_stream_completes():
    r = check(GOOD)
    assert r.problem is None
    assert (r.text, r.content_chunks, r.finish_reason, r.done) == ("Hello ☃", 2, "stop", True)


@pytest.mark.parametrize("pieces", [2, 7, len(GOOD)])
def test_good_stream_split_across_reads(pieces):
    # One byte per read cuts the snowman's three UTF-8 bytes apart: must still be fine.
    r = check(GOOD, pieces)
    assert r.problem is None and r.text == "Hello ☃" and r.done


def test_crlf_lines_and_comments_are_accepted():
    stream = b": keep-alive\r\n\r\n" + GOOD.replace(b"\n", b"\r\n")
    assert check(stream).problem is None


def test_usage_chunk_after_finish_is_accepted():
    usage = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    stream = GOOD.replace(DONE, b"data: " + json.dumps(usage).encode() + b"\n\n" + DONE)
    assert check(stream).problem is None


@pytest.mark.parametrize(
    "stream, expected",
    [
        (GOOD.replace(DONE, b""), "without data: [DONE]"),
        (chunk({"content": "Hi"}) + DONE, "[DONE] before any finish_reason"),
        (chunk({"content": "Hi"}), "without a finish_reason"),
        (chunk({"content": "Hi"}) + b"data: {not json\n\n", "not JSON"),
        (b"hello there\n\n" + GOOD, "not an SSE line"),
        (
            chunk({"content": "Hi"}) + chunk({}, "stop") + chunk({"content": "more"}) + DONE,
            "after the finish_reason",
        ),
        (GOOD + chunk({"content": "late"}), "after data: [DONE]"),
        (chunk({"content": "Hi"}) + b'data: {"error": {"message": "boom"}}\n\n', "error event"),
        (chunk({"content": "bad \ufffd"}) + chunk({}, "stop") + DONE, "U+FFFD"),
        (chunk({"content": "Hi"}) + b"data: \xff\xfe\n\n", "invalid UTF-8"),
        (chunk({"content": "Hi"}) + chunk({}, "content_filter") + DONE, "not stop/length"),
        (chunk({"content": "Hi"}) + chunk({}, "stop", id="other") + DONE, "id changed"),
        (chunk({"content": "Hi"}, index=1) + DONE, "bad choice"),
        (chunk({"content": 5}) + DONE, "not a string"),
        (chunk({"content": "Hi"}).replace(b"chat.completion.chunk", b"text_completion"), "object is"),
        (chunk({"content": "Hi"}) + chunk({}, "stop") + b"data: [DO", "middle of an event"),
    ],
)
def test_garbled_streams_are_caught(stream, expected):
    r = check(stream)
    assert r.problem is not None and expected in r.problem


def test_lone_surrogate_escape_is_not_valid_text():
    stream = chunk({"content": "x"}).replace(b'"x"', b'"\\ud800"') + chunk({}, "stop") + DONE
    assert "not valid text" in check(stream).problem


def test_chunked_decoder_reassembles_split_input():
    payload = GOOD
    wire = (
        b"".join(
            f"{len(part):x}\r\n".encode() + part + b"\r\n"
            for part in (payload[:10], payload[10:55], payload[55:])
        )
        + b"0\r\n\r\n"
    )
    for step in (1, 3, len(wire)):
        dec = loadtest.ChunkedDecoder()
        out = b"".join(dec.feed(wire[i : i + step]) for i in range(0, len(wire), step))
        assert out == payload and dec.finished


def test_chunked_decoder_rejects_bad_size():
    with pytest.raises(loadtest.ProtocolError):
        loadtest.ChunkedDecoder().feed(b"zz\r\nabc\r\n")


def _response(status_line: bytes, headers: dict, body: bytes) -> bytes:
    head = status_line + b"\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
    return head + b"\r\n" + body


async def _classify(raw: bytes) -> loadtest.Outcome:
    """Runs one_request against a throwaway local server that answers `raw` and hangs up."""

    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        return await loadtest.one_request("127.0.0.1", port, b"{}")


def test_one_request_completed_over_chunked_stream():
    body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (GOOD[:40], GOOD[40:])) + b"0\r\n\r\n"
    raw = _response(
        b"HTTP/1.1 200 OK", {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"}, body
    )
    outcome = asyncio.run(_classify(raw))
    assert outcome.kind == loadtest.COMPLETED and outcome.content_chunks == 2
    assert outcome.ttft_s is not None


def test_429_needs_retry_after():
    err = json.dumps({"error": {"message": "busy", "type": "rate_limit_exceeded"}}).encode()
    with_header = _response(
        b"HTTP/1.1 429 Too Many Requests", {"Retry-After": "1", "Content-Length": len(err)}, err
    )
    without = _response(b"HTTP/1.1 429 Too Many Requests", {"Content-Length": len(err)}, err)
    assert asyncio.run(_classify(with_header)).kind == loadtest.REJECTED
    assert asyncio.run(_classify(without)).kind == loadtest.OTHER


def test_other_status_is_an_error():
    raw = _response(b"HTTP/1.1 500 Internal Server Error", {"Content-Length": 2}, b"{}")
    outcome = asyncio.run(_classify(raw))
    assert outcome.kind == loadtest.OTHER and outcome.status == 500


def test_percentile_and_report():
    assert loadtest.percentile([], 50) is None
    assert loadtest.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert loadtest.percentile([float(i) for i in range(1, 21)], 95) == 19.0
    outcomes = [
        loadtest.Outcome(loadtest.COMPLETED, 200, "length", 4, 0.5),
        loadtest.Outcome(loadtest.REJECTED, 429, "Retry-After 1"),
        loadtest.Outcome(loadtest.GARBLED, 200, "bad"),
    ]
    report = loadtest.build_report(outcomes, wall_s=2.0, concurrency=8)
    assert (report["completed"], report["rejected_429"], report["garbled"]) == (1, 1, 1)
    assert report["tokens_per_s"] == 2.0 and report["samples"] == {"garbled": ["bad"]}


def test_remote_hosts_are_refused(capsys):
    assert loadtest.main(["--url", "http://example.com:8080"]) == 2
    assert "refusing" in capsys.readouterr().err
    assert loadtest.is_local("127.0.0.1") and loadtest.is_local("::1")
    assert loadtest.is_local("localhost") and not loadtest.is_local("10.0.0.1")


def test_default_concurrency_is_four_times_capacity():
    assert loadtest.default_concurrency({"capabilities": {"max_concurrent_requests": 3}}) == 12
    assert loadtest.default_concurrency({}) == loadtest.FALLBACK_CONCURRENCY
