"""The HTTP/1.1 layer under the handlers: what a client may send, how slowly, and a JSON
answer for everything refused before a handler could answer it.

Tornado answers broken framing (a chunk size of ``zz``, ``Content-Length: -1``, two different
Content-Lengths, ``Transfer-Encoding: gzip``) with a bare ``400`` and no body, and closes the
connection without a word on oversized header blocks, slow headers and slow bodies.
`GuardedHTTPServer` makes each of those an OpenAI-style error through
`openai.errors.error_response` (the one place statuses are decided):

=====  ==========================================================================
400    framing Tornado cannot read (``MalformedRequestError``)
408    headers not complete within HeaderTimeoutMs, body within BodyTimeoutMs
413    a chunked body far beyond MaxBodyBytes (smaller excess: the handler's 413)
414    a request line over `MAX_REQUEST_LINE_BYTES`
431    a header block over `MAX_HEADER_BYTES` or with more than `MAX_HEADERS` lines
=====  ==========================================================================

Each refusal is written and the connection closed.  After a framing or size refusal it is
half-closed first and whatever the client still sends is read and dropped for a moment:
closing a socket with unread input makes the kernel send a reset, which can destroy the
answer before the client reads it.  A handler already running for that request is told the
client left (so its counts are released) and whatever it still writes is dropped.

Tornado builds a plain ``HTTP1Connection`` per request and has no hook to choose the class;
`GuardedHTTPServer.start_request` turns it into a `GuardedConnection`, which overrides the
three steps that can fail (reading the message, parsing headers, reading the body).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from dataclasses import dataclass

from tornado import httputil, iostream
from tornado.http1connection import HTTP1Connection
from tornado.httpserver import HTTPServer

from smallmind.errors import SmallMindError
from smallmind.server.openai.errors import (
    BodyTooLargeError,
    ClientTooSlowError,
    HeadersTooLargeError,
    MalformedRequestError,
    UrlTooLongError,
    error_response,
)

log = logging.getLogger("smallmind.server")

MAX_REQUEST_LINE_BYTES = 8 * 1024  # "POST /v1/... HTTP/1.1": nginx's default buffer
MAX_HEADER_BYTES = 64 * 1024  # the whole header block, Tornado's own default
MAX_HEADERS = 100  # header lines, as Node and Go's servers allow
# Header blocks beyond this are not even buffered: the connection is closed unanswered.
HARD_HEADER_CAP_BYTES = 1024 * 1024
# After a refusal, how long the client's remaining input is read and dropped.
LINGER_S = 1.0


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    header_timeout_s: float
    body_timeout_s: float


class GuardedHTTPServer(HTTPServer):
    """An HTTPServer whose connections answer every refusal with a JSON error."""

    def initialize(self, app, limits: Limits) -> None:  # type: ignore[override]  # Tornado's Configurable constructor
        # Tornado's own header timeout stays as a backstop only: GuardedConnection's fires
        # first and answers 408.  Its body timeout is replaced by GuardedConnection's.  The
        # handlers raise max_body_size per request (they drain a moderate excess for a 413).
        super().initialize(
            app,
            max_body_size=limits.max_body_bytes + 1,
            max_header_size=HARD_HEADER_CAP_BYTES,
            idle_connection_timeout=limits.header_timeout_s + 5,
        )
        self.limits = limits

    def start_request(self, server_conn, request_conn):
        request_conn.__class__ = GuardedConnection  # see the module docstring
        request_conn.limits = self.limits
        return super().start_request(server_conn, request_conn)


class GuardedConnection(HTTP1Connection):
    limits: Limits
    refused = False

    async def _read_message(self, delegate) -> bool:
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self.limits.header_timeout_s, self._headers_too_slow)
        try:
            return await super()._read_message(delegate)
        except SmallMindError as refusal:
            self.refuse(refusal, linger=True)
            return False
        finally:
            self._header_timer.cancel()

    # A handler told "the client left" may still try to answer: after a refusal, ours is
    # the only answer on this connection.
    def write_headers(self, start_line, headers, chunk=None):
        return _done() if self.refused else super().write_headers(start_line, headers, chunk)

    def write(self, chunk):
        return _done() if self.refused else super().write(chunk)

    def finish(self) -> None:
        if not self.refused:
            super().finish()

    def _parse_headers(self, data: bytes):
        self._header_timer.cancel()
        request_line = data.lstrip(b"\r\n").split(b"\n", 1)[0]
        if len(request_line) > MAX_REQUEST_LINE_BYTES:
            raise UrlTooLongError(f"the request line is longer than {MAX_REQUEST_LINE_BYTES} bytes")
        if len(data) > MAX_HEADER_BYTES:
            raise HeadersTooLargeError(f"the request headers are larger than {MAX_HEADER_BYTES} bytes")
        if data.count(b"\n") - 2 > MAX_HEADERS:  # request line and blank line aside
            raise HeadersTooLargeError(f"the request has more than {MAX_HEADERS} headers")
        try:
            start_line, headers = super()._parse_headers(data)
            httputil.parse_request_start_line(start_line)
        except httputil.HTTPInputError as e:
            raise MalformedRequestError(f"malformed request: {e}") from None
        return start_line, headers

    def _read_body(self, code, headers, delegate):
        try:
            reading = super()._read_body(code, headers, delegate)
        except httputil.HTTPInputError as e:
            raise self._framing_error(e) from None
        return None if reading is None else self._read_body_in_time(reading)

    async def _read_body_in_time(self, reading) -> None:
        try:
            await asyncio.wait_for(reading, self.limits.body_timeout_s)
        except asyncio.TimeoutError:
            # The body read was cancelled mid-way: the stream cannot be read again.
            self.refuse(
                ClientTooSlowError(
                    f"the request body did not arrive within {self.limits.body_timeout_s:g} s"
                ),
                linger=False,
            )
            raise iostream.StreamClosedError() from None
        except httputil.HTTPInputError as e:
            raise self._framing_error(e) from None

    def _framing_error(self, error: httputil.HTTPInputError) -> Exception:
        if "too large" in str(error) or "too long" in str(error):
            return BodyTooLargeError(self.limits.max_body_bytes)
        return MalformedRequestError(f"malformed request: {error}")

    def _headers_too_slow(self) -> None:
        if not getattr(self.stream, "_read_buffer_size", 1):
            # Nothing of a request has arrived (an idle keep-alive connection): close it
            # quietly, since a 408 could cross a request the client is sending right now.
            self.stream.close()
            return
        # Tornado's header read is still pending: no lingering read beside it.
        self.refuse(
            ClientTooSlowError(
                f"the request headers did not arrive within {self.limits.header_timeout_s:g} s"
            ),
            linger=False,
        )

    def refuse(self, refusal: Exception, linger: bool) -> None:
        """Answer with the refusal's JSON error, then close."""
        stream = self.stream
        if stream is None or stream.closed() or self.refused:
            return
        self.refused = True
        log.info("refused a request from %s: %s", getattr(self.context, "remote_ip", "?"), refusal)
        stream.write(_error_message(refusal))
        # Held: the event loop keeps only weak references to tasks.
        self._closing = asyncio.ensure_future(_close_after_answer(stream, linger))


def _done() -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def _error_message(refusal: Exception) -> bytes:
    status, body = error_response(refusal)
    payload = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {httputil.responses.get(status, 'Error')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        f"Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + payload


async def _close_after_answer(stream: iostream.IOStream, linger: bool) -> None:
    """Close once the answer is out; with linger, half-close first and drop what the
    client still sends for a moment."""
    try:
        while stream.writing():
            await asyncio.sleep(0.01)
        if linger:
            stream.socket.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(_discard_input(stream), LINGER_S)
    except (OSError, asyncio.TimeoutError, iostream.StreamClosedError):
        pass
    finally:
        stream.close()


async def _discard_input(stream: iostream.IOStream) -> None:
    while True:
        await stream.read_bytes(64 * 1024, partial=True)
