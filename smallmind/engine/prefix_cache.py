"""Prompt-prefix reuse across requests.

A KV slot whose sequence has ended still holds the keys and values of every token that
sequence ran.  A new prompt that begins the same way (the same system prompt, the next turn
of a chat) can start from there instead of recomputing them.  So idle slots are the cache:
a new sequence takes the idle slot that holds the longest prefix of its prompt, and when none
does, the least recently released one, whose contents are then given up.  The memory bound is
the number of slots, which the model allocates up front (see ``Model.load``'s ``n_slots``).

Which prefix a slot can really resume from is the native cache's call (sliding-window layers
only keep a ring of recent positions); the engine checks with ``Model.copy_slot`` before it
trusts a match."""

from __future__ import annotations

from collections import OrderedDict
from itertools import takewhile

# Shorter shared prefixes (a BOS token, a chat template's first few tokens) save next to
# nothing, and taking a slot for them would evict the longer prompt it holds.
MIN_REUSE = 16


def common_prefix_len(a: list[int], b: list[int]) -> int:
    return sum(1 for _ in takewhile(lambda pair: pair[0] == pair[1], zip(a, b)))


class SlotPool:
    """The idle KV slots, least recently released first, each with the token ids its cache
    holds at positions 0, 1, ...  With ``reuse`` off every slot is taken as if empty."""

    def __init__(self, slots: list[int], reuse: bool = True):
        self.reuse = reuse
        self._held: OrderedDict[int, list[int]] = OrderedDict((slot, []) for slot in slots)

    def __len__(self) -> int:
        return len(self._held)

    def slots(self) -> list[int]:
        return list(self._held)

    def release(self, slot: int, cached_ids: list[int]) -> None:
        """``slot`` is idle again; its cache holds ``cached_ids``."""
        self._held[slot] = list(cached_ids) if self.reuse else []
        self._held.move_to_end(slot)

    def take(self, prompt_ids: list[int]) -> tuple[int, int]:
        """(slot, n_held): the idle slot to run ``prompt_ids`` in, and how many of the prompt's
        first tokens it already holds (0, or at least MIN_REUSE).  At least the last prompt token
        is always left to run, since its logits pick the first new token.  The pool must not be
        empty."""
        best_slot, best_n = next(iter(self._held)), 0
        if self.reuse:
            for slot, held in self._held.items():
                n = common_prefix_len(held, prompt_ids)
                if n > best_n and n >= MIN_REUSE:
                    best_slot, best_n = slot, n
        del self._held[best_slot]
        return best_slot, min(best_n, len(prompt_ids) - 1)
