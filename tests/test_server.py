"""End to end: the real server (`python -m smallmind.server`, default model) on a free port,
driven by the real `openai` SDK (sync and async, streamed and not) and by raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import openai
import pytest

from conftest import REPO, default_model_path, server_fixture
from server_process import ServerProcess, http, metric, start_and_expect_exit

pytestmark = [pytest.mark.e2e, pytest.mark.wheel]  # every test starts the server; against the wheel too

N_CTX = 1024
GEMMA_TURN = "<bos><start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"


server = server_fixture(
    f"--ServerOptions:MaxContextTokens={N_CTX}", "--ServerOptions:MaxConcurrentRequests=4"
)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def engine_greedy():
    """Greedy text straight from the engine (no server), for comparison."""
    from smallmind.engine.engine import Engine
    from smallmind.engine.model import Model
    from smallmind.engine.sampling_params import SamplingParams
    from smallmind.engine.tokenizer import Tokenizer

    model = Model.load(default_model_path(), n_ctx=N_CTX, n_slots=1)
    tokenizer = Tokenizer.from_gguf(model.gguf.metadata)
    engine = Engine(model, eog_ids=tokenizer.eog_ids)

    def run(text: str, max_tokens: int, chat: bool = True) -> tuple[str, int, int]:
        prompt = (
            tokenizer.encode(GEMMA_TURN.format(text), add_special=False, parse_special=True)
            if chat
            else tokenizer.encode(text, add_special=True, parse_special=True)
        )
        ids = list(engine.generate(prompt, SamplingParams(temperature=0, max_tokens=max_tokens)))
        return tokenizer.decode(ids, skip_special=True), len(prompt), len(ids)

    yield run
    model.close()


def chat(client, content, **kw):
    kw.setdefault("max_tokens", 24)
    return client.chat.completions.create(
        model="anything", messages=[{"role": "user", "content": content}], **kw
    )


# ----------------------------------------------------------------------------- probes, models


def test_probes_and_models(server, client):
    status, headers, body = http("GET", server.url + "/healthz")
    assert status == 200 and json.loads(body) == {"status": "healthy"}
    status, _, body = http("GET", server.url + "/readyz")
    ready = json.loads(body)
    assert status == 200 and ready["status"] == "ready" and ready["capabilities"]["context_length"] == N_CTX
    models = client.models.list().data
    assert [m.id for m in models] == ["gemma-3-270m-q4_k_m"] and models[0].owned_by == "smallmind"
    assert client.models.retrieve("gemma-3-270m-q4_k_m").id == "gemma-3-270m-q4_k_m"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# ----------------------------------------------------------------------------- chat


def test_chat_greedy_equals_engine(client, engine_greedy):
    question = "What is the largest planet in the solar system?"
    expected, n_prompt, n_completion = engine_greedy(question, 24)
    r = chat(client, question, temperature=0)
    assert r.object == "chat.completion" and r.model == "gemma-3-270m-q4_k_m"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason == ("length" if n_completion == 24 else "stop")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, n_completion)
    assert r.usage.total_tokens == n_prompt + n_completion


def test_chat_stream_matches_non_stream(client):
    question = "Name three colors."
    whole = chat(client, question, temperature=0, max_tokens=20).choices[0].message.content
    chunks = list(
        chat(
            client,
            question,
            temperature=0,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(content) == whole
    assert sum(1 for piece in content if piece) >= 5  # token by token, not one lump
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["length"], ["stop"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_chat_system_message_and_content_parts(client):
    r = client.chat.completions.create(
        model="x",
        max_tokens=8,
        temperature=0,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
        ],
    )
    assert r.choices[0].message.content


def test_chat_seed_reproducible_and_n(client):
    kw = dict(temperature=1.0, seed=1234, max_tokens=16)
    a = chat(client, "Tell me a story.", **kw).choices[0].message.content
    b = chat(client, "Tell me a story.", **kw).choices[0].message.content
    assert a == b
    r = chat(client, "Tell me a story.", n=3, **kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.choices[0].message.content == a  # choice j uses seed + j
    assert len({c.message.content for c in r.choices}) > 1


def test_async_streams_run_together(server):
    """Four concurrent streamed chats through AsyncOpenAI; each equals its own solo run."""

    async def main():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        prompts = ["Count to five.", "Say hello.", "What is 2+2?", "Name a fruit."]

        async def one(p, stream):
            kw = dict(
                model="x", messages=[{"role": "user", "content": p}], max_tokens=12, seed=7, temperature=0.7
            )
            if not stream:
                return (await client.chat.completions.create(**kw)).choices[0].message.content
            out = []
            async for chunk in await client.chat.completions.create(stream=True, **kw):
                if chunk.choices and chunk.choices[0].delta.content:
                    out.append(chunk.choices[0].delta.content)
            return "".join(out)

        solo = [await one(p, False) for p in prompts]
        together = await asyncio.gather(*(one(p, True) for p in prompts))
        await client.close()
        return solo, together

    solo, together = asyncio.run(main())
    assert all(solo)
    # same seed, same request -> same sampled text, batched or not (greedy-free draws are
    # robust to float-order differences unless a draw falls on a boundary: allow one)
    assert sum(a == b for a, b in zip(solo, together)) >= 3, (solo, together)


# ----------------------------------------------------------------------------- completions


def test_completion_greedy_and_echo(client, engine_greedy):
    expected, n_prompt, n_completion = engine_greedy("The capital of France is", 12, chat=False)
    r = client.completions.create(model="x", prompt="The capital of France is", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text == expected
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, n_completion)
    echoed = client.completions.create(
        model="x", prompt="The capital of France is", max_tokens=12, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "The capital of France is" + expected


def test_completion_prompt_lists(client):
    r = client.completions.create(
        model="x", prompt=["One, two,", "Red, green,"], max_tokens=4, temperature=0, n=2
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text and r.choices[2].text == r.choices[3].text
    ids = client.completions.create(
        model="x", prompt=[2, 818, 5279, 529, 7001, 563], max_tokens=4, temperature=0
    )
    assert ids.usage.prompt_tokens == 6 and ids.choices[0].text


def test_stop_strings_never_leak(client):
    base = (
        client.completions.create(model="x", prompt="1, 2, 3, 4, 5,", max_tokens=24, temperature=0)
        .choices[0]
        .text
    )
    m = re.search(r"\d+", base[4:])
    assert m, base
    stop = base[4 + m.start() : 4 + m.end() + 1]  # a number and what follows, mid-text
    cut = base[: base.index(stop)]
    r = client.completions.create(
        model="x", prompt="1, 2, 3, 4, 5,", max_tokens=24, temperature=0, stop=[stop, "zzz"]
    )
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    pieces = [
        c.choices[0].text
        for c in client.completions.create(
            model="x", prompt="1, 2, 3, 4, 5,", max_tokens=24, temperature=0, stop=stop, stream=True
        )
    ]
    assert "".join(pieces) == cut


# ----------------------------------------------------------------------------- embeddings


def test_embeddings(client):
    r = client.embeddings.create(model="x", input=["The quick brown fox", "jumps over the lazy dog"])
    assert [d.index for d in r.data] == [0, 1]
    vectors = np.array([d.embedding for d in r.data])
    assert vectors.shape == (2, 640)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert r.usage.prompt_tokens == r.usage.total_tokens > 8
    again = client.embeddings.create(model="x", input="The quick brown fox", encoding_format="float")
    np.testing.assert_allclose(again.data[0].embedding, vectors[0], atol=1e-6)
    ids = client.embeddings.create(model="x", input=[[2, 818, 3823, 8864, 37423]])
    assert len(ids.data[0].embedding) == 640


def test_embeddings_base64_wire_format(server):
    body = json.dumps({"input": "hello", "encoding_format": "base64"}).encode()
    status, _, raw = http("POST", server.url + "/v1/embeddings", body, {"Content-Type": "application/json"})
    vec = np.frombuffer(base64.b64decode(json.loads(raw)["data"][0]["embedding"]), "<f4")
    assert status == 200 and vec.shape == (640,) and abs(np.linalg.norm(vec) - 1) < 1e-5


# ----------------------------------------------------------------------------- errors


def error_of(server, method, path, body=None, headers=None):
    status, hdrs, raw = http(method, server.url + path, body, headers or {"Content-Type": "application/json"})
    assert hdrs.get("Content-Type", "").startswith("application/json"), raw
    return status, json.loads(raw)["error"]


def test_sdk_error_mapping(client):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "hi", temperature=5)
    assert e.value.status_code == 400 and e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "hi " * (N_CTX + 10))
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "hi", max_tokens=N_CTX)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="x", messages=[])
    with pytest.raises(openai.NotFoundError):
        client.get("/no/such/route", cast_to=object)


def test_http_error_statuses(server):
    status, err = error_of(server, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and err["type"] == "invalid_request_error"
    status, err = error_of(server, "POST", "/v1/chat/completions", b'{"messages": "hi"}')
    assert status == 400 and err["param"] == "messages"
    status, err = error_of(server, "GET", "/v1/chat/completions")
    assert status == 405
    status, err = error_of(server, "GET", "/v2/nothing")
    assert status == 404
    status, err = error_of(server, "POST", "/v1/completions", b'{"prompt": "' + b"a" * (11 << 20) + b'"}')
    assert status == 413
    status, err = error_of(server, "POST", "/v1/embeddings", b'{"input": ""}')
    assert status == 400 and err["param"] == "input"
    # unknown fields are ignored, as OpenAI clients send them
    ok, _, _ = http(
        "POST",
        server.url + "/v1/completions",
        json.dumps({"prompt": "Hi", "max_tokens": 2, "frobnicate": True, "user": "u"}).encode(),
        {"Content-Type": "application/json"},
    )
    assert ok == 200


# ----------------------------------------------------------------------------- README, load


def readme_curl_commands(port: int) -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = []
    for block in blocks:
        for cmd in re.split(r"\n(?=curl )", block.strip()):
            if cmd.startswith("curl http://localhost:8080"):
                commands.append(cmd.replace("localhost:8080", f"127.0.0.1:{port}"))
    return commands


def test_readme_curl_examples(server):
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed (scripts/test.sh installs it)")
    commands = readme_curl_commands(server.port)
    assert len(commands) >= 4, commands
    for cmd in commands:
        run = subprocess.run(
            ["bash", "-c", cmd.replace("curl ", "curl -sS --fail-with-body ", 1)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, (cmd, run.stdout, run.stderr)
        assert run.stdout.strip()


def test_healthz_fast_while_streams_generate(server):
    """/healthz answers from the event loop while four streams keep the engine busy."""
    stop = threading.Event()

    def stream_forever(i):
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        while not stop.is_set():
            for _ in client.chat.completions.create(
                model="x",
                stream=True,
                max_tokens=64,
                messages=[{"role": "user", "content": f"Write a long story number {i}."}],
            ):
                pass

    workers = [threading.Thread(target=stream_forever, args=(i,), daemon=True) for i in range(4)]
    for w in workers:
        w.start()
    time.sleep(2)
    latencies = []
    for _ in range(100):
        t0 = time.perf_counter()
        status, _, _ = http("GET", server.url + "/healthz")
        latencies.append(time.perf_counter() - t0)
        assert status == 200
        time.sleep(0.02)
    stop.set()
    for w in workers:
        w.join(60)
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    print(f"/healthz under 4 streams: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    assert p99 < 250, latencies  # the target is 50 ms; a shared CI machine gets slack


def test_node_openai_client(server, tmp_path):
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm not installed: the Node client check runs where node is present")
    script = REPO / "tests" / "node" / "openai_client.mjs"
    install = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(tmp_path), "openai@^4"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    (tmp_path / "client.mjs").write_text(script.read_text())
    run = subprocess.run(
        [node, str(tmp_path / "client.mjs"), server.url + "/v1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["chat"] and report["stream"] and report["embedding_dims"] == 640


# ----------------------------------------------------------------------------- start-up


def test_serves_a_registry_model_by_id(tmp_path):
    from smallmind.registry import Registry

    cache = tmp_path / "models"
    Registry(cache).add_path(default_model_path(), "my-gemma", link=True)
    proc = ServerProcess(
        "--ServerOptions:ModelId=my-gemma",
        f"--ServerOptions:CacheDir={cache}",
        "--ServerOptions:MaxContextTokens=256",
    )
    try:
        proc.wait_ready()
        client = openai.OpenAI(base_url=proc.url + "/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["my-gemma"]
        assert chat(client, "Hi", max_tokens=2).model == "my-gemma"
    finally:
        proc.stop()


@pytest.mark.parametrize(
    "args, key",
    [
        (["--port", "abc"], "Port"),
        (["--ServerOptions:MaxConcurrentRequests=0"], "MaxConcurrentRequests"),
        (["--ServerOptions:ModelId=no-such-model", "--ServerOptions:CacheDir=/nonexistent/cache"], "ModelId"),
        (["--ServerOptions:ModelPath=/nonexistent/model.gguf"], "ModelPath"),
    ],
)
def test_bad_settings_stop_start_up_with_one_line(args, key):

    run = subprocess.run(
        [sys.executable, "-m", "smallmind.server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in run.stderr, run.stderr


def test_unloadable_model_ends_the_process(tmp_path):
    """A model that cannot load ends the server with one line (an orchestrator restarts or
    reports a dead process; a live one stuck at 503 it cannot see).  More corruptions:
    tests/test_hostile_http.py."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    done = start_and_expect_exit(f"--ServerOptions:ModelPath={broken}")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and str(broken) in errors[0] and "Traceback" not in done.stderr


SYSTEM_PROMPT = ("You answer questions about the sea. " * 30).strip()


def ask_with_system(client, question: str, **kw):
    return client.chat.completions.create(
        model="default",
        max_tokens=4,
        temperature=0,
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
        **kw,
    )


def test_prefix_cache_reuses_a_shared_system_prompt(server, client):
    """The second request with the same long system prompt finds it cached (usage says how
    many prompt tokens came from the cache, as OpenAI's API does), and answers exactly as a
    server without the cache does."""
    first = ask_with_system(client, "Why is it salty?")
    second = ask_with_system(client, "Why is it blue?")
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens > 200
    assert 200 < cached < second.usage.prompt_tokens
    no_cache = ServerProcess(
        f"--ServerOptions:MaxContextTokens={N_CTX}", "--prefix-cache-mib", "0"
    ).wait_ready()
    try:
        cold = openai.OpenAI(base_url=no_cache.url + "/v1", api_key="x", max_retries=0, timeout=120)
        ask_with_system(cold, "Why is it salty?")
        again = ask_with_system(cold, "Why is it blue?")
    finally:
        no_cache.stop()
    assert again.usage.prompt_tokens_details.cached_tokens == 0
    assert again.choices[0].message.content == second.choices[0].message.content


def test_prefix_cache_usage_in_streams_and_metrics(server, client):
    ask_with_system(client, "What lives there?")
    before = metric(server.url, "smallmind_prompt_tokens_cached_total")
    chunks = list(
        ask_with_system(client, "What lives there?", stream=True, stream_options={"include_usage": True})
    )
    usage = chunks[-1].usage
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1  # all but the last
    assert metric(server.url, "smallmind_prompt_tokens_cached_total") == before + usage.prompt_tokens - 1
