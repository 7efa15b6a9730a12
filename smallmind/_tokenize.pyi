"""Types of the tokenizer's compiled merge loops (smallmind/_tokenize.pyx) for mypy.

Checked against the built module by tests/test_lint.py (mypy's stubtest)."""

from collections.abc import Callable

class SpmVocab:
    def __init__(
        self, tokens: list[str], scores: list[float], byte_ids: list[int | None], unk_id: int | None
    ) -> None: ...
    def encode_word(self, word: str) -> list[int]: ...
    def encode_words(
        self, words: list[str], cache: dict[str, tuple[int, ...]], out: list[int], max_cached: int
    ) -> None: ...

class BpeVocab:
    def __init__(self, tokens: list[str], merges: list[str], ignore_merges: bool) -> None: ...
    def encode_word(self, word: str) -> list[int]: ...
    def encode_words(
        self,
        words: list[str],
        cache: dict[str, tuple[int, ...]],
        out: list[int],
        max_cached: int,
        mapper: Callable[[str], str],
    ) -> None: ...
