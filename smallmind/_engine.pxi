# The transformer step of csrc/forward.h, included into _kernels.pyx (one extension, so
# the forward pass runs on the very kernel table and thread setting smallmind.kernels
# chose).  Use smallmind.engine.model, not this class.
import mmap

from libc.stdlib cimport calloc, free


def set_repack(on):
    sm_set_repack(-1 if on is None else (1 if on else 0))


def get_repack():
    return bool(sm_get_repack())


def _in_read_only_file_mapping(cnp.ndarray a):
    """True if `a` views a read-only mmap of a file (GGUFFile's), whose pages the OS can
    drop and page back in from the file."""
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, memoryview) and base.readonly and isinstance(base.obj, mmap.mmap)


cdef sm_tensor _tensor(object spec, list keep) except *:
    """(array, type, n_rows, n_cols) or None -> sm_tensor; the array is kept alive."""
    cdef sm_tensor t
    t.data = NULL
    t.type = 0
    t.n_rows = 0
    t.n_cols = 0
    if spec is None:
        return t
    arr, wtype, n_rows, n_cols = spec
    cdef cnp.ndarray a = arr
    if not a.flags.c_contiguous:
        raise ValueError("weight views must be C-contiguous")
    keep.append(a)
    t.data = cnp.PyArray_DATA(a)
    t.type = wtype
    t.n_rows = n_rows
    t.n_cols = n_cols
    return t


cdef class NativeModel:
    """A model in C: config dict + weights {name: (array, type, n_rows, n_cols) or None,
    "layers": [per layer, one such spec per sm_layer_weights field in forward.h's order]}.
    Holds references to the weight arrays (views into the mmapped file) for as long as it
    lives."""
    cdef sm_model *m
    cdef bint busy  # sm_forward is not re-entrant: refuse a second caller instead of racing
    cdef list _keep
    cdef cnp.ndarray _layer_swa
    cdef readonly int vocab_size, dim, n_ctx, n_slots, max_batch_tokens

    def __cinit__(self):
        self.m = NULL

    def __init__(self, dict config, dict weights):
        cdef sm_config c
        cdef sm_weights w
        cdef int err = 0
        cdef int l, i
        cdef sm_tensor *fields
        # sm_layer_weights is sm_tensor fields only, so it is filled as an array of them
        cdef int n_fields = sizeof(sm_layer_weights) // sizeof(sm_tensor)
        self._keep = []
        layers = weights["layers"]
        c.arch = config["arch"]
        c.act = config["act"]
        c.dim = config["dim"]
        c.n_layers = config["n_layers"]
        c.n_heads = config["n_heads"]
        c.n_kv_heads = config["n_kv_heads"]
        c.head_dim = config["head_dim"]
        c.hidden_dim = config["hidden_dim"]
        c.vocab_size = config["vocab_size"]
        c.norm_eps = config["norm_eps"]
        c.rope_base = config["rope_base"]
        c.rope_base_swa = config["rope_base_swa"]
        c.rope_freq_scale = config["rope_freq_scale"]
        c.rope_neox = config["rope_neox"]
        c.attn_scale = config["attn_scale"]
        c.embed_scale = config["embed_scale"]
        c.sliding_window = config["sliding_window"]
        c.n_ctx = config["n_ctx"]
        c.n_slots = config["n_slots"]
        c.max_batch_tokens = config["max_batch_tokens"]
        if len(layers) != c.n_layers:
            raise ValueError(f"{len(layers)} layers of weights for {c.n_layers} layers")
        self._layer_swa = np.ascontiguousarray(config.get("layer_swa", [0] * c.n_layers), dtype=np.uint8)
        if self._layer_swa.shape[0] != c.n_layers:
            raise ValueError("layer_swa needs one flag per layer")
        c.layer_swa = <const uint8_t *>cnp.PyArray_DATA(self._layer_swa)

        w.token_embd = _tensor(weights["token_embd"], self._keep)
        w.output_norm = _tensor(weights["output_norm"], self._keep)
        w.output = _tensor(weights.get("output"), self._keep)
        w.rope_freqs = _tensor(weights.get("rope_freqs"), self._keep)
        w.layers = <sm_layer_weights *>calloc(c.n_layers, sizeof(sm_layer_weights))
        if w.layers == NULL:
            raise MemoryError()
        try:
            for l in range(c.n_layers):
                specs = layers[l]
                if len(specs) != n_fields:
                    raise ValueError(f"layer {l} has {len(specs)} weights, sm_layer_weights holds {n_fields}")
                fields = <sm_tensor *>&w.layers[l]
                for i in range(n_fields):
                    fields[i] = _tensor(specs[i], self._keep)
            with nogil:
                self.m = sm_model_create(&c, &w, &err)
        finally:
            free(w.layers)  # sm_model_create copies the layer table
        check(err, "create model")
        if sm_model_repacked(self.m) and all(_in_read_only_file_mapping(a) for a in self._keep):
            sm_model_release_originals(self.m)
        self.vocab_size = c.vocab_size
        self.dim = c.dim
        self.n_ctx = c.n_ctx
        self.n_slots = c.n_slots
        self.max_batch_tokens = c.max_batch_tokens

    def __dealloc__(self):
        if self.m != NULL:
            sm_model_free(self.m)
            self.m = NULL

    def kv_bytes(self):
        return sm_model_kv_bytes(self.m)

    def repacked(self):
        """Matrices held as a repacked copy (csrc/repack.h)."""
        return sm_model_repacked(self.m)

    def forward(self, tokens, slots, positions, out_rows, bint want_hidden=False, cnp.ndarray out=None):
        """int32 arrays (n_tokens,) x3 and (n_out,) -> logits float32 (n_out, vocab_size)
        [, hidden float32 (n_tokens, dim)].  `out`, if given, receives the logits."""
        cdef cnp.ndarray tok = np.ascontiguousarray(tokens, dtype=np.int32)
        cdef cnp.ndarray slo = np.ascontiguousarray(slots, dtype=np.int32)
        cdef cnp.ndarray pos = np.ascontiguousarray(positions, dtype=np.int32)
        cdef cnp.ndarray rows = np.ascontiguousarray(out_rows, dtype=np.int32)
        cdef int n_tokens = tok.shape[0] if tok.ndim == 1 else -1
        cdef int n_out = rows.shape[0] if rows.ndim == 1 else -1
        if n_tokens < 0 or n_out < 0 or slo.ndim != 1 or pos.ndim != 1:
            raise ValueError("tokens, slots, positions and out_rows must be 1-D")
        if slo.shape[0] != n_tokens or pos.shape[0] != n_tokens:
            raise ValueError("tokens, slots and positions must have the same length")
        if out is None:
            out = np.empty((n_out, self.vocab_size), dtype=np.float32)
        elif (out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable
              or out.size != <int64_t>n_out * self.vocab_size):
            raise ValueError(f"out must be a writable C-contiguous float32 array of {n_out} x {self.vocab_size}")
        cdef cnp.ndarray hid = None
        cdef float *hidden_ptr = NULL
        if want_hidden:
            hid = np.empty((n_tokens, self.dim), dtype=np.float32)
            hidden_ptr = <float *>cnp.PyArray_DATA(hid)
        cdef const int32_t *tp = <const int32_t *>cnp.PyArray_DATA(tok)
        cdef const int32_t *sp = <const int32_t *>cnp.PyArray_DATA(slo)
        cdef const int32_t *pp = <const int32_t *>cnp.PyArray_DATA(pos)
        cdef const int32_t *rp = <const int32_t *>cnp.PyArray_DATA(rows)
        cdef float *lp = <float *>cnp.PyArray_DATA(out)
        cdef int rc
        if self.busy:
            raise RuntimeError("NativeModel.forward called from two threads at once")
        self.busy = True
        try:
            with nogil:
                rc = sm_forward(self.m, n_tokens, tp, sp, pp, n_out, rp, lp, hidden_ptr)
        finally:
            self.busy = False
        check(rc, "forward")
        if want_hidden:
            return out, hid
        return out

    def copy_slot(self, int src, int dst, int n_positions):
        """Copies the first n_positions cached positions of slot src into slot dst."""
        cdef int rc
        if self.busy:
            raise RuntimeError("NativeModel.copy_slot called while forward runs")
        with nogil:
            rc = sm_model_copy_slot(self.m, src, dst, n_positions)
        check(rc, "copy slot")
