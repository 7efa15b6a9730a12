"""A tokenizer's vocabulary arranged for fast grammar masking.  Built once per tokenizer
(about a second for 262k tokens) and shared by every grammar and sequence.

* ``trie``: every usable token in a byte trie, for walking with the automaton;
* ``nonplain_trie``: only the tokens holding a byte that matters inside a JSON string
  (``"``, ``\\``, control bytes); everything else is "plain";
* ``plain_ok[u]``: plain tokens that are valid UTF-8 continuing from UTF-8 state ``u``,
  and ``n_chars``: how many characters each token starts.  Inside a free string a plain
  token never changes anything but the UTF-8 state and the character count, so the
  allowed plain tokens come from these arrays without walking anything."""

import weakref
from array import array

import numpy as np

from . import utf8


class PreorderTrie:
    """A byte trie stored flat in preorder: node k's children start at k+1, and the
    subtree of k ends just before ``end[k]`` (so skipping a dead subtree is one jump).
    Top-level nodes are the children of an implicit root.  ``token[k]`` is the id of a
    token whose bytes end at k (-1: none); ``more_tokens`` holds ids sharing bytes.

    Built with numpy from the sorted tokens: token k adds one node per byte past its
    common prefix with token k-1, in order, which is exactly preorder."""

    def __init__(self, token_bytes: list[bytes], ids: list[int]):
        ids = sorted(ids, key=token_bytes.__getitem__)
        self.more_tokens: dict[int, list[int]] = {}
        if not ids:
            self.edge, self.end, self.token = b"", array("i"), array("i")
            self.first = [-1] * 256
            return
        data = [token_bytes[i] for i in ids]
        lengths = np.array([len(d) for d in data], dtype=np.int64)
        padded = _padded(data, lengths)
        shared = _common_prefix_lens(padded, lengths)
        new_nodes = lengths - shared
        first_node = np.concatenate(([0], np.cumsum(new_nodes)))  # per token, + total
        columns = np.arange(padded.shape[1])
        is_new = (columns >= shared[:, None]) & (columns < lengths[:, None])
        self.edge = padded[is_new].tobytes()
        depth = np.broadcast_to(columns, padded.shape)[is_new]
        owner = np.repeat(np.arange(len(ids)), new_nodes)  # the token that added a node
        end = np.empty(len(self.edge), dtype=np.int32)
        for d in range(padded.shape[1]):
            at_depth = depth == d
            # the subtree of a depth-d node ends where a later token branches off at
            # depth <= d
            branch = np.where(shared <= d, np.arange(len(ids)), len(ids))
            following = np.minimum.accumulate(branch[::-1])[::-1]
            following = np.append(following[1:], len(ids))
            end[at_depth] = first_node[following[owner[at_depth]]]
        token = np.full(len(self.edge), -1, dtype=np.int32)
        has_node = new_nodes > 0
        token[first_node[1:][has_node] - 1] = np.asarray(ids)[has_node]
        last = -1
        for k, node_count in enumerate(new_nodes.tolist()):
            if node_count:
                last = int(first_node[k + 1]) - 1
            else:  # same bytes as the previous token
                self.more_tokens.setdefault(last, []).append(ids[k])
        self.end = array("i", end.tobytes())
        self.token = array("i", token.tobytes())
        self.first = self._top_level_nodes()

    def _top_level_nodes(self) -> list[int]:
        """first[byte]: the top-level node for tokens starting with ``byte`` (or -1), so a
        walk can go straight to the bytes a state accepts."""
        first = [-1] * 256
        node = 0
        while node < len(self.edge):
            first[self.edge[node]] = node
            node = self.end[node]
        return first

    def __len__(self) -> int:
        return len(self.edge)


def _padded(data: list[bytes], lengths: np.ndarray) -> np.ndarray:
    """The byte strings as rows of a zero-padded uint8 matrix."""
    padded = np.zeros((len(data), int(lengths.max())), dtype=np.uint8)
    flat = np.frombuffer(b"".join(data), dtype=np.uint8)
    rows = np.repeat(np.arange(len(data)), lengths)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    padded[rows, np.arange(len(flat)) - starts[rows]] = flat
    return padded


def _common_prefix_lens(padded: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """For each row, the length of its common prefix with the previous row (0 first)."""
    both = np.minimum(lengths[1:], lengths[:-1])
    equal = (padded[1:] == padded[:-1]) & (np.arange(padded.shape[1]) < both[:, None])
    shared = np.where(equal.all(axis=1), both, equal.argmin(axis=1))
    return np.concatenate(([0], shared))


_STRING_SPECIAL = np.zeros(256, dtype=bool)
_STRING_SPECIAL[:0x20] = True
_STRING_SPECIAL[[0x22, 0x5C]] = True


class TokenIndex:
    """See the module docstring.  ``usable``: tokens a grammar may ever allow besides
    end-of-generation (non-empty, not special)."""

    def __init__(self, token_bytes: list[bytes], eog_ids: frozenset[int],
                 special_ids: frozenset[int] = frozenset()):
        self.vocab_size = len(token_bytes)
        self.token_bytes = list(token_bytes)
        self.eog_ids = np.array(sorted(eog_ids), dtype=np.int64)
        self.eog_set = frozenset(eog_ids)
        excluded = set(eog_ids) | set(special_ids)
        usable_ids = [i for i, data in enumerate(self.token_bytes)
                      if data and i not in excluded]
        self.usable = np.zeros(self.vocab_size, dtype=bool)
        self.usable[usable_ids] = True
        plain = self._plain_tokens(usable_ids)
        self.n_chars = self._char_counts(usable_ids)
        self.plain_ok = self._plain_utf8_masks(usable_ids, plain)
        self.trie = PreorderTrie(self.token_bytes, usable_ids)
        self.nonplain_trie = PreorderTrie(self.token_bytes,
                                          [i for i in usable_ids if not plain[i]])

    @classmethod
    def for_vocab(cls, token_bytes: list[bytes], eog_ids: frozenset[int],
                  special_ids: frozenset[int] = frozenset()) -> "TokenIndex":
        return cls(token_bytes, eog_ids, special_ids)

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "TokenIndex":
        """The index of a ``smallmind.engine.tokenizer.Tokenizer``, built on first use and
        kept as long as the tokenizer lives."""
        index = _BY_TOKENIZER.get(tokenizer)
        if index is None:
            n = tokenizer.vocab_size
            special = frozenset(i for i in range(n) if tokenizer.is_special(i))
            index = cls([tokenizer.token_bytes(i) for i in range(n)],
                        frozenset(tokenizer.eog_ids), special)
            _BY_TOKENIZER[tokenizer] = index
        return index

    def _flat(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """All the ids' bytes in one array, and each token's start offset in it."""
        lengths = np.array([len(self.token_bytes[i]) for i in ids], dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        flat = np.frombuffer(b"".join(self.token_bytes[i] for i in ids), dtype=np.uint8)
        return flat, starts

    def _plain_tokens(self, ids: list[int]) -> np.ndarray:
        flat, starts = self._flat(ids)
        special_count = np.add.reduceat(_STRING_SPECIAL[flat].astype(np.int32), starts)
        plain = np.zeros(self.vocab_size, dtype=bool)
        plain[ids] = special_count == 0
        return plain

    def _char_counts(self, ids: list[int]) -> np.ndarray:
        """Characters each token starts: its bytes that are not UTF-8 continuations."""
        flat, starts = self._flat(ids)
        starting = ((flat < 0x80) | (flat > 0xBF)).astype(np.int32)
        counts = np.zeros(self.vocab_size, dtype=np.int32)
        counts[ids] = np.add.reduceat(starting, starts)
        return counts

    def _plain_utf8_masks(self, ids: list[int], plain: np.ndarray) -> np.ndarray:
        """masks[u, i]: plain token i may follow UTF-8 state u inside a string."""
        masks = np.zeros((utf8.N_STATES, self.vocab_size), dtype=bool)
        whole = []  # whole characters: only allowed between characters
        for i in np.flatnonzero(plain).tolist():
            data = self.token_bytes[i]
            if data.isascii():
                whole.append(i)
                continue
            try:
                data.decode("utf-8")
                whole.append(i)
            except UnicodeDecodeError:  # a fragment (byte fallback): check every state
                for state in range(utf8.N_STATES):
                    masks[state, i] = utf8.run(state, data) != utf8.DEAD
        masks[utf8.ACCEPT, whole] = True
        return masks


_BY_TOKENIZER: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
