"""Tokenizer tests: llama.cpp's own tokenizer vectors, the Gemma 3 reference prompts, round
trips, streaming decode, special tokens and broken metadata."""

import functools
import json

import numpy as np
import pytest

from smallmind.engine import tokenizer as tokmod
from smallmind.engine.tokenizer import StreamDecoder, Tokenizer
from smallmind.errors import ModelFormatError
from smallmind.gguf import GGUFFile
from tests.conftest import default_model_path, reference_path

pytestmark = pytest.mark.isa  # run again against the wheel under each ISA (scripts/check_wheel.sh)

VOCABS = ["llama-spm", "llama-bpe", "qwen2"]


@functools.cache
def _metadata(name: str) -> dict:
    if name == "gemma3":
        path = default_model_path()
    else:
        path = reference_path("vocab", f"ggml-vocab-{name}.gguf")
    f = GGUFFile(path)
    md = {k: v for k, v in f.metadata.items() if k.startswith("tokenizer.")}
    f.close()
    return md


@functools.cache
def _tok(name: str) -> Tokenizer:
    return Tokenizer.from_gguf(_metadata(name))


def tok(name: str) -> Tokenizer:
    return _tok(name)


# ------------------------------------------------------------------ reference vectors
def _read_vectors(name):
    inp = reference_path("vocab", f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    out = reference_path("vocab", f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8")
    texts = inp.split("\n__ggml_vocab_test__\n")
    assert texts[-1] == "", "the .inp file should end with a separator line"
    texts = texts[:-1]
    lines = out.split("\n")[: len(texts)]
    assert len(lines) == len(texts)
    return texts, [[int(x) for x in line.split()] for line in lines]


@pytest.mark.parametrize("name", VOCABS)
def test_llama_cpp_vocab_vectors(name):
    t = tok(name)
    texts, expected = _read_vectors(name)
    assert len(texts) > 20
    bad = []
    for text, exp in zip(texts, expected):
        got = t.encode(text, add_special=False)
        if got != exp:
            bad.append(f"{text!r}:\n   expected {exp}\n   got      {got}")
    assert not bad, f"{len(bad)}/{len(texts)} mismatches:\n" + "\n".join(bad)


def test_gemma3_reference_prompts():
    t = tok("gemma3")
    ref = json.loads(reference_path("gemma3-270m-greedy.json").read_text(encoding="utf-8"))
    cases = ref["cases"]
    assert cases
    bad = []
    for c in cases:
        got = t.encode(c["prompt"], add_special=True, parse_special=True)
        if got != c["prompt_ids"]:
            bad.append(f"encode {c['prompt']!r}:\n   expected {c['prompt_ids']}\n   got {got}")
        # greedy_text is the plain concatenation of the generated tokens' pieces (its
        # leading space is real: no stripping for a continuation)
        text = t.decode(c["greedy_ids"])
        if text != c["greedy_text"]:
            bad.append(f"decode {c['greedy_ids']}:\n   expected {c['greedy_text']!r}\n   got {text!r}")
        sd = StreamDecoder(t)
        streamed = "".join(sd.push(i) for i in c["greedy_ids"]) + sd.flush()
        if streamed != c["greedy_text"]:
            bad.append(f"stream {c['greedy_ids']}: got {streamed!r}")
    assert not bad, "\n".join(bad)


def test_gemma3_vocab_facts():
    t = tok("gemma3")
    assert t.vocab_size == 262144
    assert (t.bos_id, t.eos_id) == (2, 1)
    assert t.add_space_prefix is False and t.add_bos and not t.add_eos
    assert t.eot_id == t.token_to_id("<end_of_turn>") == 106
    assert t.eog_ids == {1, 106}
    assert t.is_special(105) and t.is_special(2) and not t.is_special(107)  # 107 = "\n"


# ------------------------------------------------------------------ round trips
TRICKY = [
    "",
    " ",
    "  ",
    "Hello world",
    " Hello, world! ",
    "  two leading spaces and two trailing  ",
    "tabs\tand\t\ttabs",
    "line1\nline2\n\nline4\n\n\n",
    "\r\nwindows\r\n",
    "naïve café Ünïcödé Ångström",
    "日本語のテキストと中文文本",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "Ελληνικά και русский",
    "emoji 🙂 family 👨‍👩‍👧 flag 🇫🇷 skin 👍🏽",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛",
    "zero\u200bwidth\u00a0nbsp\u3000ideo",
    "x" * 300,
    " " * 40 + "indented",
    "\n" * 40,
    "mixed 123456789 numbers 3.14159 1,000,000",
    "code: def f(x):\n    return x**2  # comment\n",
    "<s> </s> <unk> <start_of_turn> <|im_end|> <table>",
    "a'b c'd I'm you're we'll they'VE 's",
    "combining e\u0301 a\u0308 ḁ",
    "\x00\x01\x7f control bytes",
]


@pytest.mark.parametrize("name", VOCABS + ["gemma3"])
def test_round_trip(name):
    t = tok(name)
    bad = []
    for s in TRICKY:
        for add_special in (False, True):
            ids = t.encode(s, add_special=add_special)
            back = t.decode(ids, skip_special=True, strip_leading_space=True)
            if back != s:
                bad.append((s, add_special, ids, back))
    assert not bad, "\n".join(f"{s!r} add_special={a}: {ids} -> {b!r}" for s, a, ids, b in bad)


@pytest.mark.parametrize("name", VOCABS + ["gemma3"])
def test_stream_decoder_matches_decode(name):
    t = tok(name)
    split_chars = 0
    for s in TRICKY:
        ids = t.encode(s, add_special=True)
        for skip in (True, False):
            sd = StreamDecoder(t, skip_special=skip)
            outs = [sd.push(i) for i in ids]
            outs.append(sd.flush())
            assert "".join(outs) == t.decode(ids, skip_special=skip), s
            assert not any("\ufffd" in o for o in outs), (s, outs)
        # count tokens that end in the middle of a UTF-8 character
        data = b""
        for i in ids:
            data += t.token_bytes(i)
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                split_chars += 1
    assert split_chars > 0, "no test string split a character across tokens"


def test_stream_decoder_holds_back_partial_bytes():
    t = tok("llama-spm")
    ids = t.encode("🙂", add_special=False)  # "▁" + 4 byte-fallback tokens
    assert [t.token_bytes(i) for i in ids[1:]] == [b"\xf0", b"\x9f", b"\x99", b"\x82"]
    sd = StreamDecoder(t)
    assert [sd.push(i) for i in ids] == [" ", "", "", "", "🙂"]
    assert sd.flush() == ""
    sd = StreamDecoder(t)
    assert sd.push(ids[1]) == "" and sd.push(ids[2]) == ""
    assert sd.flush() == "\ufffd"  # incomplete at the end: replaced, not dropped


def test_stream_continuation_keeps_leading_space():
    t = tok("llama-spm")
    ids = t.encode("Hello", add_special=False)
    sd = StreamDecoder(t)
    assert "".join(sd.push(i) for i in ids) + sd.flush() == " Hello"
    assert t.decode(ids) == " Hello"
    assert t.decode(ids, strip_leading_space=True) == "Hello"
    assert t.decode([t.bos_id] + ids, skip_special=True, strip_leading_space=True) == "Hello"
    assert t.decode([t.bos_id] + ids, strip_leading_space=True) == "<s>Hello"


# ------------------------------------------------------------------ special tokens
def test_special_tokens_gemma():
    t = tok("gemma3")
    text = "<start_of_turn>user\nHi<end_of_turn>\n"
    on = t.encode(text, add_special=False, parse_special=True)
    off = t.encode(text, add_special=False, parse_special=False)
    assert on[0] == 105 and 106 in on
    assert 105 not in off and 106 not in off
    assert t.decode(off) == text
    assert t.decode(on) == text
    assert t.decode(on, skip_special=True) == "user\nHi\n"
    # user-defined tokens are split out even without parse_special (as llama.cpp does)
    assert t.encode("<table>", add_special=False) == [168]
    assert t.encode("a\n\n\nb", add_special=False) == (
        t.encode("a", add_special=False) + [109] + t.encode("b", add_special=False)
    )
    assert t.encode("   ", add_special=False) == [139]  # three spaces
    # longest match first
    assert t.encode("\n" * 31, add_special=False) == [137]
    assert t.encode("\n" * 33, add_special=False) == [137, 108]


def test_special_tokens_bpe():
    t = tok("llama-bpe")
    s = "<|begin_of_text|>hi<|eot_id|>"
    assert t.encode(s, add_special=False, parse_special=True) == (
        [128000] + t.encode("hi", add_special=False) + [128009]
    )
    plain = t.encode(s, add_special=False)
    assert 128000 not in plain and 128009 not in plain
    assert t.decode(plain) == s
    q = tok("qwen2")
    assert q.encode("<|im_start|>user", add_special=False, parse_special=True)[0] == 151644
    assert q.eog_ids == {151643, 151645}


def test_spm_space_prefix_after_special():
    t = tok("llama-spm")
    hello = t.encode("hello", add_special=False)
    assert t.encode("<s>hello", add_special=False, parse_special=True) == [1] + hello
    assert t.encode("hello", add_special=True) == [1] + hello
    assert t.decode(hello, strip_leading_space=True) == "hello"


def test_bos_eos_behaviour():
    assert tok("llama-spm").encode("hi")[0] == 1
    assert tok("llama-bpe").encode("hi")[0] == 128000  # llama3 pre: add_bos default
    assert tok("qwen2").encode("hi")[0] != 151643  # no BOS for qwen2
    assert tok("gemma3").encode("") == [2]
    assert tok("gemma3").encode("", add_special=False) == []
    md = dict(_metadata("llama-spm"))
    md["tokenizer.ggml.add_eos_token"] = True
    md["tokenizer.ggml.add_bos_token"] = False
    t = Tokenizer.from_gguf(md)
    ids = t.encode("hi")
    assert ids[0] != 1 and ids[-1] == 2
    assert t.encode("hi", add_special=False)[-1] != 2


def test_token_bytes():
    t = tok("llama-spm")
    assert t.token_bytes(t.token_to_id("<0xF0>")) == b"\xf0"
    assert t.token_bytes(t.token_to_id("▁Hello")) == b" Hello"
    assert t.token_bytes(1) == b"<s>"
    b = tok("llama-bpe")
    assert b.token_bytes(b.token_to_id("ĠHello")) == b" Hello"
    assert b.token_bytes(b.token_to_id("Ċ")) == b"\n"


def test_clean_spaces_option():
    t = tok("llama-bpe")
    assert t.clean_spaces
    ids = t.encode("Hello , world . I 'm here ' x ' y", add_special=False)
    assert t.decode(ids) == "Hello , world . I 'm here ' x ' y"
    assert t.decode(ids, clean_spaces=True) == "Hello, world. I'm here'x'y"


# ------------------------------------------------------------------ algorithm checks
def _spm_unchunked(t: Tokenizer, text: str) -> list[int]:
    """llama.cpp's SPM on a whole fragment: no word cache, no cuts, heap algorithm."""
    out = []
    for f in t._partition[False].partition(text):
        if isinstance(f, int):
            out.append(f)
            continue
        if t.add_space_prefix and not out:
            f = " " + f
        syms = t._spm_merge_long(f.replace(" ", tokmod.SPACE))
        for s in syms:
            i = t.token_to_id(s)
            out.extend([i] if i is not None else [t._byte_token(b) for b in s.encode("utf-8")])
    return out


@pytest.mark.parametrize("name", ["llama-spm", "gemma3"])
def test_spm_word_cuts_are_exact(name):
    """Cutting the text into words before "▁" (for the cache) changes nothing."""
    t = tok(name)
    texts, _ = _read_vectors("llama-spm")
    rng = np.random.default_rng(0)
    alphabet = list("ab c>.<▁/ \n") + ["é", "日", "🙂"]
    randoms = ["".join(rng.choice(alphabet, size=rng.integers(1, 60))) for _ in range(200)]
    bad = []
    for s in texts + TRICKY + randoms + ["a>  </b> x >  <", "foo> </bar"]:
        s = s.replace("\n", " ")  # one fragment (gemma's "\n" is a user-defined token)
        if not s:
            continue
        got = t.encode(s, add_special=False)
        exp = _spm_unchunked(t, s)
        if got != exp:
            bad.append((s, got, exp))
    assert not bad, bad[:5]


@pytest.mark.parametrize("name", ["llama-spm", "gemma3", "qwen2", "llama-bpe"])
def test_heap_and_compiled_merges_agree(name):
    """Long words take the heap loop, short ones the compiled loop: both give one answer."""
    t = tok(name)
    words = [
        "▁tokenization",
        "▁" * 7 + "x",
        "abcabcabc",
        "▁日本語",
        "ĠHello",
        "ĠĠĠĠ",
        "12345",
        "ĠtokenizationĠisĠfun",
        "a" * 20,
        "▁a>▁</b>▁",
        "ĊĊĠĠĠ",
    ]
    rng = np.random.default_rng(1)
    letters = list("abcdeĠ▁>.日é")
    words += ["".join(rng.choice(letters, size=rng.integers(2, 40))) for _ in range(300)]
    compared = 0
    for w in words:
        syms = t._spm_merge_long(w) if t.model == "llama" else t._bpe_merge_long(w)
        ids_heap = [t.token_to_id(s) for s in syms]
        whole = t.model == "gpt2" and t._ignore_merges and t.token_to_id(w) is not None
        if None not in ids_heap and not whole:
            assert t._c.encode_word(w) == ids_heap, w
            compared += 1
    assert compared >= 20  # words whose every symbol is a token (so ids compare directly)


def test_long_words_use_heap_path():
    t = tok("llama-bpe")
    s = "a" * 5000 + " " + "日本語" * 700
    ids = t.encode(s, add_special=False)
    assert t.decode(ids) == s
    g = tok("gemma3")
    s = "東京は日本の首都です。" * 300  # no spaces: one long SPM word
    ids = g.encode(s, add_special=False)
    assert g.decode(ids) == s


# ------------------------------------------------------------------ broken metadata
def _broken(**changes):
    md = dict(_metadata("llama-spm"))
    for k, v in changes.items():
        key = "tokenizer.ggml." + k
        if v is None:
            md.pop(key, None)
        else:
            md[key] = v
    return md


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"tokens": None}, "tokens"),
        ({"model": None}, "tokenizer.ggml.model"),
        ({"model": "t5x"}, "unsupported tokenizer model"),
        ({"tokens": []}, "empty"),
        ({"tokens": [1, 2, 3]}, "array of strings"),
        ({"scores": np.zeros(5, dtype=np.float32)}, "scores"),
        ({"token_type": np.zeros(7, dtype=np.int32)}, "token_type"),
        ({"bos_token_id": "one"}, "bos_token_id"),
        ({"add_bos_token": "yes"}, "add_bos_token"),
    ],
)
def test_broken_metadata(changes, match):
    with pytest.raises(ModelFormatError, match=match):
        Tokenizer.from_gguf(_broken(**changes))


def test_broken_bpe_metadata():
    md = dict(_metadata("qwen2"))
    md["tokenizer.ggml.pre"] = "no-such-pre"
    with pytest.raises(ModelFormatError, match="unknown pre-tokenizer"):
        Tokenizer.from_gguf(md)
    md["tokenizer.ggml.pre"] = "tekken"
    with pytest.raises(ModelFormatError, match="not supported"):
        Tokenizer.from_gguf(md)
    md = dict(_metadata("qwen2"))
    del md["tokenizer.ggml.merges"]
    with pytest.raises(ModelFormatError, match="merges"):
        Tokenizer.from_gguf(md)
    md = dict(_metadata("qwen2"))
    del md["tokenizer.ggml.pre"]  # missing: llama.cpp falls back to "default"
    t = Tokenizer.from_gguf(md)
    assert t.pre == "default"
    assert t.decode(t.encode("Hello, world 123!", add_special=False)) == "Hello, world 123!"


def test_out_of_range_special_id_keeps_default():
    md = _broken(bos_token_id=10**6)
    assert Tokenizer.from_gguf(md).bos_id == 1


@pytest.mark.parametrize("name", ["llama-spm", "qwen2"])
def test_lone_surrogates_do_not_crash(name):
    t = tok(name)
    ids = t.encode("a\ud800b", add_special=False)
    assert t.decode(ids, strip_leading_space=True) == "a\ufffdb"


def test_decode_rejects_bad_ids():
    t = tok("llama-spm")
    with pytest.raises(ValueError):
        t.decode([t.vocab_size])
    with pytest.raises(ValueError):
        StreamDecoder(t).push(-1)
