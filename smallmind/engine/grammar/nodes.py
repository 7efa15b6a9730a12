"""The building blocks of the JSON pushdown automaton: one node class per kind of JSON
value.  A node is immutable and shared by every sequence; a sequence's position inside
it is a small hashable ``local`` value.  The stack of (node, local) frames is driven by
``automaton.py``.

Each node answers two questions:

* ``feed(local, byte)`` -> tuple of outcomes after consuming ``byte``: a new local (stay
  on the stack) or ``DONE`` (the value ended with this byte; pop the frame);
* ``eps(local)`` -> tuple of moves that consume nothing: ``(PUSH, resume_local, child)``
  (start a child value; when it ends the frame continues at ``resume_local``), ``(POP,)``
  (the value may end here, e.g. a number, letting the next byte go to the parent) or
  ``(REPLACE, child)`` (become one of several alternatives: anyOf).

Whitespace policy (keeps models from looping on blanks): at most one space (0x20) after
``{``, ``[``, ``:`` and ``,``, and one before a closing ``}`` / ``]`` (a space after a
member must be followed by the closing bracket, so it is only allowed where closing is);
nothing else: no newlines or tabs, no whitespace before or after the top-level value."""

from . import utf8

PUSH, POP, REPLACE = 0, 1, 2
DONE = object()  # feed outcome: this byte ended the value

SPACE, QUOTE, BACKSLASH = 0x20, 0x22, 0x5C
COMMA, COLON = 0x2C, 0x3A
LBRACE, RBRACE, LBRACKET, RBRACKET = 0x7B, 0x7D, 0x5B, 0x5D
DIGITS = frozenset(range(0x30, 0x3A))
HEX = frozenset(b"0123456789abcdefABCDEF")
SIMPLE_ESCAPES = frozenset(b'"\\/bfnrt')

# numbers longer than this are cut off: the model cannot loop on digits forever
MAX_INT_DIGITS = 16
MAX_FRAC_DIGITS = 16
MAX_EXP_DIGITS = 3


class Node:
    __slots__ = ("init",)
    passive = False  # True: never consumes a byte itself (only eps moves)

    def feed(self, local, byte):
        return ()

    def eps(self, local):
        return ()


class ByteTrie:
    """A set of byte strings as a trie: node 0 is the root; ``children[n]`` maps a byte to
    a node; ``value[n]`` is the payload of a string ending at ``n`` (None: no string)."""

    def __init__(self, items: list[tuple[bytes, object]]):
        self.children: list[dict[int, int]] = [{}]
        self.value: list[object] = [None]
        for data, payload in items:
            node = 0
            for byte in data:
                nxt = self.children[node].get(byte)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][byte] = nxt
                    self.children.append({})
                    self.value.append(None)
                node = nxt
            self.value[node] = payload


class Literals(Node):
    """Exactly one of a fixed set of JSON texts (enum, const, true/false/null)."""
    __slots__ = ("trie",)

    def __init__(self, texts: list[bytes]):
        self.trie = ByteTrie([(t, True) for t in texts])
        self.init = 0

    def feed(self, local, byte):
        nxt = self.trie.children[local].get(byte)
        if nxt is None:
            return ()
        if self.trie.value[nxt] and not self.trie.children[nxt]:
            return (DONE,)
        return (nxt,)

    def eps(self, local):
        # a literal that is a prefix of another (enum [1, 12]) may end here
        return ((POP,),) if self.trie.value[local] else ()


# number phases; local = (phase, digits so far in the current part)
N_START, N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP = range(9)
_NUMBER_ACCEPTING = frozenset((N_ZERO, N_INT, N_FRAC, N_EXP))


class Number(Node):
    """An RFC 8259 number; ``integer`` forbids fraction and exponent.  Digit runs are
    capped (MAX_*_DIGITS)."""
    __slots__ = ("integer",)

    def __init__(self, integer: bool):
        self.integer = integer
        self.init = (N_START, 0)

    def feed(self, local, byte):
        phase, n = local
        digit = byte in DIGITS
        if phase in (N_START, N_MINUS):
            if byte == 0x30:
                return ((N_ZERO, 0),)
            if digit:
                return ((N_INT, 1),)
            if byte == 0x2D and phase == N_START:
                return ((N_MINUS, 0),)
            return ()
        if phase == N_INT and digit:
            return ((N_INT, n + 1),) if n < MAX_INT_DIGITS else ()
        if phase in (N_ZERO, N_INT):
            if self.integer:
                return ()
            if byte == 0x2E:
                return ((N_DOT, 0),)
            return ((N_E, 0),) if byte in (0x45, 0x65) else ()
        if phase in (N_DOT, N_FRAC):
            if digit:
                return ((N_FRAC, n + 1),) if n < MAX_FRAC_DIGITS else ()
            return ((N_E, 0),) if phase == N_FRAC and byte in (0x45, 0x65) else ()
        if phase == N_E and byte in (0x2B, 0x2D):
            return ((N_ESIGN, 0),)
        if phase in (N_E, N_ESIGN, N_EXP) and digit:
            return ((N_EXP, n + 1),) if n < MAX_EXP_DIGITS else ()
        return ()

    def eps(self, local):
        return ((POP,),) if local[0] in _NUMBER_ACCEPTING else ()


# string phases; local = (phase, utf8 state, characters so far (capped))
S_START, S_BODY, S_ESC, S_U1, S_U2, S_U2_LOW, S_U3, S_U4 = range(8)


class FreeString(Node):
    """Any JSON string of ``min_len``..``max_len`` characters (code points; an escape
    counts as one).  Accepts the escapes of RFC 8259; ``\\u`` escapes of surrogates are
    refused so the text always round-trips.  Bytes are checked as strict UTF-8."""
    __slots__ = ("min_len", "max_len", "count_cap")

    def __init__(self, min_len: int = 0, max_len: int | None = None):
        self.min_len = min_len
        self.max_len = max_len
        # the count is only needed up to the largest bound: more would split states
        self.count_cap = max_len if max_len is not None else min_len
        self.init = (S_START, utf8.ACCEPT, 0)

    def room(self, count: int) -> int | None:
        """How many more characters fit (None: unbounded)."""
        return None if self.max_len is None else self.max_len - count

    def _start_char(self, count: int):
        """The count after starting one more character, or None if it does not fit."""
        if self.max_len is not None and count >= self.max_len:
            return None
        return min(count + 1, self.count_cap)

    def feed(self, local, byte):
        phase, u8, count = local
        if phase == S_BODY:
            return self._feed_body(u8, count, byte)
        if phase == S_START:
            return ((S_BODY, utf8.ACCEPT, 0),) if byte == QUOTE else ()
        if phase == S_ESC:
            if byte in SIMPLE_ESCAPES:
                return ((S_BODY, utf8.ACCEPT, count),)
            return ((S_U1, utf8.ACCEPT, count),) if byte == 0x75 else ()
        if byte not in HEX:
            return ()
        if phase == S_U1:  # 'd'/'D' would start a surrogate unless followed by 0-7
            return ((S_U2_LOW if byte in (0x64, 0x44) else S_U2, utf8.ACCEPT, count),)
        if phase == S_U2_LOW and byte > 0x37:
            return ()
        if phase in (S_U2, S_U2_LOW):
            return ((S_U3, utf8.ACCEPT, count),)
        if phase == S_U3:
            return ((S_U4, utf8.ACCEPT, count),)
        return ((S_BODY, utf8.ACCEPT, count),)  # S_U4: the escape is complete

    def _feed_body(self, u8, count, byte):
        if u8 != utf8.ACCEPT:  # inside a multi-byte character
            nxt = utf8.NEXT[u8][byte]
            return () if nxt == utf8.DEAD else ((S_BODY, nxt, count),)
        if byte == QUOTE:
            return (DONE,) if count >= self.min_len else ()
        if byte < 0x20:
            return ()  # raw control characters are not allowed in JSON strings
        new_count = self._start_char(count)
        if new_count is None:
            return ()
        if byte == BACKSLASH:
            return ((S_ESC, utf8.ACCEPT, new_count),)
        nxt = utf8.NEXT[utf8.ACCEPT][byte]
        return () if nxt == utf8.DEAD else ((S_BODY, nxt, new_count),)


class AnyOf(Node):
    """One of several alternatives; the choice is made by the bytes that follow."""
    __slots__ = ("alternatives",)
    passive = True

    def __init__(self, alternatives: list[Node]):
        self.alternatives = tuple(alternatives)
        self.init = 0

    def eps(self, local):
        return tuple((REPLACE, alt) for alt in self.alternatives)


# container phases (arrays and objects)
(C_START, C_OPEN, C_OPEN_SP, C_VALUE, C_VALUE_SP, C_COMMA, C_COMMA_SP,
 C_KEY, C_COLON, C_AFTER_COLON, C_AFTER_COLON_SP) = range(11)


class Array(Node):
    """``[`` items ``]``: item i follows ``prefix[i]``, later items ``rest`` (None: no
    more items); ``min_items``..``max_items`` items.  local = (phase, items so far)."""
    __slots__ = ("prefix", "rest", "min_items", "max_items", "count_cap")

    def __init__(self, prefix: list[Node], rest: Node | None, min_items: int = 0,
                 max_items: int | None = None):
        self.prefix = tuple(prefix)
        self.rest = rest
        self.min_items = min_items
        self.max_items = max_items
        self.count_cap = max(min_items, len(self.prefix), max_items or 0)
        self.init = (C_START, 0)

    def _item(self, count: int) -> Node | None:
        if self.max_items is not None and count >= self.max_items:
            return None
        return self.prefix[count] if count < len(self.prefix) else self.rest

    def feed(self, local, byte):
        phase, count = local
        if phase == C_START:
            return ((C_OPEN, 0),) if byte == LBRACKET else ()
        if byte == SPACE and phase in (C_OPEN, C_COMMA):
            return ((phase + 1, count),)
        if byte == SPACE and phase == C_VALUE:  # a space after an item must close
            return ((C_VALUE_SP, count),) if count >= self.min_items else ()
        if byte == RBRACKET and phase in (C_OPEN, C_OPEN_SP, C_VALUE, C_VALUE_SP):
            return (DONE,) if count >= self.min_items else ()
        if byte == COMMA and phase == C_VALUE and self._item(count) is not None:
            return ((C_COMMA, count),)
        return ()

    def eps(self, local):
        phase, count = local
        if phase in (C_OPEN, C_OPEN_SP, C_COMMA, C_COMMA_SP):
            item = self._item(count)
            if item is not None:
                return ((PUSH, (C_VALUE, min(count + 1, self.count_cap)), item),)
        return ()


class Object(Node):
    """``{`` members ``}``.  Two modes:

    * declared: ``props`` = [(encoded key, value node, required)], emitted in that order;
      optional ones may be skipped, nothing else may appear;
    * map (no declared properties): any keys (free strings), values ``extra``.

    local = (phase, i, key trie node): i is the next property that may be written (in
    C_COLON.. phases: the property whose key was just written)."""
    __slots__ = ("props", "extra", "key_tries", "required_after", "key_node")

    def __init__(self, props: list[tuple[bytes, Node, bool]], extra: Node | None):
        self.props = tuple(props)
        self.extra = extra if not props else None
        n = len(self.props)
        # required_after[i]: some property at index >= i is required
        self.required_after = [False] * (n + 1)
        for i in range(n - 1, -1, -1):
            self.required_after[i] = self.props[i][2] or self.required_after[i + 1]
        # key_tries[i]: the keys that may come next when i is next: i up to and
        # including the first required one (skipping it is not allowed)
        self.key_tries = []
        for i in range(n + 1):
            items = []
            for j in range(i, n):
                items.append((self.props[j][0], j))
                if self.props[j][2]:
                    break
            self.key_tries.append(ByteTrie(items))
        self.key_node = FreeString() if self.extra is not None else None
        self.init = (C_START, 0, 0)

    def _has_key(self, i: int) -> bool:
        return self.extra is not None or i < len(self.props)

    def feed(self, local, byte):
        phase, i, pos = local
        if phase == C_KEY:
            trie = self.key_tries[i]
            nxt = trie.children[pos].get(byte)
            if nxt is None:
                return ()
            j = trie.value[nxt]
            return ((C_COLON, j, 0),) if j is not None else ((C_KEY, i, nxt),)
        if phase == C_START:
            return ((C_OPEN, 0, 0),) if byte == LBRACE else ()
        if phase == C_COLON:
            return ((C_AFTER_COLON, i, 0),) if byte == COLON else ()
        if byte == SPACE and phase in (C_OPEN, C_COMMA, C_AFTER_COLON):
            return ((phase + 1, i, 0),)
        if byte == SPACE and phase == C_VALUE:  # a space after a value must close
            return ((C_VALUE_SP, i, 0),) if not self.required_after[i] else ()
        if byte == RBRACE and phase in (C_OPEN, C_OPEN_SP, C_VALUE, C_VALUE_SP):
            return (DONE,) if not self.required_after[i] else ()
        if byte == COMMA and phase == C_VALUE:
            return ((C_COMMA, i, 0),) if self._has_key(i) else ()
        if phase in (C_OPEN, C_OPEN_SP, C_COMMA, C_COMMA_SP) and self.extra is None:
            return self.feed((C_KEY, i, 0), byte)  # the key's opening quote
        return ()

    def eps(self, local):
        phase, i, _ = local
        if phase in (C_AFTER_COLON, C_AFTER_COLON_SP):
            if self.extra is not None:
                return ((PUSH, (C_VALUE, 0, 0), self.extra),)
            return ((PUSH, (C_VALUE, i + 1, 0), self.props[i][1]),)
        if self.extra is not None and phase in (C_OPEN, C_OPEN_SP, C_COMMA, C_COMMA_SP):
            return ((PUSH, (C_COLON, 0, 0), self.key_node),)
        return ()


def any_value(max_depth: int) -> Node:
    """Any JSON value, with objects and arrays nested at most ``max_depth`` deep (a bound
    keeps the automaton's state space finite)."""
    scalars = [FreeString(), Number(integer=False), Literals([b"true", b"false", b"null"])]
    node = AnyOf(scalars)
    for _ in range(max_depth):
        node = AnyOf([Object([], extra=node), Array([], rest=node)] + scalars)
    return node
