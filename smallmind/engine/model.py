"""A GGUF (or .smq) model ready to run: configuration from the metadata, weights as zero-copy views
into the mmapped file, and the transformer step in C (csrc/forward.c).

    model = Model.load(path, n_ctx=4096, n_slots=4, max_batch_tokens=512)
    logits = model.forward(tokens, slots, positions, out_rows)   # (len(out_rows), vocab)

Architectures: llama, qwen2, qwen3, gemma3.  Every required tensor is checked for presence,
shape and type before any native code sees it; problems raise ModelFormatError."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from smallmind import kernels
from smallmind.errors import KernelError, ModelFormatError
from smallmind.gguf import GGML_TYPE_NAMES
from smallmind.modelfile import ModelFile, open_model_file

# enum sm_arch / sm_act of csrc/forward.h
ARCHS = {"llama": 0, "qwen2": 1, "qwen3": 2, "gemma3": 3}
ACT_SILU, ACT_GELU_TANH = 0, 1
FLOAT_TYPES = (0, 1, 30)  # F32, F16, BF16: what 1-D weights (norms, biases) may be

# The one list of a layer's weights: csrc/forward.h's sm_layer_weights fields, in their order
# (the native model is filled field by field in this order; tests/test_model.py checks it
# against forward.h), each with its GGUF tensor name (blk.N.<name>.weight|bias).
LAYER_TENSORS = {
    "attn_norm": "attn_norm.weight",
    "wq": "attn_q.weight",
    "wk": "attn_k.weight",
    "wv": "attn_v.weight",
    "bq": "attn_q.bias",
    "bk": "attn_k.bias",
    "bv": "attn_v.bias",
    "q_norm": "attn_q_norm.weight",
    "k_norm": "attn_k_norm.weight",
    "wo": "attn_output.weight",
    "post_attn_norm": "post_attention_norm.weight",
    "ffn_norm": "ffn_norm.weight",
    "w_gate": "ffn_gate.weight",
    "w_up": "ffn_up.weight",
    "w_down": "ffn_down.weight",
    "post_ffn_norm": "post_ffw_norm.weight",
}


@dataclass(frozen=True)
class ModelConfig:
    """The model's hyperparameters (what csrc/forward.h calls sm_config)."""

    arch: str
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    vocab_size: int
    norm_eps: float
    rope_base: float
    rope_base_swa: float
    rope_freq_scale: float
    rope_neox: bool
    attn_scale: float
    embed_scale: float
    act: int
    sliding_window: int  # 0: no sliding-window layers
    layer_swa: tuple[int, ...]  # per layer: 1 = sliding-window layer
    context_length: int  # what the model was trained for

    def native(self, n_ctx: int, n_slots: int, max_batch_tokens: int) -> dict:
        d = asdict(self)
        d.update(
            arch=ARCHS[self.arch],
            rope_neox=int(self.rope_neox),
            layer_swa=list(self.layer_swa),
            n_ctx=n_ctx,
            n_slots=n_slots,
            max_batch_tokens=max_batch_tokens,
        )
        del d["context_length"]
        return d

    def kv_bytes_per_slot(self, n_ctx: int, max_batch_tokens: int) -> int:
        """KV-cache bytes of one slot as the native model allocates them: f16 keys and values,
        n_ctx positions on global layers, a ring of sliding_window + max_batch_tokens on
        sliding-window layers (n_ctx capped at the trained context, as Model.load does)."""
        if self.context_length:
            n_ctx = min(n_ctx, self.context_length)
        ring = min(self.sliding_window + max_batch_tokens, n_ctx) if self.sliding_window > 0 else n_ctx
        kv_dim = self.n_kv_heads * self.head_dim
        return sum(2 * (ring if swa else n_ctx) * kv_dim * 2 for swa in self.layer_swa)


def _fail(path, msg: str) -> ModelFormatError:
    return ModelFormatError(f"{path}: {msg}")


def _dropped_by_smallmind(meta: dict, key: str) -> str:
    """Why a key may be missing: SmallMind's own GGUF importer keeps only llama.* keys."""
    if meta.get("converted_from") == "GGUF" and not key.startswith("llama."):
        return (
            " (an .smq written by SmallMind's GGUF importer keeps only llama.* keys; "
            "convert the GGUF with `python -m smallmind convert` instead)"
        )
    return ""


def read_config(gguf: ModelFile) -> ModelConfig:
    """ModelConfig from the GGUF metadata (and token_embd's shape for the vocabulary)."""
    meta, path = gguf.metadata, gguf.path
    arch = meta.get("general.architecture")
    if arch not in ARCHS:
        hint = (
            " (this .smq carries no GGUF metadata; only .smq files made from GGUF models, by "
            "SmallMind's importer or `python -m smallmind convert`, can be served)"
            if arch is None and getattr(gguf, "format", "") == "smq"
            else ""
        )
        raise _fail(path, f"unsupported architecture {arch!r} (supported: {', '.join(ARCHS)}){hint}")

    def key(name, default=None, required=False):
        value = meta.get(f"{arch}.{name}", default)
        if required and value is None:
            raise _fail(
                path, f"metadata key {arch}.{name} is missing" + _dropped_by_smallmind(meta, f"{arch}.{name}")
            )
        return value

    if "token_embd.weight" not in gguf.tensors:
        raise _fail(path, "tensor token_embd.weight is missing")
    dim = int(key("embedding_length", required=True))
    n_layers = int(key("block_count", required=True))
    n_heads = key("attention.head_count", required=True)
    n_kv_heads = key("attention.head_count_kv", n_heads)
    if isinstance(n_heads, np.ndarray) or isinstance(n_kv_heads, np.ndarray):
        raise _fail(path, "per-layer head counts are not supported")
    n_heads, n_kv_heads = int(n_heads), int(n_kv_heads)
    if n_heads <= 0 or n_kv_heads <= 0 or n_heads % n_kv_heads:
        raise _fail(path, f"bad head counts {n_heads}/{n_kv_heads}")
    head_dim = int(key("attention.key_length", dim // n_heads))
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise _fail(path, "key_length != value_length is not supported")
    if int(key("rope.dimension_count", head_dim)) != head_dim:
        raise _fail(path, "partial rotary embeddings (rope.dimension_count != head_dim) are not supported")
    scaling = key("rope.scaling.type", "none")
    factor = float(key("rope.scaling.factor", 1.0) or 1.0)
    if scaling == "linear":
        freq_scale = 1.0 / factor
    elif scaling == "none" or (scaling is not None and factor == 1.0):
        freq_scale = 1.0
    else:
        raise _fail(path, f"rope scaling {scaling!r} is not supported (only linear)")
    rope_base = float(key("rope.freq_base", 10000.0))
    gemma = arch == "gemma3"
    window = int(key("attention.sliding_window", 0) or 0) if gemma else 0
    if gemma:
        pattern = key("attention.sliding_window_pattern")
        if isinstance(pattern, np.ndarray) and len(pattern) == n_layers:
            layer_swa = tuple(int(bool(v)) for v in pattern)
        else:  # llama.cpp's gemma3: every 6th layer is global
            layer_swa = tuple(int(il % 6 < 5) for il in range(n_layers))
        # llama.cpp: 27B (62 layers) scales by 1/sqrt(dim/n_heads), the others 1/sqrt(head_dim)
        attn_scale = 1.0 / math.sqrt(dim // n_heads if n_layers == 62 else head_dim)
    else:
        layer_swa = (0,) * n_layers
        attn_scale = 1.0 / math.sqrt(head_dim)
    if window <= 0:
        layer_swa = (0,) * n_layers
    return ModelConfig(
        arch=arch,
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        hidden_dim=int(key("feed_forward_length", required=True)),
        vocab_size=gguf.tensors["token_embd.weight"].n_rows,
        norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-6 if gemma else 1e-5)),
        rope_base=rope_base,
        rope_base_swa=float(key("rope.freq_base_swa", 10000.0 if gemma else rope_base)),
        rope_freq_scale=freq_scale,
        rope_neox=arch != "llama",
        attn_scale=attn_scale,
        embed_scale=math.sqrt(dim) if gemma else 1.0,
        act=ACT_GELU_TANH if gemma else ACT_SILU,
        sliding_window=window,
        layer_swa=layer_swa,
        context_length=int(key("context_length", 0) or 0),
    )


def read_model_config(path: str | os.PathLike[str]) -> ModelConfig:
    """The ModelConfig of a model file, without loading the model (to size it first)."""
    gguf = open_model_file(path)
    try:
        return read_config(gguf)
    finally:
        gguf.close()


def _expected_shapes(cfg: ModelConfig) -> tuple[dict, dict]:
    """(global, per-layer) name -> (n_rows, n_cols, required, is_matrix)."""
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    qwen2, qk_norm, gemma = cfg.arch == "qwen2", cfg.arch in ("qwen3", "gemma3"), cfg.arch == "gemma3"
    top = {
        "token_embd": ("token_embd.weight", cfg.vocab_size, cfg.dim, True, True),
        "output_norm": ("output_norm.weight", 1, cfg.dim, True, False),
        "output": ("output.weight", cfg.vocab_size, cfg.dim, False, True),
        "rope_freqs": ("rope_freqs.weight", 1, cfg.head_dim // 2, False, False),
    }
    layer = {
        "attn_norm": (1, cfg.dim, True, False),
        "wq": (q_dim, cfg.dim, True, True),
        "wk": (kv_dim, cfg.dim, True, True),
        "wv": (kv_dim, cfg.dim, True, True),
        "wo": (cfg.dim, q_dim, True, True),
        "bq": (1, q_dim, qwen2, False),
        "bk": (1, kv_dim, qwen2, False),
        "bv": (1, kv_dim, qwen2, False),
        "q_norm": (1, cfg.head_dim, qk_norm, False),
        "k_norm": (1, cfg.head_dim, qk_norm, False),
        "post_attn_norm": (1, cfg.dim, gemma, False),
        "ffn_norm": (1, cfg.dim, True, False),
        "w_gate": (cfg.hidden_dim, cfg.dim, True, True),
        "w_up": (cfg.hidden_dim, cfg.dim, True, True),
        "w_down": (cfg.dim, cfg.hidden_dim, True, True),
        "post_ffn_norm": (1, cfg.dim, gemma, False),
    }
    return top, layer


def _weight(gguf: ModelFile, name: str, n_rows: int, n_cols: int, required: bool, matrix: bool):
    """(view, type, n_rows, n_cols) of one tensor after checking it, or None if absent."""
    info = gguf.tensors.get(name)
    if info is None:
        if required:
            raise _fail(gguf.path, f"tensor {name} is missing")
        return None
    type_name = GGML_TYPE_NAMES.get(info.type, str(info.type))
    if matrix and not kernels.type_supported(info.type) or not matrix and info.type not in FLOAT_TYPES:
        raise _fail(gguf.path, f"tensor {name} has unsupported type {type_name}")
    if info.n_elements != n_rows * n_cols or info.ne[0] != n_cols:
        want = (n_cols,) if n_rows == 1 else (n_cols, n_rows)
        raise _fail(gguf.path, f"tensor {name} has shape {tuple(info.ne)}, expected {want}")
    return (gguf.tensor(name), info.type, n_rows, n_cols)


class Model:
    """A loaded model: `config`, `gguf` (metadata for the tokenizer), `vocab_size`, `n_ctx`,
    `n_slots`, `max_batch_tokens`.  Not thread-safe: one thread calls forward at a time."""

    def __init__(
        self, gguf: ModelFile, config: ModelConfig, native, n_ctx: int, n_slots: int, max_batch_tokens: int
    ):
        self.gguf = gguf
        self.config = config
        self._native = native
        self.vocab_size = config.vocab_size
        self.n_ctx = n_ctx
        self.n_slots = n_slots
        self.max_batch_tokens = max_batch_tokens

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], n_ctx: int = 4096, n_slots: int = 4, max_batch_tokens: int = 512
    ) -> Model:
        """Opens the GGUF or .smq file and builds the native model.  n_ctx is capped at the
        model's trained context length."""
        if n_ctx <= 0 or n_slots <= 0 or max_batch_tokens <= 0:
            raise ValueError("n_ctx, n_slots and max_batch_tokens must be positive")
        gguf = open_model_file(path)
        try:
            config = read_config(gguf)
            if config.context_length:
                n_ctx = min(n_ctx, config.context_length)
            top, layer = _expected_shapes(config)
            weights = {key: _weight(gguf, *spec) for key, spec in top.items()}
            weights["layers"] = [
                [_weight(gguf, f"blk.{il}.{name}", *layer[field]) for field, name in LAYER_TENSORS.items()]
                for il in range(config.n_layers)
            ]
            try:
                native = kernels.NativeModel(config.native(n_ctx, n_slots, max_batch_tokens), weights)
            except kernels.NativeError as e:
                raise _fail(gguf.path, f"the native model refused the weights: {e}") from None
        except BaseException:
            gguf.close()
            raise
        return cls(gguf, config, native, n_ctx, n_slots, max_batch_tokens)

    # ---- running ----

    def forward(self, tokens, slots, positions, out_rows, out: np.ndarray | None = None) -> np.ndarray:
        """Runs a batch (int32 arrays: token i is tokens[i] at positions[i] of slot slots[i])
        and returns float32 logits (len(out_rows), vocab_size) of the rows listed."""
        try:
            return self._native.forward(tokens, slots, positions, out_rows, False, out)
        except kernels.NativeError as e:
            raise self._explain(e, tokens, slots, positions, out_rows) from None

    def forward_hidden(self, tokens, slots, positions, out_rows=()) -> tuple[np.ndarray, np.ndarray]:
        """As forward, also returning the final normalized hidden states (n_tokens, dim)."""
        try:
            return self._native.forward(tokens, slots, positions, out_rows, True, None)
        except kernels.NativeError as e:
            raise self._explain(e, tokens, slots, positions, out_rows) from None

    def embed(self, tokens, slot: int = 0, start: int = 0) -> np.ndarray:
        """Final normalized hidden states (n, dim) of one sequence's tokens at positions
        start, start + 1, ... of `slot` (in chunks of max_batch_tokens)."""
        tokens = np.asarray(tokens, np.int32)
        rows = []
        for i in range(0, len(tokens), self.max_batch_tokens):
            chunk = tokens[i : i + self.max_batch_tokens]
            pos = np.arange(start + i, start + i + len(chunk), dtype=np.int32)
            rows.append(self.forward_hidden(chunk, np.full(len(chunk), slot, np.int32), pos)[1])
        return np.concatenate(rows) if rows else np.zeros((0, self.config.dim), np.float32)

    def copy_slot(self, src: int, dst: int, n_positions: int) -> None:
        """Copies the first n_positions cached positions of slot src into slot dst."""
        try:
            self._native.copy_slot(src, dst, n_positions)
        except kernels.NativeError as e:
            raise ValueError(
                f"cannot copy {n_positions} positions of slot {src} to slot {dst}: "
                "slot out of range, or positions not (or no longer) cached"
            ) from e

    def kv_bytes(self) -> int:
        return self._native.kv_bytes()

    def repacked_matrices(self) -> int:
        """Weight matrices the native model reads through a repacked copy (SMALLMIND_REPACK)."""
        return self._native.repacked()

    def close(self) -> None:
        self._native = None
        self.gguf.close()

    def _explain(self, e, tokens, slots, positions, out_rows) -> Exception:
        """A precise message for a refused batch (only computed on failure)."""
        if e.code != -5:  # not SM_E_ARG
            return KernelError(str(e))
        tokens, slots, positions, out_rows = (
            np.asarray(a).reshape(-1) for a in (tokens, slots, positions, out_rows)
        )
        n = len(tokens)
        checks = [
            (
                n == 0 or n > self.max_batch_tokens,
                f"a batch holds 1..{self.max_batch_tokens} tokens, got {n}",
            ),
            (len(out_rows) > self.max_batch_tokens, f"at most {self.max_batch_tokens} out rows"),
            (
                ((tokens < 0) | (tokens >= self.vocab_size)).any(),
                f"token id outside 0..{self.vocab_size - 1}",
            ),
            (((slots < 0) | (slots >= self.n_slots)).any(), f"slot outside 0..{self.n_slots - 1}"),
            (
                ((positions < 0) | (positions >= self.n_ctx)).any(),
                f"position outside 0..{self.n_ctx - 1} (n_ctx)",
            ),
            (((out_rows < 0) | (out_rows >= n)).any(), f"out row outside 0..{n - 1}"),
        ]
        for bad, msg in checks:
            if bad:
                return ValueError(f"bad batch: {msg}")
        return ValueError(
            "bad batch: a slot's positions must be contiguous and increasing, start at "
            "most at its cached length, and (sliding-window layers) have their window cached"
        )
