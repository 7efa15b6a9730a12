"""Pre-tokenizers and the byte alphabet of byte-level BPE (``tokenizer.ggml.model == "gpt2"``).

``tokenizer.ggml.pre`` names a pre-tokenizer: a list of regular expressions applied one
after the other, as llama.cpp's ``unicode_regex_split`` does: every regex splits each piece
left by the previous one into its matches *and* the unmatched gaps between them (a gap is
kept as a piece of its own, never dropped).  Each regex sees only its piece, so a look-ahead
such as ``\\s+(?!\\S)`` treats the end of the piece as the end of the text.

The names and the flags that go with them (merges ignored for whole-token words, BOS added
by default, detokenizer space clean-up) follow llama.cpp's ``llama_vocab::impl::load``.
A name llama.cpp does not know, or one whose regexes SmallMind does not carry, is refused
with :class:`~smallmind.errors.ModelFormatError` (llama.cpp refuses unknown names too).
A missing or empty name means ``"default"``, as in llama.cpp (which warns that generation
quality will suffer).

Regexes use the third-party ``regex`` package for ``\\p{L}``/``\\p{N}``/``\\p{P}`` classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import regex

from ..errors import ModelFormatError

__all__ = ["PreTokenizer", "get_pretokenizer", "BYTE_TO_UNICODE", "UNICODE_TO_BYTE", "BYTE_ENCODE_TABLE"]

# --------------------------------------------------------------------------- regexes
# As llama.cpp writes them (its "adapted" forms: (?i:'s|...) spelt out case by case).
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"

_FAMILIES: dict[str, tuple[str, ...]] = {
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "gpt2": (_GPT2,),
    "starcoder": (r"\p{N}", _GPT2),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"),
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
}

# name -> (family, ignore_merges, add_bos default, clean_spaces, bos_id forced to None)
_NAMES: dict[str, tuple[str, bool, bool, bool, bool]] = {}


def _add(names, family, *, ignore_merges=False, add_bos=False, clean_spaces=True, no_bos=False):
    for n in names:
        _NAMES[n] = (family, ignore_merges, add_bos, clean_spaces, no_bos)


_add(["default"], "default")
_add(["llama3", "llama-v3", "llama-bpe", "falcon3"], "llama3", ignore_merges=True, add_bos=True)
_add(["dbrx", "smaug-bpe"], "llama3")
_add(["chatglm-bpe"], "llama3", no_bos=True)
_add(["qwen2"], "qwen2", clean_spaces=False)
_add(["stablelm2", "megrez"], "qwen2")
_add(
    [
        "gpt-2",
        "phi-2",
        "jina-es",
        "jina-de",
        "gigachat",
        "jina-v1-en",
        "jina-v2-es",
        "jina-v2-de",
        "jina-v2-code",
        "roberta-bpe",
        "mpt",
        "olmo",
        "jais",
    ],
    "gpt2",
)
_add(["starcoder", "refact", "codeshell", "exaone", "minerva-7b"], "starcoder")
_add(["command-r", "smollm"], "starcoder", clean_spaces=False)
_add(["falcon"], "falcon")

# Known to llama.cpp but not carried here (their regexes are long hand-made character
# lists or need behaviour we do not implement).
_KNOWN_UNSUPPORTED = {
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "poro-chat",
    "viking",
    "tekken",
    "bloom",
    "gpt3-finnish",
    "chameleon",
}


@dataclass(frozen=True)
class PreTokenizer:
    name: str
    family: str
    patterns: tuple[str, ...]
    ignore_merges: bool
    add_bos: bool
    clean_spaces: bool
    no_bos: bool
    # the patterns compiled once, set by __post_init__
    _compiled: tuple[regex.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_compiled", tuple(regex.compile(p) for p in self.patterns))

    def split(self, text: str) -> list[str]:
        """Split ``text`` into pre-tokens (strings, in order, covering the whole text)."""
        compiled = self._compiled
        if not text:
            return []
        first = compiled[0]
        words = first.findall(text)
        # Fast path: the matches cover the text (true for llama3/qwen2 patterns).
        if sum(map(len, words)) != len(text):
            words = _split_keep_gaps(first, text, 0, len(text))
        for rx in compiled[1:]:
            out: list[str] = []
            for w in words:
                out.extend(_split_keep_gaps(rx, w, 0, len(w)))
            words = out
        return words


def _split_keep_gaps(rx, text: str, start: int, end: int) -> list[str]:
    out = []
    pos = start
    for m in rx.finditer(text, start, end):
        s, e = m.span()
        if s > pos:
            out.append(text[pos:s])
        if e > s:
            out.append(text[s:e])
        pos = e
    if pos < end:
        out.append(text[pos:end])
    return out


def get_pretokenizer(name: str | None) -> PreTokenizer:
    """The pre-tokenizer for a ``tokenizer.ggml.pre`` value (None/"" -> "default")."""
    if name is None or name == "":
        name = "default"
    if not isinstance(name, str):
        raise ModelFormatError(f"tokenizer.ggml.pre must be a string, got {name!r}")
    entry = _NAMES.get(name)
    if entry is None:
        if name in _KNOWN_UNSUPPORTED:
            raise ModelFormatError(
                f"pre-tokenizer {name!r} (tokenizer.ggml.pre) is not supported by SmallMind"
            )
        raise ModelFormatError(
            f"unknown pre-tokenizer type {name!r} (tokenizer.ggml.pre); supported: "
            + ", ".join(sorted(_NAMES))
        )
    family, ignore_merges, add_bos, clean_spaces, no_bos = entry
    return PreTokenizer(name, family, _FAMILIES[family], ignore_merges, add_bos, clean_spaces, no_bos)


# --------------------------------------------------------------------------- bytes
def _bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte -> printable character map."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = [""] * 256
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_UNICODE: list[str] = _bytes_to_unicode()
UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_UNICODE)}
# str.translate table: a latin-1 decoded byte string -> GPT-2 alphabet
BYTE_ENCODE_TABLE: dict[int, str] = {b: c for b, c in enumerate(BYTE_TO_UNICODE)}
# str.translate table: GPT-2 alphabet -> latin-1 characters (then .encode("latin-1"))
BYTE_DECODE_TABLE: dict[int, int] = {ord(c): b for b, c in enumerate(BYTE_TO_UNICODE)}
