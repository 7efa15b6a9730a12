"""`python -m smallmind` as a user runs it: real processes, exit codes, one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from smallmind import kernels
from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.wheel]  # runs `python -m smallmind`; against the wheel too


def run(*args, env=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "smallmind", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_info_prints_version_isa_and_threads():
    r = run("info", env={"SMALLMIND_THREADS": "2"})
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.strip().splitlines()[1:])
    assert r.stdout.startswith("smallmind ")
    assert lines["isa"] in lines["available isas"].split(", ")
    assert "scalar" in lines["available isas"]
    assert lines["threads"].startswith("2 ")


@pytest.mark.parametrize("isa", kernels.available_isas())
def test_smallmind_isa_forces_a_path(isa):
    r = run("info", env={"SMALLMIND_ISA": isa})
    assert r.returncode == 0, r.stderr
    assert f"isa: {isa}\n" in r.stdout


def test_unavailable_isa_is_a_one_line_error():
    missing = [name for name in ("avx512", "avx2", "neon") if name not in kernels.available_isas()]
    for name in missing + ["pentium"]:
        r = run("info", env={"SMALLMIND_ISA": name})
        assert r.returncode != 0
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert name in r.stderr


def test_bad_thread_count_is_a_one_line_error():
    r = run("info", env={"SMALLMIND_THREADS": "many"})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "SMALLMIND_THREADS" in r.stderr


def test_tokenize_prints_json_ids():
    from smallmind.engine.tokenizer import Tokenizer
    from smallmind.gguf import GGUFFile
    from tests.conftest import reference_path

    path = reference_path("vocab", "ggml-vocab-llama-spm.gguf")
    r = run("tokenize", "-m", str(path), "Hello world")
    assert r.returncode == 0, r.stderr
    with GGUFFile(path) as f:
        expected = Tokenizer.from_gguf(f.metadata).encode("Hello world", add_special=True)
    assert json.loads(r.stdout) == expected and expected[0] == 1
    r = run("tokenize", "-m", str(path), "--no-bos", "Hello world")
    assert json.loads(r.stdout) == expected[1:]


def test_generate_streams_only_the_text():
    """stdout is exactly the greedy continuation the engine produces in-process, plus a newline."""
    from smallmind.engine.engine import Engine
    from smallmind.engine.model import Model
    from smallmind.engine.sampling_params import SamplingParams
    from smallmind.engine.tokenizer import Tokenizer
    from tests.conftest import reference_path

    path = reference_path("tiny", "tiny-llama-q8_0.gguf")
    r = run("generate", "-m", str(path), "--max-tokens", "8", "--temperature", "0", "Once upon a time")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    model = Model.load(path, n_ctx=256, n_slots=1)
    tokenizer = Tokenizer.from_gguf(model.gguf.metadata)
    prompt = tokenizer.encode("Once upon a time", add_special=True, parse_special=True)
    ids = list(
        Engine(model, eog_ids=tokenizer.eog_ids).generate(prompt, SamplingParams(temperature=0, max_tokens=8))
    )
    model.close()
    assert ids and r.stdout == tokenizer.decode(ids, skip_special=True) + "\n"


def test_missing_model_is_a_one_line_error():
    for cmd in (["generate", "-m", "/nonexistent.gguf", "hi"], ["tokenize", "-m", "/nonexistent.gguf", "hi"]):
        r = run(*cmd)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines() == [r.stderr.strip()]
        assert "not found" in r.stderr
