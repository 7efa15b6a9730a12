"""The .smq reader against files written by SmallMind's own C# code (../shared/reference/smq).

Oracles: synthetic_all_schemes.expected.json (SmallMind's Dequantize() output, bit for bit),
the readback JSON files, and tiny-golden.json's prompts for tiny-llama-q8_0.smq, SmallMind's
import of tiny-llama-q8_0.gguf.

Measured (float64 numpy forward over each file's own dequantized weights, every position
of the three prompts, max |logit error| over the whole vocabulary): the GGUF path max 0.196,
mean 0.156; the .smq path max 0.168, mean 0.148.  The error is the kernels' 8-bit rounding of
activations (llama.cpp's, too, is 0.06-0.13 from the same float64 forward)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from smallmind import _kernels
from smallmind.engine.model import Model
from smallmind.errors import ModelFormatError
from smallmind.gguf import GGMLType
from smallmind.modelfile import open_model_file
from smallmind.smq import ENTRY, HEADER, SMQFile, Scheme
from tests.conftest import REPO, reference_path

F64_RATIO_TOL = 1.25  # .smq error vs float64 may exceed the GGUF path's by at most 25%
F64_MAX_TOL = 0.25  # max |logit error| vs float64 either path may have (measured 0.196)


def smq_ref(name):
    return reference_path("smq", name)


# ---------------------------------------------------------------------------------------
# SmallMind's own files
# ---------------------------------------------------------------------------------------


def test_synthetic_tensors_bit_match_smallmind_dequantize():
    expected = json.loads(smq_ref("synthetic_all_schemes.expected.json").read_text())["tensors"]
    with SMQFile(smq_ref("synthetic_all_schemes.smq")) as f:
        assert list(f.tensors) == [t["name"] for t in expected]
        for t in expected:
            want = np.array(t["dequantized_bits"], np.uint32)
            assert np.array_equal(f.dequantized(t["name"]).view(np.uint32), want), t["name"]
            # what the engine is handed: float32 SmallMind's values (these scales are not
            # float16-exact, so no GGUF block can hold them)
            served = f.tensor(t["name"])
            assert f.tensors[t["name"]].type == GGMLType.F32
            assert np.array_equal(np.asarray(served).reshape(-1).view(np.uint32), want), t["name"]
            if t["scheme"] == "F32":
                continue
            e = f.entries[t["name"]]
            assert e.block_size == t["block_size"]
            assert np.array_equal(f._scales(e).view(np.uint32), np.array(t["scales_bits"], np.uint32))
            if t["scheme"] == "Q8_0":
                assert f.quants(t["name"]).tolist() == t["quants"]
            else:
                packed = f._blob(e.data_offset, e.data_length).tolist()
                assert packed == t["packed_bytes"]
                assert f.quants(t["name"]).min() >= -8 and f.quants(t["name"]).max() <= 7


def test_synthetic_metadata_and_directory_match_readback():
    readback = json.loads(smq_ref("synthetic_all_schemes.readback.json").read_text())
    with SMQFile(smq_ref("synthetic_all_schemes.smq")) as f:
        meta = f.metadata
        assert meta["escape_probe"] == "q\"uote <tag> & 'apos' +plus `tick` back\\slash\nnl\ttab é Ġhello 😀"
        assert meta["strings"] == ["<s>", "</s>", "▁the"]
        assert meta["ints"].tolist() == [1, -2, 3] and meta["flag"] is True
        assert meta["floats"].dtype == np.float32
        assert meta["third"] == pytest.approx(0.33333334)
    text = json.dumps(readback)
    for name in ("q4_0.bs64.odd.3x33", "f32.rank3_2x3x5"):
        assert name in text


def test_no_metadata_file():
    with SMQFile(smq_ref("synthetic_no_metadata.smq")) as f:
        assert f.metadata == {} and f.data_offset == 32 + 156
        e = f.entries["w"]
        assert (e.scheme, e.dims, e.block_size) == (Scheme.Q8_0, (1, 64), 64)
        assert f.tensors["w"].ne == (64,)  # SmallMind's [1, n] is a 1-D tensor


def test_tiny_llama_smq_directory():
    report = json.loads(smq_ref("tiny-llama-q8_0.import-report.json").read_text())
    with SMQFile(smq_ref("tiny-llama-q8_0.smq")) as f:
        assert len(f.entries) == 21
        assert sum(e.scheme == Scheme.Q8_0 and e.block_size == 64 for e in f.entries.values()) == 16
        # a re-quantized GGUF Q8_0 keeps float16-exact scales: served as GGUF Q8_0 blocks
        assert {i.type_name for i in f.tensors.values()} == {"Q8_0", "F32"}
        assert f.metadata["general.architecture"] == "llama"
        assert f.metadata["tokenizer.ggml.scores"].dtype == np.float32
        assert "token_embd.weight" in json.dumps(report)


@pytest.mark.isa  # through the kernel table: run again against the wheel under each ISA
def test_smq_blocks_rebuilt_as_gguf_dequantize_to_smallmind_values():
    """The Q8_0 blocks the kernels get hold exactly SmallMind's dequantized values."""
    with SMQFile(smq_ref("tiny-llama-q8_0.smq")) as f:
        for name in ("blk.0.attn_q.weight", "token_embd.weight"):
            info = f.tensors[name]
            ours = _kernels.dequantize(f.tensor(name), info.type, info.ne[0]).reshape(-1)
            assert np.array_equal(ours.view(np.uint32), f.dequantized(name).view(np.uint32))


# ---------------------------------------------------------------------------------------
# serving tiny-llama-q8_0.smq against a float64 forward pass
# ---------------------------------------------------------------------------------------


def dequantized64(f, name):
    info = f.tensors[name]
    if getattr(f, "format", "") == "smq":
        return f.dequantized(name).astype(np.float64).reshape(info.shape)
    w = f.tensor(name)
    if info.type == GGMLType.F32:
        return np.asarray(w, np.float64)
    return _kernels.dequantize(w, info.type, info.ne[0]).astype(np.float64).reshape(info.shape)


def llama_forward64(f, cfg, ids):
    """Logits (n, vocab) of a llama model in float64 numpy over the file's dequantized weights."""
    W = lambda name: dequantized64(f, name)  # noqa: E731

    def norm(x, w):  # noqa: E306
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps) * w

    n, hd = len(ids), cfg.head_dim
    angles = np.arange(n)[:, None] * cfg.rope_base ** (-np.arange(0, hd, 2) / hd)
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]

    def rope(t):  # (n, heads, head_dim); llama rotates adjacent pairs
        a, b = t[..., 0::2], t[..., 1::2]
        out = np.empty_like(t)
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
        return out

    mask = np.triu(np.full((n, n), -np.inf), 1)
    group = cfg.n_heads // cfg.n_kv_heads
    x = W("token_embd.weight")[ids]
    for il in range(cfg.n_layers):
        p = f"blk.{il}."
        h = norm(x, W(p + "attn_norm.weight"))
        q = rope((h @ W(p + "attn_q.weight").T).reshape(n, cfg.n_heads, hd))
        k = rope((h @ W(p + "attn_k.weight").T).reshape(n, cfg.n_kv_heads, hd))
        v = (h @ W(p + "attn_v.weight").T).reshape(n, cfg.n_kv_heads, hd)
        att = np.empty((n, cfg.n_heads, hd))
        for head in range(cfg.n_heads):
            s = q[:, head] @ k[:, head // group].T * cfg.attn_scale + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            att[:, head] = s / s.sum(-1, keepdims=True) @ v[:, head // group]
        x = x + att.reshape(n, -1) @ W(p + "attn_output.weight").T
        h = norm(x, W(p + "ffn_norm.weight"))
        gate = h @ W(p + "ffn_gate.weight").T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ W(p + "ffn_up.weight").T)) @ W(p + "ffn_down.weight").T
    return norm(x, W("output_norm.weight")) @ W("output.weight").T


def errors_vs_float64(path):
    cases = json.loads(reference_path("tiny", "tiny-golden.json").read_text())["models"][
        "tiny-llama-q8_0.gguf"
    ]
    model = Model.load(path, n_ctx=256, n_slots=1, max_batch_tokens=64)
    errors = []
    with open_model_file(path) as f:
        for case in cases:
            ids = np.array(case["prompt_ids"], np.int32)
            n = len(ids)
            logits = model.forward(
                ids, np.zeros(n, np.int32), np.arange(n, dtype=np.int32), np.arange(n, dtype=np.int32)
            )
            errors.append(np.abs(logits - llama_forward64(f, model.config, ids)).max(-1))
    model.close()
    return np.concatenate(errors)


@pytest.mark.isa  # through the kernel table: run again against the wheel under each ISA
def test_smallmind_smq_logits_within_the_gguf_bounds():
    gguf = errors_vs_float64(reference_path("tiny", "tiny-llama-q8_0.gguf"))
    smq = errors_vs_float64(smq_ref("tiny-llama-q8_0.smq"))
    assert len(smq) == len(gguf) == 25
    assert gguf.max() < F64_MAX_TOL and smq.max() < F64_MAX_TOL, (gguf.max(), smq.max())
    assert smq.max() <= F64_RATIO_TOL * gguf.max() and smq.mean() <= F64_RATIO_TOL * gguf.mean()


def run_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "smallmind", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.e2e  # runs `python -m smallmind`
def test_generate_and_info_on_smallmind_smq():
    path = str(smq_ref("tiny-llama-q8_0.smq"))
    out = run_cli("generate", "-m", path, "--max-tokens", "8", "--seed", "1", "Hello")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    info = run_cli("info", "-m", path)
    assert info.returncode == 0, info.stderr
    assert "format: smq" in info.stdout
    assert "token_embd.weight: Q8_0 dims [256, 32000] block 64 -> Q8_0 [256, 32000]" in info.stdout


@pytest.mark.e2e  # runs `python -m smallmind`
def test_smq_without_tokenizer_is_one_line_error():
    out = run_cli("generate", "-m", str(smq_ref("synthetic_all_schemes.smq")), "x")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "tokenizer" in out.stderr and "Traceback" not in out.stderr


def test_smq_without_gguf_metadata_is_explained():
    with pytest.raises(ModelFormatError, match="carries no GGUF metadata"):
        Model.load(smq_ref("synthetic_all_schemes.smq"))


def test_dropped_architecture_keys_are_explained(tmp_path):
    meta = {"general.architecture": "qwen2", "converted_from": "GGUF"}
    path = tmp_path / "qwen.smq"
    path.write_bytes(smq_bytes([entry("token_embd.weight", Scheme.F32, (32, 4), 0, 512)], meta, 512))
    with pytest.raises(ModelFormatError, match="keeps only llama"):
        Model.load(path)


# ---------------------------------------------------------------------------------------
# hostile files
# ---------------------------------------------------------------------------------------


def entry(name, scheme, dims, block, data_len, aux_len=0, data_off=None, aux_off=None):
    return dict(
        name=name,
        scheme=scheme,
        dims=dims,
        block=block,
        data_len=data_len,
        aux_len=aux_len,
        data_off=data_off,
        aux_off=aux_off,
    )


def smq_bytes(
    entries, meta=None, blob_bytes=0, version=1, header_size=32, count=None, meta_len=None, rank=None
):
    """A hand-made .smq: blobs laid back to back unless an entry gives its own offsets."""
    js = json.dumps(meta).encode() if meta else b""
    start = 32 + len(js) + 156 * len(entries)
    out, pos = [], start
    for e in entries:
        d_off = e["data_off"] if e["data_off"] is not None else pos
        pos = d_off + e["data_len"]
        a_off = e["aux_off"] if e["aux_off"] is not None else (pos if e["aux_len"] else 0)
        pos = max(pos, a_off + e["aux_len"])
        dims = list(e["dims"]) + [0] * (8 - len(e["dims"]))
        out.append(
            ENTRY.pack(
                e["name"].encode(),
                e["scheme"],
                len(e["dims"]) if rank is None else rank,
                *dims,
                e["block"],
                d_off,
                e["data_len"],
                a_off,
                e["aux_len"],
                b"",
            )
        )
    head = HEADER.pack(
        b"SMQv0001",
        version,
        header_size,
        len(entries) if count is None else count,
        len(js) if meta_len is None else meta_len,
        0,
    )
    return head + js + b"".join(out) + bytes(max(blob_bytes, min(pos - start, 1 << 16)))


GOOD = entry("w", Scheme.Q8_0, (64, 2), 64, 128, 8)
HOSTILE = {
    "short": (lambda: b"SMQv0001\x01", "too short"),
    "magic": (lambda: b"SMQv0002" + smq_bytes([GOOD])[8:], "bad magic"),
    "version": (lambda: smq_bytes([GOOD], version=2), "unsupported SMQ version"),
    "header size": (lambda: smq_bytes([GOOD], header_size=64), "header size"),
    "count": (lambda: smq_bytes([GOOD], count=1 << 31), "tensor count"),
    "meta past end": (lambda: smq_bytes([GOOD], meta_len=1 << 30), "metadata length"),
    "bad json": (
        lambda: smq_bytes([GOOD], {"a": 1})[:32] + b'{"a":]' + smq_bytes([GOOD], {"a": 1})[39:],
        "malformed",
    ),
    "json list": (lambda: smq_bytes([GOOD], [1, 2]), "not an object"),
    "deep json": (
        lambda: HEADER.pack(b"SMQv0001", 1, 32, 0, 200000, 0) + b"[" * 100000 + b"]" * 100000,
        "malformed",
    ),
    "rank 9": (lambda: smq_bytes([GOOD], rank=9), "rank 9"),
    "rank 0": (lambda: smq_bytes([GOOD], rank=0), "rank 0"),
    "dim 0": (lambda: smq_bytes([entry("w", Scheme.F32, (0, 2), 0, 0)]), "dimension <= 0"),
    "huge dims": (lambda: smq_bytes([entry("w", Scheme.F32, (1 << 30, 1 << 30), 0, 16)]), "absurd"),
    "scheme": (lambda: smq_bytes([entry("w", Scheme.Q4_K, (256, 1), 256, 144)]), "unsupported scheme Q4_K"),
    "block 0": (lambda: smq_bytes([entry("w", Scheme.Q8_0, (64, 2), 0, 128, 8)]), "block size is 0"),
    "q8 rank": (lambda: smq_bytes([entry("w", Scheme.Q8_0, (128,), 64, 128, 8)]), "rank 2"),
    "data length": (lambda: smq_bytes([entry("w", Scheme.Q8_0, (64, 2), 64, 127, 8)]), "lengths"),
    "aux length": (lambda: smq_bytes([entry("w", Scheme.Q8_0, (64, 2), 64, 128, 4)]), "lengths"),
    "past end": (lambda: smq_bytes([entry("w", Scheme.F32, (4,), 0, 16, data_off=1 << 40)]), "outside"),
    "into dir": (lambda: smq_bytes([entry("w", Scheme.F32, (4,), 0, 16, data_off=40)]), "outside"),
    "overlap": (
        lambda: smq_bytes(
            [
                entry("a", Scheme.F32, (4,), 0, 16, data_off=344),
                entry("b", Scheme.F32, (4,), 0, 16, data_off=352),
            ],
            blob_bytes=32,
        ),
        "overlap",
    ),
    "duplicate": (lambda: smq_bytes([entry("a", Scheme.F32, (4,), 0, 16)] * 2), "duplicate"),
    "name": (lambda: smq_bytes([entry("\udcff", Scheme.F32, (4,), 0, 16)]), "malformed"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_files_are_one_line_model_format_errors(tmp_path, case):
    make, message = HOSTILE[case]
    path = tmp_path / "bad.smq"
    try:
        data = make()
    except UnicodeEncodeError:  # a name that is not UTF-8: write its raw bytes
        data = smq_bytes([entry("x", Scheme.F32, (4,), 0, 16)]).replace(b"x\0", b"\xff\0", 1)
    path.write_bytes(data)
    with pytest.raises(ModelFormatError, match=message) as err:
        SMQFile(path)
    assert "\n" not in str(err.value)


@pytest.mark.e2e  # runs `python -m smallmind`
def test_hostile_file_through_the_cli(tmp_path):
    path = tmp_path / "bad.smq"
    path.write_bytes(smq_bytes([entry("w", Scheme.F32, (4,), 0, 16, data_off=1 << 40)]))
    out = run_cli("generate", "-m", str(path), "x")
    assert out.returncode == 2 and "outside" in out.stderr and "Traceback" not in out.stderr


def test_well_formed_hand_made_file_reads(tmp_path):
    """The hostile cases differ from this file in one field each."""
    path = tmp_path / "good.smq"
    path.write_bytes(smq_bytes([GOOD], {"general.architecture": "llama"}))
    with SMQFile(path) as f:
        assert f.architecture == "llama"
        assert f.tensors["w"].type == GGMLType.Q8_0  # all-zero scales are float16-exact
        assert f.tensor("w").shape == (2, 68)


def test_unaligned_f32_blob_is_copied_aligned_blob_is_a_view(tmp_path):
    values = np.arange(8, dtype=np.float32)
    for off, is_view in ((32 + 156 + 4, True), (32 + 156 + 20, False)):  # 192 % 32 == 0
        data = bytearray(smq_bytes([entry("w", Scheme.F32, (8,), 0, 32, data_off=off)]))
        data[off : off + 32] = values.tobytes()
        path = tmp_path / f"f{off}.smq"
        path.write_bytes(bytes(data))
        with SMQFile(path) as f:
            t = f.tensor("w")
            assert t.tolist() == values.tolist()
            assert np.shares_memory(t, np.frombuffer(f._mapping(), np.uint8)) == is_view


# ---------------------------------------------------------------------------------------
# serving
# ---------------------------------------------------------------------------------------


@pytest.mark.e2e  # starts the server
def test_server_serves_smallmind_smq_and_a_converted_default_model(tmp_path):
    """ModelPath=x.smq: SmallMind's tiny import, and the default model converted to .smq
    (whose greedy completion is the GGUF's, token for token, as its logits are identical)."""
    from openai import OpenAI

    from smallmind.convert import convert
    from tests.conftest import default_model_path
    from tests.server_process import ServerProcess

    converted = tmp_path / "gemma.smq"
    convert(default_model_path(), converted)
    texts = {}
    for path in (smq_ref("tiny-llama-q8_0.smq"), converted, default_model_path()):
        proc = ServerProcess(f"--ServerOptions:ModelPath={path}", "--ServerOptions:MaxContextTokens=256")
        try:
            proc.wait_ready()
            client = OpenAI(base_url=proc.url + "/v1", api_key="x")
            reply = client.completions.create(
                model="m", prompt="The capital of France is", max_tokens=12, temperature=0
            )
            assert reply.choices[0].text and reply.usage.completion_tokens > 0
            texts[path] = reply.choices[0].text
        finally:
            proc.stop()
    assert texts[converted] == texts[default_model_path()]
