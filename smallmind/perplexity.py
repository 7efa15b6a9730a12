"""Perplexity of a model on a text, as llama.cpp's llama-perplexity measures it, and the
KL divergence of one model's predictions from another's (``python -m smallmind perplexity``).

The text is tokenized with BOS, cut into chunks of ``ctx`` tokens (a tail shorter than ctx
is dropped), and the first token of each chunk is replaced by BOS.  Each chunk is run from
position 0; only its second half is scored (tokens ctx/2 .. ctx-1, each predicted from the
tokens before it in its chunk), so every scored token has at least ctx/2 tokens of context.
PPL = exp(mean negative log-likelihood), ± PPL x the standard error of that mean.
(llama-perplexity scores tokens ctx/2+1 .. ctx-1; the reference file of this project's tests,
../shared/reference/ppl, scores ctx/2 .. ctx-1, and so does this.)

``--save-logits FILE`` writes, per scored token, the log-probability of the actual token
(float32), the argmax id and the whole log-probability row (float16).  ``--kl-divergence
FILE`` scores the same tokens and compares: mean KL(saved || this model), the share of
tokens where both argmaxes agree, and mean |log-prob of the actual token - saved one|.

File layout: b"SMLOGP01" | u32 header length | header JSON {"ctx", "first", "n_vocab",
"tokens"} | one record per scored token (float32 lp, int32 top-1, float16 x n_vocab)."""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
import sys
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from smallmind.convert import atomic_output
from smallmind.errors import ConfigError, ModelFormatError

__all__ = ["make_chunks", "ChunkScorer", "Scores", "perplexity", "run"]

LOGITS_MAGIC = b"SMLOGP01"
_U32 = struct.Struct("<I")
BATCH = 128  # tokens per forward call (bounds the logits buffer)
SOFTMAX_ROWS = 16  # rows per float64 log-softmax (bounds its temporary)


def record_dtype(n_vocab: int) -> np.dtype:
    return np.dtype([("lp", "<f4"), ("top", "<i4"), ("logprobs", "<f2", (n_vocab,))])


def make_chunks(tokens: list[int], ctx: int, n_chunks: int | None, bos_id: int) -> list[np.ndarray]:
    """Chunks of ctx tokens, each starting with BOS (at most n_chunks of them)."""
    available = len(tokens) // ctx
    if available == 0:
        raise ConfigError(f"the text has {len(tokens)} tokens; a chunk needs --ctx {ctx}")
    count = available if n_chunks is None else min(n_chunks, available)
    chunks = []
    for i in range(count):
        chunk = np.array(tokens[i * ctx : (i + 1) * ctx], np.int32)
        chunk[0] = bos_id
        chunks.append(chunk)
    return chunks


@dataclass
class Scores:
    """Per scored token: log-probability of the actual token, argmax, and (if kept) the
    float16 log-probability rows."""

    lp: np.ndarray
    top: np.ndarray
    rows: np.ndarray | None = None


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


class ChunkScorer:
    """Runs chunks through a model and scores their second halves."""

    def __init__(self, model, keep_rows: bool = False):
        self.model = model
        self.keep_rows = keep_rows

    def score(self, chunk: np.ndarray) -> Scores:
        ctx = len(chunk)
        first = ctx // 2
        lps, tops, rows = [], [], []
        for start in range(0, ctx, BATCH):
            part = chunk[start : start + BATCH]
            # row j predicts token j + 1: rows first-1 .. ctx-2 predict tokens first .. ctx-1
            wanted = np.arange(max(start, first - 1), min(start + len(part), ctx - 1), dtype=np.int32)
            logits = self.model.forward(
                part,
                np.zeros(len(part), np.int32),
                np.arange(start, start + len(part), dtype=np.int32),
                wanted - start,
            )
            for i in range(0, len(wanted), SOFTMAX_ROWS):
                lp_rows = log_softmax(logits[i : i + SOFTMAX_ROWS])
                targets = chunk[wanted[i : i + SOFTMAX_ROWS] + 1]
                lps.append(lp_rows[np.arange(len(targets)), targets])
                tops.append(lp_rows.argmax(axis=-1).astype(np.int32))
                if self.keep_rows:
                    rows.append(lp_rows.astype(np.float16))
        return Scores(
            np.concatenate(lps), np.concatenate(tops), np.concatenate(rows) if self.keep_rows else None
        )


def perplexity(lp: np.ndarray) -> tuple[float, float]:
    """(PPL, its standard error) from the scored tokens' log-probabilities."""
    nll = -np.asarray(lp, np.float64)
    mean = nll.mean()
    err = nll.std(ddof=1) / math.sqrt(len(nll)) if len(nll) > 1 else 0.0
    ppl = math.exp(mean)
    return ppl, ppl * err


# ------------------------------------------------------------------ saved log-probabilities
class SavedLogits:
    """A --save-logits file, memory-mapped; every length checked against the file size."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except FileNotFoundError:
            raise ConfigError(f"logits file not found: {path}") from None
        try:
            if len(mm) < 12 or mm[:8] != LOGITS_MAGIC:
                raise ValueError("not a file written by --save-logits")
            (hlen,) = _U32.unpack_from(mm, 8)
            if hlen > len(mm) - 12:
                raise ValueError("header runs past the end of the file")
            head = json.loads(mm[12 : 12 + hlen].decode("utf-8"))
            self.ctx, self.first, self.n_vocab = int(head["ctx"]), int(head["first"]), int(head["n_vocab"])
            self.tokens = [int(t) for t in head["tokens"]]
            if self.n_vocab <= 0 or self.ctx <= 1:
                raise ValueError("bad ctx or vocabulary size")
            dtype = record_dtype(self.n_vocab)
            n = len(self.tokens) // self.ctx * (self.ctx - self.first)
            if len(mm) - 12 - hlen != n * dtype.itemsize:
                raise ValueError(f"{len(mm) - 12 - hlen} bytes of records, expected {n} x {dtype.itemsize}")
            self.records = np.frombuffer(mm, dtype=dtype, count=n, offset=12 + hlen)
        except (ValueError, KeyError, TypeError, UnicodeError) as e:
            raise ModelFormatError(f"{path}: {e}") from None


def _write_header(f, ctx: int, first: int, n_vocab: int, chunks: list[np.ndarray]) -> None:
    head = json.dumps(
        {"ctx": ctx, "first": first, "n_vocab": n_vocab, "tokens": [int(t) for c in chunks for t in c]}
    ).encode()
    f.write(LOGITS_MAGIC + _U32.pack(len(head)) + head)


def kl_stats(base: np.ndarray, ours: Scores, base_lp: np.ndarray, base_top: np.ndarray) -> dict:
    """Mean KL(base || ours) with its standard error, same-top-1 share, mean |Δ log-prob|."""
    p_log = base.astype(np.float64)
    q_log = ours.rows.astype(np.float64)
    p = np.exp(p_log)
    kl = (p * (p_log - q_log)).sum(axis=-1)
    return {"kl": kl, "same_top": ours.top == base_top, "dlp": np.abs(ours.lp - base_lp)}


# ------------------------------------------------------------------ the command
def run(
    model_path: str,
    text_path: str,
    ctx: int = 512,
    n_chunks: int | None = None,
    save_logits: str | None = None,
    kl_file: str | None = None,
    out: TextIO = sys.stdout,
) -> dict:
    """The `perplexity` command; returns the figures it printed."""
    from smallmind.engine.model import Model
    from smallmind.engine.tokenizer import Tokenizer
    from smallmind.modelfile import open_model_file

    if ctx < 4 or ctx % 2:
        raise ConfigError(f"--ctx must be an even number >= 4, got {ctx}")
    if n_chunks is not None and n_chunks <= 0:
        raise ConfigError(f"--chunks must be positive, got {n_chunks}")
    try:
        with open(text_path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"text file not found: {text_path}") from None
    except (UnicodeError, IsADirectoryError) as e:
        raise ConfigError(f"cannot read {text_path} as UTF-8 text: {e}") from None
    try:
        with open_model_file(model_path) as g:
            tokenizer = Tokenizer.from_gguf(g.metadata)
    except FileNotFoundError:
        raise ConfigError(f"model file not found: {model_path}") from None
    tokens = tokenizer.encode(text, add_special=True, parse_special=False)
    chunks = make_chunks(tokens, ctx, n_chunks, tokenizer.bos_id)
    base = SavedLogits(kl_file) if kl_file else None
    if base is not None and (base.ctx != ctx or base.tokens != [int(t) for c in chunks for t in c]):
        raise ConfigError(
            f"{kl_file} scored other tokens (ctx {base.ctx}, {len(base.tokens)} tokens); "
            f"use the same text, --ctx and --chunks"
        )
    model = Model.load(model_path, n_ctx=ctx, n_slots=1, max_batch_tokens=BATCH)
    first = ctx // 2
    lps, tops, kls = [], [], []
    with contextlib.ExitStack() as stack:
        stack.callback(model.close)
        if model.n_ctx < ctx:
            raise ConfigError(f"--ctx {ctx} exceeds the model's context length {model.n_ctx}")
        if base is not None and base.n_vocab != model.vocab_size:
            raise ConfigError(f"{kl_file} has a vocabulary of {base.n_vocab}, the model {model.vocab_size}")
        sink = None
        if save_logits:  # closed, then renamed into place, only if every chunk was scored
            sink = stack.enter_context(open(stack.enter_context(atomic_output(save_logits)), "wb"))
            _write_header(sink, ctx, first, model.vocab_size, chunks)
        scorer = ChunkScorer(model, keep_rows=bool(save_logits or base))
        print(
            f"perplexity: {len(tokens)} tokens, {len(chunks)} chunks of {ctx}, "
            f"scoring tokens {first}..{ctx - 1} of each",
            file=out,
        )
        for i, chunk in enumerate(chunks):
            s = scorer.score(chunk)
            lps.append(s.lp)
            tops.append(s.top)
            if sink is not None:
                rec = np.empty(len(s.lp), record_dtype(model.vocab_size))
                rec["lp"], rec["top"], rec["logprobs"] = s.lp, s.top, s.rows
                sink.write(rec.tobytes())
            if base is not None:
                b = base.records[i * (ctx - first) : (i + 1) * (ctx - first)]
                kls.append(kl_stats(b["logprobs"], s, b["lp"], b["top"]))
            out.write(f"[{i + 1}]{perplexity(np.concatenate(lps))[0]:.4f},")
            out.flush()
    lp = np.concatenate(lps)
    ppl, err = perplexity(lp)
    print(f"\nFinal estimate: PPL = {ppl:.4f} +/- {err:.5f}", file=out)
    result = {"ppl": ppl, "ppl_err": err, "n": len(lp), "lp": lp, "top": np.concatenate(tops)}
    if save_logits:
        print(f"saved log-probabilities of {len(lp)} tokens to {save_logits}", file=out)
    if kls:
        kl = np.concatenate([k["kl"] for k in kls])
        same = np.concatenate([k["same_top"] for k in kls])
        dlp = np.concatenate([k["dlp"] for k in kls])
        base_ppl = perplexity(base.records["lp"])[0]
        result.update(
            kl=float(kl.mean()),
            kl_err=float(kl.std(ddof=1) / math.sqrt(len(kl))) if len(kl) > 1 else 0.0,
            same_top1=float(same.mean()),
            mean_abs_dlp=float(dlp.mean()),
            base_ppl=base_ppl,
        )
        print(
            f"vs {kl_file} (PPL {base_ppl:.4f}): mean KL divergence {result['kl']:.6f} +/- "
            f"{result['kl_err']:.6f}, same top-1 {100 * result['same_top1']:.2f}%, "
            f"mean |delta log-prob| {result['mean_abs_dlp']:.4f}",
            file=out,
        )
    return result
