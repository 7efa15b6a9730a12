"""Token sampling: a fast per-sequence sampler (its parameters: engine/sampling_params.py).

The pipeline follows llama.cpp's default sampler chain (``common/sampling.cpp`` building on
``src/llama-sampling.cpp``)::

    logit_bias -> penalties -> top_k -> top_p -> min_p -> temperature -> dist

* ``logit_bias`` is added first (llama.cpp puts the logit-bias sampler in front of the chain,
  before the penalties; only the repetition penalty, which scales, can tell the two orders apart).
  With ``ignore_eos`` the end-of-generation ids given to the ``Sampler`` get ``-inf`` here, as
  llama.cpp does with its EOG logit bias.
* penalties look at the last ``penalty_last_n`` tokens of ``recent_tokens``: a repeated token's
  logit is divided by ``repetition_penalty`` when > 0 and multiplied by it when <= 0, then
  ``count * frequency_penalty + presence_penalty`` is subtracted.
* ``temperature == 0`` is greedy: argmax after bias and penalties, ties to the lowest id, no
  random draw.
* ``top_k`` keeps the k largest logits; ``top_p`` keeps the smallest prefix (by descending
  probability) whose cumulative probability reaches ``top_p``, probabilities being the softmax
  of the top-k survivors; ``min_p`` keeps tokens with ``p >= min_p * p_max``, i.e.
  ``logit >= max_logit + log(min_p)``.  All three work on the logits *before* temperature, as in
  llama.cpp, where the temperature sampler comes last.
* the survivors are divided by the temperature, soft-maxed and one token is drawn with the
  sequence's own ``numpy.random.Generator`` (exactly one uniform double per non-greedy sample).

Speed: ``sample_batch`` samples every sequence of an engine step in one native call
(csrc/sample.c, the GIL released once; ``Sampler.sample`` is a batch of one) that applies each
row's grammar mask, bias, penalties and filters and draws, bit-identical to the numpy chain
kept as ``Sampler.sample_numpy`` (the reference of tests/test_sampling.py and
scripts/bench_sampling.py, and the path for what C leaves to numpy: top_p without top_k and
draws over more than _SORT_MAX tokens, whose float32 exponentials are numpy's).  In both, the
full vocabulary (262,144 for Gemma 3) is never sorted.  Every filter keeps a prefix
of the descending order, so candidates come from block maxima (the k-th largest block maximum
is a value at least k tokens reach, so only the blocks reaching it are read) and vectorised
thresholds; only the few survivors are partitioned and sorted.  Without top_k, top_p needs the
softmax normaliser of the whole vocabulary (one float32 exp pass); its prefix is then found by
walking thresholds down from the max and bisecting the last band.  Drawing from more than a
few thousand candidates uses block sums instead of a full cumulative sum.  The results are
exact (no tail is dropped).
"""

from __future__ import annotations

import itertools
import math
import numbers
import threading
from collections.abc import Iterable, Sequence

import numpy as np

from smallmind import kernels
from smallmind.engine.sampling_params import SamplingParams

__all__ = [
    "Sampler",
    "sample_batch",
    "log_softmax",
    "logsumexp",
    "top_logprobs",
    "token_logprobs",
    "token_and_top_logprobs",
]

# Block length for the block maxima / block sums that stand in for full sorts and cumsums.
_BLOCK = 1024
# Largest candidate set that is sorted outright when cutting the top-p prefix.
_SORT_MAX = 4096


# --------------------------------------------------------------------------------------------
# Scratch buffers (per thread, per vocabulary size): no 1 MB allocation per token.
# --------------------------------------------------------------------------------------------


class _Scratch:
    __slots__ = ("logits", "work", "native", "fallback")

    def __init__(self, n: int) -> None:
        self.logits = np.empty(n, np.float32)
        self.work = np.empty(n, np.float32)
        self.native = kernels.sample_scratch(n)
        self.fallback = np.empty((0, n), np.float32)

    def fallback_rows(self, rows: int) -> np.ndarray:
        """(rows, n) float32 for the processed logits of rows C leaves to numpy (written only
        for those rows, so the pages of rows that never fall back are never touched)."""
        if self.fallback.shape[0] < rows:
            self.fallback = np.empty((rows, self.logits.shape[0]), np.float32)
        return self.fallback


_tls = threading.local()
_NO_TOKENS = np.empty(0, np.int64)  # an empty penalty window (nothing to sort)


def _scratch(n: int) -> _Scratch:
    cache = getattr(_tls, "cache", None)
    if cache is None:
        cache = _tls.cache = {}
    s = cache.get(n)
    if s is None:
        s = cache[n] = _Scratch(n)
    return s


def _as_logits(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits)
    if x.ndim != 1:
        raise ValueError(f"logits must be one-dimensional, got shape {x.shape}")
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)
    return x


_NAN = "logits contain NaN"
_ALL_INF = "every token has logit -inf: nothing can be sampled"


def _check_max(m: float) -> None:
    if math.isnan(m):
        raise FloatingPointError(_NAN)
    if m == -math.inf:
        raise FloatingPointError(_ALL_INF)


def _block_max(x: np.ndarray) -> np.ndarray:
    """Maximum of each run of _BLOCK entries (the last run may be shorter)."""
    n = x.shape[0]
    full = n - n % _BLOCK
    bm = x[:full].reshape(-1, _BLOCK).max(axis=1)
    if full < n:
        bm = np.append(bm, x[full:].max())
    return bm


def _ids_at_least(x: np.ndarray, bm: np.ndarray, thr: float) -> np.ndarray:
    """Ascending ids i with x[i] >= thr, reading only the blocks whose maximum reaches thr."""
    n = x.shape[0]
    t = np.float32(thr)
    blocks = np.flatnonzero(bm >= t)
    if blocks.size * 2 > bm.size:
        return np.flatnonzero(x >= t)
    nfull = n // _BLOCK
    ids = []
    fb = blocks[blocks < nfull]
    if fb.size:
        rows = np.take(x[: nfull * _BLOCK].reshape(-1, _BLOCK), fb, axis=0)
        pos = np.flatnonzero(rows >= t)  # (2-D np.nonzero is several times slower)
        ids.append(fb[pos // _BLOCK] * _BLOCK + pos % _BLOCK)
    if blocks.size and blocks[-1] == nfull and nfull * _BLOCK < n:
        ids.append(nfull * _BLOCK + np.flatnonzero(x[nfull * _BLOCK :] >= t))
    if not ids:
        return np.empty(0, np.intp)
    return ids[0] if len(ids) == 1 else np.concatenate(ids)


def _top_k_ids(x: np.ndarray, bm: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest entries of x, by value descending, ties -> lower id.

    The k-th largest block maximum is a value that at least k entries reach, so only the
    blocks reaching it can hold the top k: no pass over the full vector beyond ``bm``."""
    n = x.shape[0]
    if k >= n:
        idx = np.arange(n)
    else:
        nb = bm.shape[0]
        kth = np.partition(bm, nb - k)[nb - k] if k <= nb else -np.inf
        idx = _ids_at_least(x, bm, kth) if k <= nb else np.arange(n)
        if idx.size > k:
            vals = x[idx]
            kth = np.partition(vals, idx.size - k)[idx.size - k]
            above = idx[vals > kth]
            tied = idx[vals == kth][: k - above.size]  # ties at the cut -> lowest ids
            idx = np.concatenate((above, tied))
    order = np.argsort(-x[idx], kind="stable")
    return idx[order]


def _mass_prefix(
    x: np.ndarray, bm: np.ndarray, e: np.ndarray, cand: np.ndarray | None, target: float, m: float
) -> np.ndarray:
    """Smallest set of ids (within ``cand``, or all) whose weights ``e`` reach ``target`` when
    taken by descending ``x`` (ties -> lower id): the top-p prefix without a full sort.

    Walks thresholds m-1, m-2, m-4, ... down until the mass reaches ``target``; everything above
    the previous threshold is taken, and the cut inside the last band is found by bisecting on
    the logit value until at most _SORT_MAX entries are left to sort."""

    def at_least(thr: float) -> np.ndarray:
        if cand is None:
            return _ids_at_least(x, bm, thr)
        return cand[x[cand] >= np.float32(thr)]

    prev = np.empty(0, np.intp)
    prev_mass = 0.0
    d = 1.0
    while True:
        thr = m - d if d <= 128.0 else -np.inf
        cur = at_least(thr)
        mass = float(e[cur].sum(dtype=np.float64))
        if mass >= target or thr == -np.inf:
            break
        prev, prev_mass = cur, mass
        d *= 2.0
    taken = [prev]
    need = target - prev_mass
    hi = m - d / 2.0 if d > 1.0 else m + 1.0
    cur = cur[x[cur] < np.float32(hi)] if prev.size else cur
    lo = thr
    while cur.shape[0] > _SORT_MAX and need > 0.0 and hi - lo > 1e-6:
        mid = 0.5 * (hi + lo) if lo != -np.inf else hi - 128.0
        up = x[cur] >= np.float32(mid)
        upper = cur[up]
        mass = float(e[upper].sum(dtype=np.float64))
        if mass >= need:
            cur, lo = upper, mid
        else:
            taken.append(upper)
            need -= mass
            cur, hi = cur[~up], mid
    if need > 0.0 and cur.shape[0]:
        cur = cur[np.argsort(-x[cur], kind="stable")]
        cum = np.cumsum(e[cur], dtype=np.float64)
        cut = min(int(np.searchsorted(cum, need, side="left")) + 1, cur.shape[0])
        taken.append(cur[:cut])
    return taken[0] if len(taken) == 1 else np.concatenate(taken)


def _pick(w: np.ndarray, u: float) -> int:
    """Index i of weights w (float32, >= 0) with P(i) = w[i] / sum(w), from a uniform u.

    Two-level inverse CDF (block sums, then one block) instead of a full float64 cumsum."""
    n = w.shape[0]
    full = n - n % _BLOCK
    sums = w[:full].reshape(-1, _BLOCK).sum(axis=1)
    if full < n:
        sums = np.append(sums, w[full:].sum())
    cs = np.cumsum(sums, dtype=np.float64)
    target = u * cs[-1]
    b = min(int(np.searchsorted(cs, target, side="right")), sums.shape[0] - 1)
    while b > 0 and sums[b] == 0.0:
        b -= 1
    before = cs[b - 1] if b else 0.0
    lo = b * _BLOCK
    inner = np.cumsum(w[lo : lo + _BLOCK], dtype=np.float64)
    j = min(int(np.searchsorted(inner, target - before, side="right")), inner.shape[0] - 1)
    while j > 0 and w[lo + j] == 0.0:
        j -= 1
    return lo + j


# --------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------


class Sampler:
    """Samples the next token of one sequence.  Not thread-safe; one per sequence.

    ``eog_token_ids``: end-of-generation ids that ``ignore_eos`` bans (llama.cpp's EOG bias).
    ``params``' values were judged where they came in (``with_values``); the constructor
    checks its token ids against this vocabulary (``RequestValidationError``).
    """

    __slots__ = (
        "params",
        "vocab_size",
        "rng",
        "_bias_ids",
        "_bias_vals",
        "_pen",
        "_rep",
        "_freq",
        "_pres",
        "_last_n",
        "_temp",
        "_top_k",
        "_top_p",
        "_log_min_p",
        "_native",
    )

    def __init__(self, params: SamplingParams, vocab_size: int, *, eog_token_ids: Iterable[int] = ()) -> None:
        params.check_vocabulary(vocab_size)
        self.params = params
        self.vocab_size = v = int(vocab_size)
        seed = params.seed
        # PCG64 wants a non-negative seed; negative ints are folded (deterministically).
        self.rng = np.random.Generator(np.random.PCG64(None if seed is None else seed % 2**64))

        bias = {int(t): float(b) for t, b in params.logit_bias.items() if b != 0}
        if params.ignore_eos:
            for t in eog_token_ids:
                if 0 <= int(t) < v:
                    bias[int(t)] = -math.inf
        ids = sorted(bias)
        self._bias_ids = np.array(ids, dtype=np.int64)
        self._bias_vals = np.array([bias[t] for t in ids], dtype=np.float32)

        self._rep = float(params.repetition_penalty)
        self._freq = float(params.frequency_penalty)
        self._pres = float(params.presence_penalty)
        self._last_n = int(params.penalty_last_n)
        self._pen = self._last_n != 0 and (self._rep != 1.0 or self._freq != 0.0 or self._pres != 0.0)
        self._temp = float(params.temperature)
        k = int(params.top_k)
        self._top_k = k if 0 < k < v else 0
        self._top_p = float(params.top_p) if params.top_p < 1.0 else None
        self._log_min_p = math.log(params.min_p) if params.min_p > 0.0 else None
        self._native = kernels.SampleSettings(
            self._temp,
            self._top_k,
            self._top_p if self._top_p is not None else 1.0,
            self._log_min_p is not None,
            self._log_min_p or 0.0,
            self._rep,
            self._freq,
            self._pres,
            self._bias_ids,
            self._bias_vals,
        )

    # -- stages --------------------------------------------------------------------------

    def _window(self, recent: Sequence[int]) -> np.ndarray | None:
        n = len(recent)
        if n == 0:
            return None
        start = 0 if self._last_n < 0 else max(0, n - self._last_n)
        if isinstance(recent, np.ndarray):
            win = recent[start:]
        else:
            try:
                win = recent[start:]
            except TypeError:  # e.g. a deque
                win = list(itertools.islice(recent, start, None))
        arr = np.array(win, dtype=np.int64)  # a copy: the native sampler sorts it
        if arr.size == 0:
            return None
        return arr

    def apply_logit_processors(self, logits: np.ndarray, recent_tokens: Sequence[int] = ()) -> np.ndarray:
        """Logits after logit_bias and penalties.  Returns ``logits`` itself when nothing
        applies, else a per-thread scratch array (valid until the next call on this thread)."""
        x = _as_logits(logits)
        if x.shape[0] != self.vocab_size:
            raise ValueError(f"expected {self.vocab_size} logits, got {x.shape[0]}")
        win = self._window(recent_tokens) if self._pen else None
        if self._bias_ids.size == 0 and win is None:
            return x
        buf = _scratch(self.vocab_size).logits
        np.copyto(buf, x)
        if self._bias_ids.size:
            buf[self._bias_ids] += self._bias_vals
        if win is not None:
            win = win[(win >= 0) & (win < self.vocab_size)]
            ids, counts = np.unique(win, return_counts=True)
            if ids.size:
                vals = buf[ids].astype(np.float64)
                if self._rep != 1.0:
                    vals = np.where(vals <= 0.0, vals * self._rep, vals / self._rep)
                vals -= counts * self._freq + self._pres
                buf[ids] = vals
        return buf

    def sample(
        self, logits: np.ndarray, recent_tokens: Sequence[int] = (), allowed: np.ndarray | None = None
    ) -> int:
        """Next token id (``sample_batch`` of this one sequence).  ``logits``: float32 (vocab,)
        raw model output (not modified); ``recent_tokens``: the sequence so far (prompt +
        generated), oldest first; ``allowed``: a grammar's bit mask (uint32 words, bit i of
        word i // 32 for token i; ConstraintState.mask_words()) or None.

        The same token as ``sample_numpy`` from the same generator state, bit for bit."""
        return sample_batch([self], _as_logits(logits)[None], [recent_tokens], [allowed])[0]

    def _native_window(self, recent_tokens: Sequence[int]) -> np.ndarray:
        """The penalty window as the native sampler takes it (a copy it may sort; empty when
        the penalties are off; ids outside the vocabulary C skips, as numpy did)."""
        win = self._window(recent_tokens) if self._pen else None
        return _NO_TOKENS if win is None else win

    def _draw_u(self) -> float:
        """This step's uniform draw: exactly one per non-greedy sample, none when greedy."""
        return self.rng.random() if self._temp > 0.0 else 0.0

    def _finish_in_numpy(self, code: int, x: np.ndarray, processed: np.ndarray | None, u: float) -> int:
        """A row the native sampler did not finish: its error, or the paths numpy keeps (float32
        exponentials) on ``processed`` (the logits C masked, biased and penalised) when it
        wrote them, else on the raw ``x``."""
        if code == kernels.SAMPLE_NAN:
            raise FloatingPointError(_NAN)
        if code == kernels.SAMPLE_ALL_INF:
            raise FloatingPointError(_ALL_INF)
        ids, vals, m = self._candidates(x if processed is None else processed)
        return self._draw(ids, vals, m, u)

    def sample_numpy(
        self, logits: np.ndarray, recent_tokens: Sequence[int] = (), allowed: np.ndarray | None = None
    ) -> int:
        """``sample`` as numpy did it before csrc/sample.c: the reference the tests and
        scripts/bench_sampling.py hold the native sampler to (same arguments, same draw)."""
        if allowed is not None:
            bits = np.unpackbits(np.asarray(allowed).view(np.uint8), bitorder="little")
            logits = np.array(logits, np.float32)
            np.putmask(logits, ~bits[: logits.shape[0]].view(bool), -np.inf)
        x = self.apply_logit_processors(logits, recent_tokens)
        if self._temp <= 0.0:
            i = int(np.argmax(x))
            _check_max(float(x[i]))
            return i
        ids, vals, m = self._candidates(x)
        return self._draw(ids, vals, m, self.rng.random())

    def _candidates(self, x: np.ndarray):
        """top-k (or top-p/min-p) survivors of processed logits x: (ids, vals, max logit);
        ids is None when no filter cut anything."""
        bm = _block_max(x)
        m = float(bm.max())
        _check_max(m)
        ids: np.ndarray | None
        if self._top_k:
            ids, vals = self._filter_top_k(x, bm, m)
        else:
            ids, vals = self._filter_no_top_k(x, bm, m)
        return ids, vals, m

    def distribution(
        self, logits: np.ndarray, recent_tokens: Sequence[int] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """The distribution ``sample`` draws from: ``(ids int64, probs float64)`` of the tokens
        surviving every filter, by descending probability (ties -> lower id).  No draw."""
        x = self.apply_logit_processors(logits, recent_tokens)
        if self._temp <= 0.0:
            i = int(np.argmax(x))
            _check_max(float(x[i]))
            return np.array([i], np.int64), np.ones(1)
        ids, vals, m = self._candidates(x)
        if ids is None:
            ids = np.arange(x.shape[0])
        order = np.lexsort((ids, -vals.astype(np.float64)))
        ids, vals = ids[order].astype(np.int64), vals[order]
        w = np.exp((vals.astype(np.float64) - m) / self._temp)
        return ids, w / w.sum()

    def _filter_top_k(self, x: np.ndarray, bm: np.ndarray, m: float) -> tuple[np.ndarray, np.ndarray]:
        """top_k -> top_p -> min_p; returns (ids, logits) by descending logit."""
        ids = _top_k_ids(x, bm, self._top_k)
        vals = x[ids]
        if self._top_p is not None and ids.size > 1:
            # softmax of the top-k survivors, smallest prefix reaching top_p
            cum = np.cumsum(np.exp(vals.astype(np.float64) - m))
            cut = int(np.searchsorted(cum, self._top_p * cum[-1], side="left")) + 1
            ids, vals = ids[:cut], vals[:cut]
        if self._log_min_p is not None and ids.size > 1:
            keep = max(int(np.count_nonzero(vals >= np.float32(m + self._log_min_p))), 1)
            ids, vals = ids[:keep], vals[:keep]
        return ids, vals

    def _filter_no_top_k(
        self, x: np.ndarray, bm: np.ndarray, m: float
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """top_p -> min_p over the whole vocabulary; returns (ids, logits), any order
        (ids None: every token)."""
        lmp, top_p = self._log_min_p, self._top_p
        if top_p is None:
            if lmp is None:  # no filter at all: the whole distribution
                return None, x
            ids = _ids_at_least(x, bm, m + lmp)
            return ids, x[ids]
        # top_p needs the softmax normaliser of the whole vocabulary: one full exp
        e = _scratch(self.vocab_size).work
        np.subtract(x, np.float32(m), out=e)
        np.exp(e, out=e)
        target = top_p * float(e.sum())  # float32 pairwise sum: ~1e-7 relative error
        cand = None
        if lmp is not None:
            cand = _ids_at_least(x, bm, m + lmp)
            if float(e[cand].sum(dtype=np.float64)) < target:
                # top_p's prefix reaches past the min_p set, so min_p cuts it back to that set
                return cand, x[cand]
        ids = _mass_prefix(x, bm, e, cand, target, m)
        return ids, x[ids]

    def _draw(self, ids: np.ndarray | None, vals: np.ndarray, m: float, u: float) -> int:
        """Temperature, softmax and one draw with the uniform ``u``.
        ``ids`` None: ``vals`` is the whole vocabulary."""
        n = vals.shape[0]
        if n == 1:
            return 0 if ids is None else int(ids[0])
        if n > _SORT_MAX:
            w = _scratch(self.vocab_size).work[:n]
            np.subtract(vals, np.float32(m), out=w)
            if self._temp != 1.0:
                w *= np.float32(1.0 / self._temp)
            np.exp(w, out=w)
            i = _pick(w, u)
            return i if ids is None else int(ids[i])
        cum = np.cumsum(np.exp((vals.astype(np.float64) - m) / self._temp))
        j = min(int(np.searchsorted(cum, u * cum[-1], side="right")), n - 1)
        return j if ids is None else int(ids[j])


def sample_batch(
    samplers: Sequence[Sampler],
    logits: np.ndarray,
    recent_tokens: Sequence[Sequence[int]],
    allowed: Sequence[np.ndarray | None],
) -> list[int]:
    """The next token of every sequence of a batch: row i of ``logits`` (float32 (n, vocab),
    not modified) with ``samplers[i]``, its ``recent_tokens[i]`` and grammar mask
    ``allowed[i]`` (as ``Sampler.sample`` takes them), in one native call with the GIL released
    once.  Each row's token is the one its sampler's ``sample_numpy`` draws, whatever else is
    in the batch: each sequence draws its one uniform from its own generator before the call,
    and the rows C leaves to numpy are finished here, one by one, in order."""
    if not samplers:
        return []
    x = np.asarray(logits)
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != len(samplers):
        raise ValueError(f"expected {len(samplers)} rows of logits, got shape {x.shape}")
    for s in samplers:
        if s.vocab_size != x.shape[1]:
            raise ValueError(f"expected {s.vocab_size} logits, got {x.shape[1]}")
    windows = [s._native_window(recent) for s, recent in zip(samplers, recent_tokens, strict=True)]
    draws = [s._draw_u() for s in samplers]
    scratch = _scratch(x.shape[1])
    fallback = scratch.fallback_rows(len(samplers))
    native = [s._native for s in samplers]
    tokens = kernels.sample_batch(native, x, list(allowed), windows, draws, fallback, scratch.native)
    for i, token in enumerate(tokens):
        if token < 0:
            s = samplers[i]
            processed = allowed[i] is not None or s._bias_ids.size or windows[i].size
            tokens[i] = s._finish_in_numpy(token, x[i], fallback[i] if processed else None, draws[i])
    return tokens


# --------------------------------------------------------------------------------------------
# Log-probabilities (the server's logprobs feature)
# --------------------------------------------------------------------------------------------


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax along ``axis``; float32 in -> float32 out, else float64."""
    x = np.asarray(logits)
    dt = np.float32 if x.dtype in (np.float16, np.float32) else np.float64
    x = x.astype(dt, copy=False)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0).astype(dt)
    shifted = x - m
    lse = np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True, dtype=np.float64))
    return (shifted - lse).astype(dt, copy=False)


def logsumexp(logits: np.ndarray) -> float:
    """log(sum(exp(logits))) of a 1-D vector, in float64 (float32 exponentials)."""
    x = _as_logits(logits)
    m = float(x.max())
    _check_max(m)
    if m == math.inf:
        return math.inf
    work = _scratch(x.shape[0]).work
    np.subtract(x, np.float32(m), out=work)
    np.exp(work, out=work)
    return m + math.log(float(work.sum(dtype=np.float64)))


def top_logprobs(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most likely tokens of the raw distribution (no sampling filters applied).

    Returns ``(ids int64, logprobs float64)`` by descending probability, ties to the lower id."""
    x = _as_logits(logits)
    k = max(0, min(int(k), x.shape[0]))
    if k == 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    lse = logsumexp(x)
    ids = _top_k_ids(x, _block_max(x), k).astype(np.int64)
    return ids, x[ids].astype(np.float64) - lse


def token_and_top_logprobs(logits: np.ndarray, token: int, k: int) -> tuple[float, np.ndarray, np.ndarray]:
    """``token``'s raw log-probability and ``top_logprobs(logits, k)``, with one normaliser
    (a pass over the whole vocabulary) instead of two."""
    x = _as_logits(logits)
    lse = logsumexp(x)
    k = max(0, min(int(k), x.shape[0]))
    ids = _top_k_ids(x, _block_max(x), k).astype(np.int64) if k else np.empty(0, np.int64)
    return float(x[int(token)]) - lse, ids, x[ids].astype(np.float64) - lse


def token_logprobs(logits: np.ndarray, token_ids: Sequence[int] | int) -> np.ndarray | float:
    """Raw log-probabilities of given token ids (a float for a single int id)."""
    x = _as_logits(logits)
    lse = logsumexp(x)
    if isinstance(token_ids, numbers.Integral):
        return float(x[int(token_ids)]) - lse
    ids = np.asarray(token_ids, dtype=np.int64)
    return x[ids].astype(np.float64) - lse
