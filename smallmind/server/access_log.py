"""One structured access-log line per request, as a JSON object on a single line.

Log shippers split on newlines, so the line must stay one line whatever the client sent:
``json.dumps`` escapes control characters, and ``ensure_ascii`` also escapes U+2028/U+2029
(which some splitters treat as line breaks) and lone surrogates from badly decoded paths.
Keys always come in the same order so the lines are easy to read and to diff.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any, ParamSpec

__all__ = ["access_line", "log_access", "ACCESS_LOGGER", "FIELDS"]

ACCESS_LOGGER = logging.getLogger("smallmind.access")
P = ParamSpec("P")

# The keys of every line, in order.
FIELDS = (
    "request_id",
    "method",
    "route",
    "path",
    "status",
    "duration_ms",
    "prompt_tokens",
    "completion_tokens",
    "remote_ip",
)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _count(value: Any) -> int | None:
    """Token counts are absent (None) for requests that generate nothing, e.g. /healthz."""
    return None if value is None else int(value)


def _milliseconds(value: Any) -> float | None:
    """Rounded to a microsecond; NaN/inf become null since JSON has no spelling for them."""
    ms = float(value)
    return round(ms, 3) if math.isfinite(ms) else None


def access_line(
    request_id: str,
    method: str,
    route: str,
    path: str,
    status: int,
    duration_ms: float,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    remote_ip: str | None,
) -> str:
    """The access-log record for one request: one JSON object, no newline anywhere in it."""
    record = {
        "request_id": _text(request_id),
        "method": _text(method),
        "route": _text(route),
        "path": _text(path),
        "status": int(status),
        "duration_ms": _milliseconds(duration_ms),
        "prompt_tokens": _count(prompt_tokens),
        "completion_tokens": _count(completion_tokens),
        "remote_ip": _text(remote_ip),
    }
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"))


def _logged_at_info(line: Callable[P, str]) -> Callable[P, None]:
    """A function that takes `line`'s arguments and writes its result to ACCESS_LOGGER at INFO."""

    def log(*args: P.args, **kwargs: P.kwargs) -> None:
        if ACCESS_LOGGER.isEnabledFor(logging.INFO):  # skip building the JSON when nobody listens
            ACCESS_LOGGER.info("%s", line(*args, **kwargs))

    log.__doc__ = f'Write the `{line.__name__}` record to the "smallmind.access" logger at INFO.'
    return log


# The same arguments as access_line, so the two signatures cannot drift apart.
log_access = _logged_at_info(access_line)
