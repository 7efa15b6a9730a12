"""Stop strings over streamed text.

Text arrives piece by piece (one detokenized token at a time) and a stop string may span
pieces.  The matcher releases text only once it can no longer be the start of a stop string,
so a stop string never reaches the client, not even its first characters in a stream."""

from __future__ import annotations


class StopMatcher:
    """``feed(piece)`` returns ``(text safe to emit, stopped)``; after a stop nothing more is
    accepted.  ``flush()`` returns the held-back tail when generation ends for another reason."""

    def __init__(self, stops: list[str] | tuple[str, ...] = ()):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, piece: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stops:
            return piece, False
        text = self.pending + piece
        hit = self._first_stop(text)
        if hit >= 0:
            self.pending, self.stopped = "", True
            return text[:hit], True
        keep = self._partial_tail(text)
        self.pending = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _first_stop(self, text: str) -> int:
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return min(found) if found else -1

    def _partial_tail(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that begins some stop string."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best
