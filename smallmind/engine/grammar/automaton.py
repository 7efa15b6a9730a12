"""The byte-level JSON pushdown automaton, run as an NFA over stacks.

A stack is a tuple of (node, local) frames, innermost last; ``()`` means the top-level
value is finished.  A *state* is the frozenset of stacks the input so far can be in (more
than one only while anyOf alternatives or "may end here" choices are still open).
States are immutable and hashable, so callers can intern and cache them."""

from .nodes import DONE, POP, PUSH, Node

State = frozenset
FINISHED: State = frozenset({()})


def closure(stacks) -> State:
    """Add every stack reachable by moves that consume no byte; drop stacks whose top
    can never consume (anyOf placeholders) since their alternatives are in the set."""
    seen = set()
    work = list(stacks)
    while work:
        stack = work.pop()
        if stack in seen:
            continue
        seen.add(stack)
        if not stack:
            continue
        node, local = stack[-1]
        below = stack[:-1]
        for move in node.eps(local):
            kind = move[0]
            if kind == PUSH:
                child = move[2]
                work.append(below + ((node, move[1]), (child, child.init)))
            elif kind == POP:
                work.append(below)
            else:  # REPLACE: become one alternative
                child = move[1]
                work.append(below + ((child, child.init),))
    return frozenset(s for s in seen if not s or not s[-1][0].passive)


def initial_state(root: Node) -> State:
    return closure([((root, root.init),)])


def step(state: State, byte: int) -> State | None:
    """The state after one more byte, or None when no stack can take it."""
    nxt = []
    for stack in state:
        if not stack:
            continue  # the value is finished: nothing may follow
        node, local = stack[-1]
        for outcome in node.feed(local, byte):
            if outcome is DONE:
                nxt.append(stack[:-1])
            else:
                nxt.append(stack[:-1] + ((node, outcome),))
    return closure(nxt) if nxt else None


def run(state: State | None, data: bytes) -> State | None:
    """The state after ``data`` (None: rejected somewhere)."""
    for byte in data:
        if state is None:
            return None
        state = step(state, byte)
    return state


def can_end(state: State) -> bool:
    """The input so far is a complete value (end of generation may come now)."""
    return () in state


def is_complete(state: State) -> bool:
    """The value is finished and nothing but end of generation may follow."""
    return state == FINISHED
