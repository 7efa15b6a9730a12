"""Hostile clients and hostile settings at the HTTP and process level (issue 16): each test
reproduces one finding against the real server, over raw sockets where a client library
would refuse to send what an attacker sends.

- settings that would quietly turn a protection off stop start-up (ApiKey, CorsOrigins);
- aborted requests (client gone mid-body, broken framing) release every count, and SIGTERM
  then exits at once instead of waiting for requests that will never finish;
- a corrupt model file ends the process with one line, like a missing one;
- every refusal of the HTTP layer is an OpenAI-style JSON error (400, 408, 413, 414, 431);
- slow headers and bodies shorter than their Content-Length are answered 408 and closed;
- HEAD on the probes and the model list, no version in Server, no traceback for a 504.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from conftest import default_model_path, server_fixture
from server_process import REPO, ServerProcess, http, metric, start_and_expect_exit
from smallmind.server.launcher import free_port

pytestmark = pytest.mark.e2e  # every test starts the server (or its --help)

HEADER_TIMEOUT_MS = 1500
BODY_TIMEOUT_MS = 1500
POST = b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"

# Each way a request body can fail to arrive, as raw bytes (what Tornado alone answered with
# a bare 400, or nothing).
FRAMING_ERRORS = {
    "chunk size zz": POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    "Content-Length -1": POST + b"Content-Length: -1\r\n\r\n",
    "two Content-Lengths": POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n{}",
    "Transfer-Encoding gzip": POST + b"Transfer-Encoding: gzip\r\n\r\n{}",
    "Transfer-Encoding and Content-Length": (
        POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    ),
}


def exchange(server: ServerProcess, data: bytes, timeout: float = 20) -> bytes:
    """Sends data, then reads until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def parse_response(raw: bytes) -> tuple[int, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), raw[:200]
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def openai_error(raw: bytes, status: int, code: str) -> dict:
    """The response in raw is `status` with an OpenAI error body of `code`."""
    got_status, headers, body = parse_response(raw)
    assert got_status == status, raw[:300]
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "code", "param"} and error["code"] == code, error
    return error


server = server_fixture(
    "--ServerOptions:MaxContextTokens=512",
    f"--ServerOptions:HeaderTimeoutMs={HEADER_TIMEOUT_MS}",
    f"--ServerOptions:BodyTimeoutMs={BODY_TIMEOUT_MS}",
)


# ----------------------------------------------------------------------------- fail closed


@pytest.mark.parametrize(
    "setting",
    [
        "--ServerOptions:ApiKey=,",
        "--ServerOptions:ApiKey= ",
        "--ServerOptions:ApiKey=",
        "--ServerOptions:CorsOrigins=,",
        "--ServerOptions:CorsOrigins=app.example",
        "--ServerOptions:CorsOrigins=https://app.example/path",
    ],
)
def test_security_settings_that_protect_nothing_stop_start_up(setting):
    done = start_and_expect_exit(setting, timeout=30)
    key = setting.split("=")[0].removeprefix("--")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and key in done.stderr, done.stderr


# ----------------------------------------------------------------------------- accounting


def test_aborted_requests_release_their_counts_and_sigterm_exits_at_once():
    default_model_path()
    proc = ServerProcess(
        "--ServerOptions:MaxContextTokens=512", "--ServerOptions:DrainTimeoutMs=60000"
    ).wait_ready()
    try:
        for data in FRAMING_ERRORS.values():
            openai_error(exchange(proc, data), 400, "malformed_request")
        # A client that leaves in the middle of its body.
        with socket.create_connection(("127.0.0.1", proc.port)) as sock:
            sock.sendall(POST + b'Content-Length: 100\r\n\r\n{"prompt":')
            time.sleep(0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and metric(proc.url, "smallmind_requests_inflight") != 1:
            time.sleep(0.1)
        # The one request in flight is the scrape itself.
        assert metric(proc.url, "smallmind_requests_inflight") == 1
        assert metric(proc.url, "smallmind_queue_depth") == 0
        sent = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=15) == 0
        assert time.monotonic() - sent < 10, proc.output()
        assert "still running" not in proc.output()
    finally:
        proc.stop()


# ----------------------------------------------------------------------------- corrupt model


def _bad_magic(source, target):
    shutil.copyfile(source, target)
    with open(target, "r+b") as f:
        f.write(b"GGUX")


def _truncated(source, target):
    with open(source, "rb") as f, open(target, "wb") as out:
        out.write(f.read(3 * 2**20))


def _bad_dims(source, target):
    """token_embd.weight declared one column wider than its data and the model's width."""
    shutil.copyfile(source, target)
    with open(target, "r+b") as f:
        head = f.read(16 * 2**20)
        name = b"token_embd.weight"
        at = head.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
        (n_dims,) = struct.unpack_from("<I", head, at)
        assert n_dims == 2
        (ne0,) = struct.unpack_from("<Q", head, at + 4)
        f.seek(at + 4)
        f.write(struct.pack("<Q", ne0 + 1))


@pytest.mark.parametrize("corrupt", [_bad_magic, _truncated, _bad_dims])
def test_a_corrupt_model_file_ends_the_process_with_one_line(tmp_path, corrupt):
    path = tmp_path / f"{corrupt.__name__.strip('_')}.gguf"
    corrupt(default_model_path(), path)
    started = time.monotonic()
    done = start_and_expect_exit(f"--ServerOptions:ModelPath={path}")
    assert time.monotonic() - started < 30
    assert done.returncode == 2
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and str(path) in errors[0], done.stderr[-3000:]


# ----------------------------------------------------------------------------- JSON refusals


@pytest.mark.parametrize("name", FRAMING_ERRORS)
def test_framing_errors_are_json_400(server, name):
    error = openai_error(exchange(server, FRAMING_ERRORS[name]), 400, "malformed_request")
    assert error["type"] == "invalid_request_error"


def test_chunked_body_over_the_limit_is_json_413(server):
    too_big = 11 * 2**20  # MaxBodyBytes is 10 MiB
    raw = exchange(server, POST + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % too_big + b"x" * 65536)
    assert "10485760" in openai_error(raw, 413, "request_too_large")["message"]


@pytest.mark.parametrize(
    "headers",
    [
        b"X-Big: " + b"a" * 70_000 + b"\r\n",  # > 64 KiB of headers
        b"".join(b"X-%d: y\r\n" % i for i in range(20_000)),  # 20k headers
        b"".join(b"X-%d: y\r\n" % i for i in range(150)),  # few bytes, many lines
    ],
    ids=["70 KB header", "20k headers", "150 headers"],
)
def test_oversized_headers_are_json_431(server, headers):
    raw = exchange(server, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
    openai_error(raw, 431, "headers_too_large")


def test_overlong_url_is_json_414(server):
    raw = exchange(server, b"GET /healthz?" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    openai_error(raw, 414, "url_too_long")


def test_malformed_request_line_is_json_400(server):
    openai_error(exchange(server, b"NONSENSE\r\nHost: t\r\n\r\n"), 400, "malformed_request")


# ----------------------------------------------------------------------------- timeouts


def test_slow_headers_get_408_and_are_closed(server):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # never the blank line
        for _ in range(3):  # slowloris: a header now and then
            time.sleep(0.3)
            sock.sendall(b"X-Slow: 1\r\n")
        raw = read_until_closed(sock)
    openai_error(raw, 408, "request_timeout")
    assert time.monotonic() - started < HEADER_TIMEOUT_MS / 1000 + 5


def test_idle_connection_is_closed_without_an_answer(server):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        assert read_until_closed(sock) == b""
    assert time.monotonic() - started < HEADER_TIMEOUT_MS / 1000 + 5


def test_body_shorter_than_its_content_length_gets_408_and_is_closed(server):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(POST + b'Content-Length: 100\r\n\r\n{"prompt": ')
        raw = read_until_closed(sock)
    error = openai_error(raw, 408, "request_timeout")
    assert "body" in error["message"]
    assert time.monotonic() - started < BODY_TIMEOUT_MS / 1000 + 5


def test_timeouts_are_settings_documented_in_help():
    done = subprocess.run(
        [sys.executable, "-m", "smallmind.server", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "HeaderTimeoutMs (int, default 10000)" in done.stdout
    assert "BodyTimeoutMs (int, default 30000)" in done.stdout
    readme = (REPO / "README.md").read_text()
    assert "`HeaderTimeoutMs` (10000)" in readme and "`BodyTimeoutMs` (30000)" in readme


# ----------------------------------------------------------------------------- small things


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/models"])
def test_head_answers_like_get_without_a_body(server, path):
    raw = exchange(server, f"HEAD {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    status, headers, body = parse_response(raw)
    get_status, get_headers, get_body = http("GET", server.url + path)
    assert status == get_status == 200 and body == b""
    assert int(headers["content-length"]) == len(get_body)


def test_server_header_names_no_version(server):
    _, headers, _ = http("GET", server.url + "/healthz")
    assert "Tornado" not in headers.get("Server", "") and "6." not in headers.get("Server", "")


def test_expected_outcomes_are_logged_without_traceback(server):
    # A 504 (the request's own timeout) and a 404: answers, not faults.
    status, _, _ = http(
        "POST",
        server.url + "/v1/completions",
        json.dumps({"prompt": "1, 2, 3,", "max_tokens": 400, "timeout_ms": 1}).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 504
    assert http("GET", server.url + "/nowhere")[0] == 404
    log = server.output()
    assert "Traceback" not in log
    assert any("WARNING" in line and " 504 " in line for line in log.splitlines()), log[-2000:]


# ----------------------------------------------------------------------------- first run


def readme_first_command() -> str:
    """Set-up command 1 of the README, without its comment."""
    text = (REPO / "README.md").read_text()
    setup = text.split("## Set-up on a fresh machine", 1)[1]
    first_line = setup.split("```bash\n", 1)[1].splitlines()[0]
    return first_line.split("#", 1)[0].strip()


@pytest.mark.slow
def test_readme_first_command_serves_from_a_fresh_clone(tmp_path):
    """`git clone ... && cd ... && <README command 1>` serves the default model: /readyz and
    /healthz answer 200.

    It runs in a fresh virtualenv (so the editable install the suite runs from stays as it
    is) that sees the installed dependencies through a path file, so nothing is downloaded.
    Not --system-site-packages: that would also run the suite's editable-install hook, which
    finds the compiled modules of the suite's checkout for any tree, hiding the very failure
    a new user meets.  pip is told through its environment to stay offline and build with
    the tools already installed."""
    command = readme_first_command()
    assert command.endswith("python -m smallmind.server"), command
    default_model_path()
    clone, venv = tmp_path / "smallmind", tmp_path / "venv"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    venv_site = subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Plain directories in a .pth file go on sys.path; the .pth files inside them do not run.
    installed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(venv_site) / "installed_dependencies.pth").write_text("\n".join(sorted(installed)) + "\n")
    port = free_port()
    env = dict(
        os.environ,
        PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
        PIP_NO_INDEX="1",
        PIP_NO_BUILD_ISOLATION="0",  # pip's spelling of --no-build-isolation
        ServerOptions__Port=str(port),
        ServerOptions__Host="127.0.0.1",
    )
    env.pop("PYTHONPATH", None)
    log = open(tmp_path / "run.log", "w+b")  # noqa: SIM115 (the child's output; closed at the end)
    run = subprocess.Popen(
        ["bash", "-c", command],
        cwd=clone,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # /healthz answers while the model still loads: only /readyz says it serves.
        deadline = time.monotonic() + 1200  # the build compiles every kernel unit
        ready = None
        while time.monotonic() < deadline and run.poll() is None and ready is None:
            try:
                status, _, body = http("GET", url + "/readyz", timeout=5)
            except OSError:
                time.sleep(1)
                continue
            if status == 200 or "failed" in json.loads(body).get("reason", ""):
                ready = status
            time.sleep(0.5)
        log.seek(0)
        output = log.read().decode(errors="replace")[-4000:]
        assert ready == 200, output
        assert http("GET", url + "/healthz")[0] == 200
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGTERM)
            try:
                run.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
        log.close()
    assert run.returncode == 0


# ----------------------------------------------------------------------------- fuzzing

FUZZ_EXAMPLES = 25  # per operation and phase
FUZZ_SEED = 16


def test_openapi_document_describes_every_route(server):
    status, headers, body = http("GET", server.url + "/openapi.json")
    document = json.loads(body)
    assert status == 200 and document["openapi"] == "3.1.0"
    from smallmind.server.app import ServerState, make_app
    from smallmind.server.config import ServerOptions

    routes = {
        rule.matcher.regex.pattern.rstrip("$").replace("(.+)", "{model}")
        for rule in make_app(ServerState(ServerOptions())).default_router.rules[0].target.rules
    }
    assert routes == set(document["paths"])


@pytest.mark.slow
def test_schemathesis_finds_no_server_fault_and_no_schema_violation(tmp_path):
    """schemathesis against the live server, from its own /openapi.json: every response
    conforms to the documented status codes, content types, headers and schemas, and none
    is a fault (tests/schemathesis_checks.py); the server is alive after."""
    default_model_path()
    proc = ServerProcess(
        "--ServerOptions:MaxContextTokens=128",
        "--ServerOptions:DefaultMaxTokens=8",
        "--ServerOptions:RequestTimeoutMs=60000",
    ).wait_ready()
    timeouts = tmp_path / "timeouts.jsonl"
    timeouts.touch()
    env = dict(
        os.environ,
        SCHEMATHESIS_HOOKS="schemathesis_checks",
        SMALLMIND_FUZZ_TIMEOUTS=str(timeouts),
        PYTHONPATH=f"{REPO / 'tests'}:{os.environ.get('PYTHONPATH', '')}",
        NO_COLOR="1",
    )
    command = [
        sys.executable,
        "-c",
        "from schemathesis.cli import schemathesis; schemathesis()",
        "run",
        proc.url + "/openapi.json",
        "--max-examples",
        str(FUZZ_EXAMPLES),
        "--seed",
        str(FUZZ_SEED),
        "--generation-database",
        "none",
        "--request-timeout",
        "120",
        "--checks",
        "not_a_server_fault,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,response_headers_conformance",
    ]
    try:
        # In tmp_path: schemathesis keeps a crash cache in its working directory.
        run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        summary = run.stdout[run.stdout.rfind("SUMMARY") :]
        print(
            summary,
            f"\n504 timeout_error answers (a request's own deadline): "
            f"{len(set(timeouts.read_text().splitlines()))}",
        )
        assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-3000:]
        assert re.search(r"Tested: 1[0-9]", summary), summary
        assert http("GET", proc.url + "/healthz")[0] == 200
        assert proc.proc.poll() is None
    finally:
        proc.stop()
