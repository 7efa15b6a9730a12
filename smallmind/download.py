"""Resumable HTTP(S) download into an open ``.part`` file, and a tiny progress bar.

Standard library only (``urllib.request``).  The caller owns the ``.part`` file (opened
read/write and locked); :func:`download` appends to it:

* If the file already holds bytes from an interrupted run (and the ``<part>.json`` sidecar
  says they came from the same URL), it asks for the rest with ``Range: bytes=N-`` (plus
  ``If-Range`` with the ETag / Last-Modified seen first, so a changed file restarts).  The
  answer must be ``206`` with ``Content-Range: bytes N-.../...``; a ``200`` (server ignores
  ranges or the file changed), a ``416`` or a mismatched ``Content-Range`` restart from zero.
* Every byte received is written before an error is raised, so a network failure or Ctrl-C
  leaves a ``.part`` that the next run resumes.

Network failures raise :class:`~smallmind.errors.RegistryError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from typing import BinaryIO, TextIO

from smallmind import __version__
from smallmind.errors import RegistryError

__all__ = ["download", "Progress", "is_url", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 30.0  # seconds per connect / read, not for the whole download
CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def is_url(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


# ---------------------------------------------------------------------- progress
def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _human_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """One-line progress on ``stream`` (stderr): bytes done/total, rate, ETA.  Draws only
    when ``enabled`` (default: the stream is a TTY) and at most ~10 times a second."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        done: int = 0,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ):
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            try:
                enabled = self.stream.isatty()
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = enabled
        self.label, self.total, self.done = label, total, done
        self._start_done, self._start = done, time.monotonic()
        self._last = 0.0
        self._drawn = False

    def reset(self, done: int = 0, total: int | None = None) -> None:
        self.done, self.total = done, total
        self._start_done, self._start = done, time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last >= 0.1:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-6)
        rate = (self.done - self._start_done) / elapsed
        parts = [self.label, _human_bytes(self.done)]
        if self.total:
            parts[-1] += f" / {_human_bytes(self.total)} {100 * self.done / self.total:3.0f}%"
        parts.append(f"{_human_bytes(rate)}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_human_time(max(self.total - self.done, 0) / rate)}")
        line = "  ".join(parts)
        self.stream.write("\r" + line[:200] + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


# ---------------------------------------------------------------------- download
def _sidecar(part_path: str) -> str:
    return part_path + ".json"


def _read_sidecar(part_path: str) -> dict:
    try:
        with open(_sidecar(part_path), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_sidecar(part_path: str, url: str, headers) -> None:
    etag = headers.get("ETag")
    data = {
        "url": url,
        "etag": etag if etag and not etag.startswith("W/") else None,
        "last_modified": headers.get("Last-Modified"),
    }
    tmp = _sidecar(part_path) + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, _sidecar(part_path))


def remove_sidecar(part_path: str) -> None:
    try:
        os.unlink(_sidecar(part_path))
    except FileNotFoundError:
        pass


def _open(url: str, offset: int, validator: str | None, timeout: float):
    headers = {"User-Agent": f"smallmind/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator
    req = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            e.close()
            return None  # our .part is not a prefix the server recognizes: restart
        e.close()
        raise RegistryError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None


def _hash_prefix(f: BinaryIO, n: int) -> hashlib._Hash:
    h = hashlib.sha256()
    f.seek(0)
    left = n
    while left:
        block = f.read(min(CHUNK, left))
        if not block:
            break
        h.update(block)
        left -= len(block)
    return h


def download(
    url: str,
    f: BinaryIO,
    part_path: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = False,
    label: str = "",
) -> tuple[str, int]:
    """Complete ``url`` into ``f`` (the opened, locked ``part_path``), resuming if it
    already holds a prefix.  Returns ``(sha256 hex, size)`` of the whole file.  Raises
    RegistryError (one line) on any network problem; bytes received so far stay in ``f``."""
    try:
        return _download(url, f, part_path, timeout, progress, label)
    except RegistryError:
        raise
    except urllib.error.URLError as e:
        reason = e.reason if not isinstance(e.reason, OSError) else (e.reason.strerror or e.reason)
        raise RegistryError(f"download of {url} failed: {reason}") from None
    except (http.client.HTTPException, OSError) as e:
        what = e.strerror if isinstance(e, OSError) and e.strerror else (str(e) or type(e).__name__)
        raise RegistryError(
            f"download of {url} interrupted ({what}); run the same command again to resume"
        ) from None
    except ValueError as e:  # malformed URL
        raise RegistryError(f"bad URL {url!r}: {e}") from None


def _download(
    url: str, f: BinaryIO, part_path: str, timeout: float, progress: bool, label: str
) -> tuple[str, int]:
    offset = f.seek(0, os.SEEK_END)
    side = _read_sidecar(part_path)
    if offset and side.get("url") != url:
        offset = 0  # leftover of another URL (or no sidecar): cannot trust it
    bar = Progress(label or url.rsplit("/", 1)[-1] or url, enabled=None if progress else False)
    try:
        for _attempt in range(2):
            validator = (side.get("etag") or side.get("last_modified")) if offset else None
            resp = _open(url, offset, validator, timeout)
            if resp is None:  # 416
                offset = 0
                continue
            with resp:
                total = None
                if offset and resp.status == 206:
                    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != offset:
                        offset = 0  # a range we did not ask for: start over
                        continue
                    if m.group(3) != "*":
                        total = int(m.group(3))
                elif resp.status == 206:
                    raise RegistryError(
                        f"download of {url} failed: server sent a partial answer (206) to a plain request"
                    )
                elif resp.status != 200:
                    raise RegistryError(f"download of {url} failed: HTTP {resp.status}")
                else:
                    offset = 0  # full body: restart from zero
                if offset == 0:
                    f.seek(0)
                    f.truncate()
                    _write_sidecar(part_path, url, resp.headers)
                    hasher = hashlib.sha256()
                else:
                    hasher = _hash_prefix(f, offset)
                    f.seek(offset)
                length = resp.headers.get("Content-Length")
                if total is None and length is not None and length.isdigit():
                    total = offset + int(length)
                bar.reset(offset, total)
                done = offset
                try:
                    while True:
                        block = resp.read(CHUNK)
                        if not block:
                            break
                        f.write(block)
                        hasher.update(block)
                        done += len(block)
                        bar.update(len(block))
                finally:
                    f.flush()
                if total is not None and done != total:
                    raise RegistryError(
                        f"download of {url} interrupted after {done} of {total} bytes; "
                        f"run the same command again to resume"
                    )
                return hasher.hexdigest(), done
        raise RegistryError(
            f"download of {url} failed: the server does not answer range requests consistently"
        )
    finally:
        bar.close()
