# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled merge loops of smallmind.engine.tokenizer (always built; the tokenizer keeps
only an O(n log n) heap loop of its own, for very long words).

Both classes work on a word's UTF-8 bytes with symbols as (offset, length) ranges, and look
strings up in an open-addressing hash table over the vocabulary's UTF-8 bytes (FNV-1a 64,
verified with memcmp), so no Python string is created per merge step.

SpmVocab.encode_word: SentencePiece BPE -- merge the adjacent pair whose concatenation is
  a token with the highest score (leftmost on ties) until none is; symbols that are not
  tokens become byte tokens (or the unknown token).
BpeVocab.encode_word: byte-level BPE -- merge the adjacent pair with the lowest merge rank
  (leftmost on ties); with ignore_merges a word that is a token is emitted whole.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memmove

cdef struct Slot:
    uint64_t hash
    int32_t id        # token id (or merge rank), -1 = empty
    float score


cdef inline uint64_t fnv(const uint8_t *p, Py_ssize_t n, uint64_t h) nogil:
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * 1099511628211ULL
    return h

cdef uint64_t FNV0 = 14695981039346656037ULL


cdef inline Py_ssize_t utf8_len(uint8_t c) nogil:
    # llama.cpp's unicode_len_utf8: by the high 4 bits of the lead byte
    cdef uint8_t hi = c >> 4
    if hi < 8:
        return 1
    if hi < 12:
        return 1   # stray continuation byte: a symbol of its own
    if hi < 14:
        return 2
    if hi < 15:
        return 3
    return 4


cdef Py_ssize_t _split_utf8(const uint8_t *p, Py_ssize_t nb, Py_ssize_t *start,
                            Py_ssize_t *slen) nogil:
    """A word's bytes -> one symbol per UTF-8 character (start, length); returns the count."""
    cdef Py_ssize_t m = 0, pos = 0, k
    while pos < nb:
        k = utf8_len(p[pos])
        if k > nb - pos:
            k = nb - pos
        start[m] = pos
        slen[m] = k
        m += 1
        pos += k
    return m


cdef list _utf8_all(list strings):
    """[s.encode("utf-8", "surrogateescape") for s in strings], faster when no string
    holds a NUL: one join, one encode, one split."""
    cdef str joined = "\x00".join(strings)
    if joined.count("\x00") == len(strings) - 1 and strings:
        return joined.encode("utf-8", "surrogateescape").split(b"\x00")
    return [(<str>t).encode("utf-8", "surrogateescape") for t in strings]


cdef class _Table:
    """Hash table from byte strings to (id, score); the strings live in one blob."""
    cdef Slot *slots
    cdef uint64_t mask
    cdef bytes blob
    cdef const uint8_t *data
    cdef int64_t *off      # entry e -> blob offset; length = off[e+1] - off[e]
    cdef Py_ssize_t n

    def __cinit__(self):
        self.slots = NULL
        self.off = NULL

    def __dealloc__(self):
        free(self.slots)
        free(self.off)

    cdef int build(self, list strings, list scores=None) except -1:
        """strings: list of bytes; entry i gets id i (later duplicates win) and, if given,
        score scores[i]."""
        cdef Py_ssize_t n = len(strings), i, cap = 16
        cdef int64_t pos = 0
        self.n = n
        while cap < 2 * n:
            cap <<= 1
        self.slots = <Slot *>malloc(cap * sizeof(Slot))
        self.off = <int64_t *>malloc((n + 1) * sizeof(int64_t))
        if self.slots == NULL or self.off == NULL:
            raise MemoryError()
        for i in range(cap):
            self.slots[i].id = -1
        self.mask = cap - 1
        self.blob = b"".join(strings)
        self.data = <const uint8_t *>(<char *>self.blob)
        for i in range(n):
            self.off[i] = pos
            pos += len(<bytes>strings[i])
        self.off[n] = pos
        if scores is None:
            for i in range(n):
                self._insert(i, 0.0)
        else:
            for i in range(n):
                self._insert(i, <float>(<double>scores[i]))
        return 0

    cdef void _insert(self, Py_ssize_t e, float score):
        cdef const uint8_t *p = self.data + self.off[e]
        cdef Py_ssize_t n = self.off[e + 1] - self.off[e]
        cdef uint64_t h = fnv(p, n, FNV0)
        cdef uint64_t j = h & self.mask
        cdef Slot *s
        while True:
            s = &self.slots[j]
            if s.id < 0:
                s.hash = h
                s.id = <int32_t>e
                s.score = score
                return
            if s.hash == h and self.off[s.id + 1] - self.off[s.id] == n and \
                    memcmp(self.data + self.off[s.id], p, n) == 0:
                s.id = <int32_t>e  # duplicate text: the later entry wins
                s.score = score
                return
            j = (j + 1) & self.mask

    cdef inline Slot *find(self, const uint8_t *p, Py_ssize_t n, uint64_t h) nogil:
        cdef uint64_t j = h & self.mask
        cdef Slot *s
        cdef int32_t e
        while True:
            s = &self.slots[j]
            e = s.id
            if e < 0:
                return NULL
            if s.hash == h and self.off[e + 1] - self.off[e] == n and \
                    memcmp(self.data + self.off[e], p, n) == 0:
                return s
            j = (j + 1) & self.mask


cdef class SpmVocab:
    cdef _Table table
    cdef int32_t byte_ids[256]
    cdef int32_t unk_id

    def __init__(self, list tokens, list scores, list byte_ids, unk_id):
        """tokens: list of str; scores: list of float (one per token)."""
        cdef Py_ssize_t i
        if len(scores) != len(tokens):
            raise ValueError("one score per token")
        self.table = _Table()
        self.table.build(_utf8_all(tokens), scores)
        for i in range(256):
            self.byte_ids[i] = -1 if byte_ids[i] is None else <int32_t>byte_ids[i]
        self.unk_id = -1 if unk_id is None else <int32_t>unk_id

    def encode_word(self, str word):
        """Token ids of one (already "▁"-escaped) word."""
        cdef bytes b = word.encode("utf-8", "surrogateescape")
        cdef const uint8_t *p = <const uint8_t *>(<char *>b)
        cdef Py_ssize_t nb = len(b)
        if nb == 0:
            return []
        cdef Py_ssize_t *start = <Py_ssize_t *>malloc(nb * sizeof(Py_ssize_t))
        cdef Py_ssize_t *slen = <Py_ssize_t *>malloc(nb * sizeof(Py_ssize_t))
        cdef int32_t *sid = <int32_t *>malloc(nb * sizeof(int32_t))
        cdef float *ps = <float *>malloc(nb * sizeof(float))
        cdef int32_t *pid = <int32_t *>malloc(nb * sizeof(int32_t))
        cdef list out = []
        cdef Py_ssize_t m, k, i, bi, j
        cdef Slot *s
        cdef float best
        cdef int32_t bid
        try:
            if start == NULL or slen == NULL or sid == NULL or ps == NULL or pid == NULL:
                raise MemoryError()
            m = _split_utf8(p, nb, start, slen)
            for i in range(m):
                sid[i] = -2      # not looked up yet
            for i in range(m - 1):
                self._pair(p, start, slen, ps, pid, i)
            while m > 1:
                bi = -1
                best = 0.0
                for i in range(m - 1):
                    if pid[i] >= 0 and (bi < 0 or ps[i] > best):
                        best = ps[i]
                        bi = i
                if bi < 0:
                    break
                slen[bi] += slen[bi + 1]
                sid[bi] = pid[bi]
                j = m - bi - 2       # entries after bi+1
                memmove(&start[bi + 1], &start[bi + 2], j * sizeof(Py_ssize_t))
                memmove(&slen[bi + 1], &slen[bi + 2], j * sizeof(Py_ssize_t))
                memmove(&sid[bi + 1], &sid[bi + 2], j * sizeof(int32_t))
                memmove(&ps[bi], &ps[bi + 1], j * sizeof(float))
                memmove(&pid[bi], &pid[bi + 1], j * sizeof(int32_t))
                m -= 1
                if bi > 0:
                    self._pair(p, start, slen, ps, pid, bi - 1)
                if bi < m - 1:
                    self._pair(p, start, slen, ps, pid, bi)
            for i in range(m):
                bid = sid[i]
                if bid == -2:
                    s = self.table.find(p + start[i], slen[i], fnv(p + start[i], slen[i], FNV0))
                    bid = -1 if s == NULL else s.id
                if bid >= 0:
                    out.append(bid)
                else:
                    for k in range(start[i], start[i] + slen[i]):
                        bid = self.byte_ids[p[k]]
                        if bid < 0:
                            bid = self.unk_id
                            if bid < 0:
                                from smallmind.errors import ModelFormatError
                                raise ModelFormatError(
                                    f"vocabulary has no byte token for 0x{p[k]:02X} and no "
                                    "unknown token")
                        out.append(bid)
        finally:
            free(start)
            free(slen)
            free(sid)
            free(ps)
            free(pid)
        return out

    cdef inline void _pair(self, const uint8_t *p, Py_ssize_t *start, Py_ssize_t *slen,
                           float *ps, int32_t *pid, Py_ssize_t i):
        cdef Py_ssize_t n = slen[i] + slen[i + 1]
        cdef Slot *s = self.table.find(p + start[i], n, fnv(p + start[i], n, FNV0))
        if s == NULL:
            pid[i] = -1
        else:
            pid[i] = s.id
            ps[i] = s.score

    def encode_words(self, list words, dict cache, list out, Py_ssize_t max_cached):
        """out += ids of each word, through ``cache`` (word -> tuple of ids)."""
        cdef object ids
        cdef str w
        for w in words:
            ids = cache.get(w)
            if ids is None:
                ids = tuple(self.encode_word(w))
                if len(w) <= max_cached:
                    cache[w] = ids
            out.extend(<tuple>ids)


cdef class BpeVocab:
    cdef _Table tokens
    cdef _Table merges
    cdef bint ignore_merges
    cdef Py_ssize_t n_merges

    def __init__(self, list tokens, list merges, bint ignore_merges):
        self.tokens = _Table()
        self.tokens.build(_utf8_all(tokens))
        # merge lines as "left right"; the first occurrence of a line keeps its rank
        self.merges = _Table()
        self.merges.build(_utf8_all(merges[::-1]))
        self.n_merges = len(merges)
        self.ignore_merges = ignore_merges

    cdef inline int32_t _rank(self, const uint8_t *p, Py_ssize_t a, Py_ssize_t la,
                              Py_ssize_t lb):
        """Rank of the merge (p[a:a+la], p[a+la:a+la+lb]), looked up as "left right";
        -1 if there is none."""
        cdef uint64_t h = fnv(p + a, la, FNV0)
        h = (h ^ 0x20) * 1099511628211ULL
        h = fnv(p + a + la, lb, h)
        cdef _Table t = self.merges
        cdef uint64_t j = h & t.mask
        cdef Slot *s
        cdef int32_t e
        cdef const uint8_t *q
        while True:
            s = &t.slots[j]
            e = s.id
            if e < 0:
                return -1
            if s.hash == h and t.off[e + 1] - t.off[e] == la + lb + 1:
                q = t.data + t.off[e]
                if memcmp(q, p + a, la) == 0 and q[la] == 0x20 and \
                        memcmp(q + la + 1, p + a + la, lb) == 0:
                    return <int32_t>(self.n_merges - 1 - e)   # entries are reversed
            j = (j + 1) & t.mask

    def encode_word(self, str word):
        """Token ids of one pre-token already mapped to the GPT-2 byte alphabet."""
        cdef bytes b = word.encode("utf-8", "surrogateescape")
        cdef const uint8_t *p = <const uint8_t *>(<char *>b)
        cdef Py_ssize_t nb = len(b)
        cdef Slot *s
        if nb == 0:
            return []
        if self.ignore_merges:
            s = self.tokens.find(p, nb, fnv(p, nb, FNV0))
            if s != NULL:
                return [s.id]
        cdef Py_ssize_t *start = <Py_ssize_t *>malloc(nb * sizeof(Py_ssize_t))
        cdef Py_ssize_t *slen = <Py_ssize_t *>malloc(nb * sizeof(Py_ssize_t))
        cdef int32_t *pr = <int32_t *>malloc(nb * sizeof(int32_t))
        cdef list out = []
        cdef Py_ssize_t m, k, i, bi, j
        cdef int32_t best
        cdef bytes one
        try:
            if start == NULL or slen == NULL or pr == NULL:
                raise MemoryError()
            m = _split_utf8(p, nb, start, slen)
            for i in range(m - 1):
                pr[i] = self._rank(p, start[i], slen[i], slen[i + 1])
            while m > 1:
                bi = -1
                best = 0
                for i in range(m - 1):
                    if pr[i] >= 0 and (bi < 0 or pr[i] < best):
                        best = pr[i]
                        bi = i
                if bi < 0:
                    break
                slen[bi] += slen[bi + 1]
                j = m - bi - 2
                memmove(&start[bi + 1], &start[bi + 2], j * sizeof(Py_ssize_t))
                memmove(&slen[bi + 1], &slen[bi + 2], j * sizeof(Py_ssize_t))
                memmove(&pr[bi], &pr[bi + 1], j * sizeof(int32_t))
                m -= 1
                if bi > 0:
                    pr[bi - 1] = self._rank(p, start[bi - 1], slen[bi - 1], slen[bi])
                if bi < m - 1:
                    pr[bi] = self._rank(p, start[bi], slen[bi], slen[bi + 1])
            for i in range(m):
                s = self.tokens.find(p + start[i], slen[i], fnv(p + start[i], slen[i], FNV0))
                if s != NULL:
                    out.append(s.id)
                else:
                    # llama.cpp: look each byte up as a one-byte token; skip the misses
                    for k in range(start[i], start[i] + slen[i]):
                        s = self.tokens.find(p + k, 1, fnv(p + k, 1, FNV0))
                        if s != NULL:
                            out.append(s.id)
        finally:
            free(start)
            free(slen)
            free(pr)
        return out

    def encode_words(self, list words, dict cache, list out, Py_ssize_t max_cached,
                     mapper):
        """out += ids of each raw pre-token, through ``cache`` (word -> tuple of ids);
        ``mapper`` turns a raw word into the byte alphabet."""
        cdef object ids
        cdef str w
        for w in words:
            ids = cache.get(w)
            if ids is None:
                ids = tuple(self.encode_word(mapper(w)))
                if len(w) <= max_cached:
                    cache[w] = ids
            out.extend(<tuple>ids)
