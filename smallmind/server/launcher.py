"""Starting a server as a child process on a free 127.0.0.1 port, for the tests and the scripts.

One launcher for every caller that needs a live server: the end-to-end tests, the load test,
the latency probe and the benchmark (which also starts llama.cpp's servers through it).  It
picks a free port, starts the command with its output in a log file, polls a readiness path
until it answers 200, and stops the child with SIGTERM (SIGKILL if it lingers).

Standard library only, so importing it never loads the engine."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
READY_TIMEOUT_S = 180
STOP_TIMEOUT_S = 20
LOG_TAIL_CHARS = 5000
# /readyz answers 503 with this reason when the model will never load: no point waiting on.
LOAD_FAILED = "loading the model failed"


class ServerStartError(RuntimeError):
    """The server exited, failed to load its model, or was not ready in time."""

    def __init__(self, reason: str, output: str):
        super().__init__(f"{reason}:\n{output}")
        self.reason = reason


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def smallmind_command(*args: str) -> list[str]:
    """`python -m smallmind.server` on {port} of 127.0.0.1, with `args` after."""
    return [sys.executable, "-m", "smallmind.server", "--host", HOST, "--port", "{port}", *args]


def get_status(url: str, timeout: float = 5) -> tuple[int, bytes]:
    """(status, body) of a GET; (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def _load_failed(body: bytes) -> bool:
    try:
        reason = json.loads(body).get("reason", "")
    except (ValueError, AttributeError):
        return False
    return isinstance(reason, str) and reason.startswith(LOAD_FAILED)


class ServerProcess:
    """A server as a child process; `url` once wait_ready() returned.

    `args` go after `python -m smallmind.server --host 127.0.0.1 --port P`; `command` replaces
    that whole command line (its "{port}" is filled in).  `cwd` matters for `-m`: Python puts
    it first on sys.path, so a checkout's own smallmind/ is what the child imports."""

    def __init__(
        self,
        *args: str,
        command: list[str] | None = None,
        env: dict | None = None,
        cwd: str | Path | None = None,
        ready_path: str = "/readyz",
        log_prefix: str = "smallmind-server-",
        own_session: bool = False,
    ):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.ready_path = ready_path
        self.ready_after_s: float | None = None
        # Kept open for the child's lifetime (its stdout and stderr); closed by stop().
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix=f"{log_prefix}{self.port}-", suffix=".log", delete=False
        )
        self.log_path = Path(self.log.name)
        argv = [a.replace("{port}", str(self.port)) for a in (command or smallmind_command(*args))]
        # own_session: a Ctrl-C at the terminal reaches only the caller, which stops the child.
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=own_session,
        )
        self._started = time.monotonic()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> ServerProcess:
        """Returns once the ready path answers 200; ServerStartError with the log's tail else."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self._start_error(f"server exited with {self.proc.returncode}")
            status, body = get_status(self.url + self.ready_path)
            if status == 200:
                self.ready_after_s = time.monotonic() - self._started
                return self
            if _load_failed(body):
                raise self._start_error("server failed to load its model")
            time.sleep(0.2)
        raise self._start_error(f"server not ready after {timeout:g} s")

    def _start_error(self, reason: str) -> ServerStartError:
        return ServerStartError(reason, self.output())

    def output(self, n_chars: int = LOG_TAIL_CHARS) -> str:
        """The last n_chars of the child's stdout and stderr."""
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-n_chars:]

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; the exit code (negative: the signal)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def remove_log(self) -> None:
        self.log_path.unlink(missing_ok=True)

    def stopped_cleanly(self) -> bool:
        """Exited by itself with 0, or on the SIGTERM stop() sent."""
        return self.proc.returncode in (0, -signal.SIGTERM)


@contextlib.contextmanager
def running_server(*args: str, **kwargs):
    """A ServerProcess (same arguments) that is ready inside the block and stopped after it."""
    with ServerProcess(*args, **kwargs) as server:
        yield server.wait_ready()
