"""One grammar running against one vocabulary: interned automaton states, a memo of
byte transitions, and the allowed-token set of every state seen (states repeat a lot,
across steps and across sequences of the same grammar).

Computing an allowed set (once per state):
* stacks inside a free string body: plain tokens come straight from the index's
  precomputed masks; only the ~1.5k tokens holding ``"``, ``\\`` or control bytes are
  walked through the automaton;
* any other stack: the vocabulary trie is walked with the automaton, skipping every
  subtree whose prefix is already rejected (outside strings few bytes are possible, so
  the walk is small);
* end of generation is allowed when the value is complete."""

import threading
from collections import OrderedDict

import numpy as np

from .automaton import State, can_end, initial_state, step
from .nodes import S_BODY, FreeString, Node
from .token_index import PreorderTrie, TokenIndex

DEAD = -1
MASK_CACHE_BYTES = 64 << 20  # cached allowed sets per matcher (ids: 8 bytes each)


class Allowed:
    """An allowed-token set, kept in whichever form is small: the allowed ids, or (inside
    strings, where nearly everything is allowed) the disallowed ids."""
    __slots__ = ("ids", "refused", "vocab_size")

    def __init__(self, mask: np.ndarray):
        self.vocab_size = len(mask)
        n_allowed = int(np.count_nonzero(mask))
        if n_allowed * 2 <= len(mask):
            self.ids, self.refused = np.flatnonzero(mask), None
        else:
            self.ids, self.refused = None, np.flatnonzero(~mask)

    @property
    def nbytes(self) -> int:
        return (self.ids if self.refused is None else self.refused).nbytes

    def mask(self) -> np.ndarray:
        if self.refused is None:
            return _mask_of(self.ids, self.vocab_size)
        mask = np.ones(self.vocab_size, dtype=bool)
        mask[self.refused] = False
        return mask

    def token_ids(self) -> np.ndarray:
        return self.ids if self.ids is not None else np.flatnonzero(self.mask())

    def apply(self, logits: np.ndarray) -> None:
        """Set the logits of disallowed tokens to -inf, in place."""
        if self.refused is not None:
            logits[self.refused] = -np.inf
        else:
            kept = logits[self.ids]
            logits.fill(-np.inf)
            logits[self.ids] = kept


def _mask_of(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    mask = np.zeros(vocab_size, dtype=bool)
    mask[ids] = True
    return mask


class Matcher:
    """Shared by every sequence of one grammar on one vocabulary; thread-safe."""

    def __init__(self, root: Node, index: TokenIndex):
        self.index = index
        self.states: list[State] = []
        self.state_ids: dict[State, int] = {}
        self.transitions: dict[int, int] = {}  # state id << 8 | byte -> state id / DEAD
        self.viable_bytes: dict[int, frozenset[int]] = {}  # state id -> bytes it takes
        self.frame_bytes: dict[tuple, frozenset[int]] = {}  # frame -> bytes it takes
        self.allowed_sets: OrderedDict[int, Allowed] = OrderedDict()
        self.cached_bytes = 0
        self.lock = threading.RLock()
        self.start_id = self.intern(initial_state(root))

    def intern(self, state: State) -> int:
        sid = self.state_ids.get(state)
        if sid is None:
            sid = self.state_ids[state] = len(self.states)
            self.states.append(state)
        return sid

    def next_id(self, sid: int, byte: int) -> int:
        key = sid << 8 | byte
        nxt = self.transitions.get(key)
        if nxt is None:
            with self.lock:
                new = step(self.states[sid], byte)
                nxt = DEAD if new is None else self.intern(new)
                self.transitions[key] = nxt
        return nxt

    def after_bytes(self, sid: int, data: bytes) -> int:
        for byte in data:
            sid = self.next_id(sid, byte)
            if sid == DEAD:
                break
        return sid

    def _viable(self, sid: int) -> frozenset[int]:
        """The bytes state ``sid`` can take.  Whether a byte is taken depends on the top
        frame only, and frames recur in many states: testing bytes per frame (memoized)
        spares the trie walk a transition lookup for every dead byte."""
        found = self.viable_bytes.get(sid)
        if found is None:
            found = frozenset()
            for stack in self.states[sid]:
                if stack:
                    found |= self._frame_viable(stack[-1])
            self.viable_bytes[sid] = found
        return found

    def _frame_viable(self, frame) -> frozenset[int]:
        found = self.frame_bytes.get(frame)
        if found is None:
            node, local = frame
            found = frozenset(b for b in range(256) if node.feed(local, b))
            self.frame_bytes[frame] = found
        return found

    # ------------------------------------------------------------ allowed sets
    def allowed(self, sid: int) -> Allowed:
        found = self.allowed_sets.get(sid)
        if found is not None:
            self.allowed_sets.move_to_end(sid)
            return found
        with self.lock:
            found = Allowed(self._compute(sid))
            self.allowed_sets[sid] = found
            self.cached_bytes += found.nbytes
            while self.cached_bytes > MASK_CACHE_BYTES and len(self.allowed_sets) > 1:
                _, old = self.allowed_sets.popitem(last=False)
                self.cached_bytes -= old.nbytes
        return found

    def _compute(self, sid: int) -> np.ndarray:
        """The allowed set of a state, as a bool mask."""
        state = self.states[sid]
        in_string = [s for s in state if s and _in_free_string(s)]
        elsewhere = [s for s in state if s and not _in_free_string(s)]
        mask = np.zeros(self.index.vocab_size, dtype=bool)
        ids: list[int] = []
        if elsewhere:
            self._walk(self.index.trie, self.intern(frozenset(elsewhere)), ids)
        if in_string:
            self._walk(self.index.nonplain_trie, self.intern(frozenset(in_string)), ids)
            for stack in in_string:
                mask |= self._plain_tokens(stack[-1])
        mask[ids] = True
        if can_end(state):
            mask[self.index.eog_ids] = True
        return mask

    def _plain_tokens(self, frame) -> np.ndarray:
        """Plain tokens a free-string frame accepts: right UTF-8 state, fitting length."""
        node, (_, utf8_state, count) = frame
        ok = self.index.plain_ok[utf8_state]
        room = node.room(count)
        return ok if room is None else ok & (self.index.n_chars <= room)

    def _walk(self, trie: PreorderTrie, sid: int, out: list[int]) -> None:
        """Append every token of ``trie`` the automaton accepts from state ``sid``."""
        edge, end, token, more = trie.edge, trie.end, trie.token, trie.more_tokens
        transitions, next_id, viable = self.transitions, self.next_id, self._viable

        def visit(node: int, limit: int, sid: int) -> None:
            base, takes = sid << 8, viable(sid)
            while node < limit:
                byte = edge[node]
                subtree_end = end[node]
                if byte in takes:
                    nxt = transitions.get(base | byte)
                    if nxt is None:
                        nxt = next_id(sid, byte)
                    if nxt != DEAD:
                        tok = token[node]
                        if tok >= 0:
                            out.append(tok)
                            if node in more:
                                out.extend(more[node])
                        if subtree_end > node + 1:
                            visit(node + 1, subtree_end, nxt)
                node = subtree_end

        for byte in viable(sid):  # jump straight to the top-level nodes worth walking
            top = trie.first[byte]
            if top >= 0:
                visit(top, end[top], sid)


def _in_free_string(stack) -> bool:
    node, local = stack[-1]
    return type(node) is FreeString and local[0] == S_BODY


class GrammarState:
    """One sequence's position in its grammar."""
    __slots__ = ("matcher", "sid", "ended")

    def __init__(self, matcher: Matcher, sid: int):
        self.matcher = matcher
        self.sid = sid
        self.ended = False  # end of generation was accepted

    def _allowed(self) -> Allowed | None:
        return None if self.ended else self.matcher.allowed(self.sid)

    def allowed(self) -> np.ndarray:
        """Bool mask over the vocabulary (a fresh array; ``mask_logits`` is cheaper)."""
        found = self._allowed()
        if found is None:
            return np.zeros(self.matcher.index.vocab_size, dtype=bool)
        return found.mask()

    def allowed_ids(self) -> np.ndarray:
        found = self._allowed()
        return np.zeros(0, dtype=np.int64) if found is None else found.token_ids()

    def mask_logits(self, logits: np.ndarray) -> None:
        """Set the logits (one row, vocabulary-sized) of disallowed tokens to -inf."""
        found = self._allowed()
        if found is None:
            logits.fill(-np.inf)
        else:
            found.apply(logits)

    def advance(self, token_id: int) -> None:
        """Move past one token; ValueError (state unchanged) if it is not allowed."""
        index = self.matcher.index
        if self.ended:
            raise ValueError(f"token {token_id} after end of generation")
        if token_id in index.eog_set:
            if not self.can_end:
                raise ValueError(f"end-of-generation token {token_id} before the JSON "
                                 "value is complete")
            self.ended = True
            return
        if not 0 <= token_id < index.vocab_size or not index.usable[token_id]:
            raise ValueError(f"token {token_id} is never allowed by a grammar")
        nxt = self.matcher.after_bytes(self.sid, index.token_bytes[token_id])
        if nxt == DEAD:
            raise ValueError(f"token {token_id} ({index.token_bytes[token_id]!r}) is not "
                             "allowed here")
        self.sid = nxt

    @property
    def can_end(self) -> bool:
        """The text so far is a complete value: end of generation is allowed."""
        return self.ended or can_end(self.matcher.states[self.sid])

    @property
    def complete(self) -> bool:
        """The value is finished: nothing but end of generation may follow."""
        return self.ended or self.matcher.states[self.sid] == frozenset({()})

    def copy(self) -> "GrammarState":
        twin = GrammarState(self.matcher, self.sid)
        twin.ended = self.ended
        return twin
