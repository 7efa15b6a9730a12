"""A strict UTF-8 byte automaton (RFC 3629): rejects overlong forms, surrogates and code
points above U+10FFFF, so every accepted byte string decodes with Python's ``utf-8``.

States: ``ACCEPT`` (0) between characters, 1..7 inside a multi-byte character.  The
grammar keeps this state inside JSON strings because tokens may end mid-character
(byte-fallback tokens like <0xE2>)."""

ACCEPT = 0
DEAD = -1
N_STATES = 8

# state -> (lowest, highest) allowed continuation byte, and the state after it
_CONTINUATION = {
    1: (0x80, 0xBF, ACCEPT),   # last continuation byte
    2: (0x80, 0xBF, 1),        # two left
    3: (0xA0, 0xBF, 1),        # after E0: no overlong 3-byte forms
    4: (0x80, 0x9F, 1),        # after ED: no surrogates
    5: (0x80, 0xBF, 2),        # three left (after F1..F3)
    6: (0x90, 0xBF, 2),        # after F0: no overlong 4-byte forms
    7: (0x80, 0x8F, 2),        # after F4: nothing above U+10FFFF
}


def _lead_state(byte: int) -> int:
    """The state after a character's first byte (ACCEPT for ASCII)."""
    if byte < 0x80:
        return ACCEPT
    if 0xC2 <= byte <= 0xDF:
        return 1
    if byte == 0xE0:
        return 3
    if byte == 0xED:
        return 4
    if 0xE1 <= byte <= 0xEF:
        return 2
    if byte == 0xF0:
        return 6
    if 0xF1 <= byte <= 0xF3:
        return 5
    if byte == 0xF4:
        return 7
    return DEAD  # stray continuation byte, C0/C1 or F5..FF


def _build_table() -> list[list[int]]:
    table = [[DEAD] * 256 for _ in range(N_STATES)]
    for byte in range(256):
        table[ACCEPT][byte] = _lead_state(byte)
    for state, (low, high, after) in _CONTINUATION.items():
        for byte in range(low, high + 1):
            table[state][byte] = after
    return table


# NEXT[state][byte] -> next state or DEAD
NEXT = _build_table()


def is_continuation(byte: int) -> bool:
    return 0x80 <= byte <= 0xBF


def run(state: int, data: bytes) -> int:
    """The state after ``data`` from ``state``, or DEAD."""
    for byte in data:
        state = NEXT[state][byte]
        if state == DEAD:
            return DEAD
    return state
