"""`python -m smallmind.server [--port N] [--ServerOptions:Key=Value ...]`

Reads the settings, finds the model, starts listening at once (so /healthz answers and
/readyz says "loading"), then loads the model off the event loop and turns ready."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

from smallmind.errors import SmallMindError
from smallmind.server.config import ServerOptions, describe, load_options
from smallmind.server.runtime import ServedModel, resolve_model

log = logging.getLogger("smallmind.server")

SWITCH_INTERVAL_S = 0.001


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        options = load_options(sys.argv[1:] if argv is None else argv)
        source = resolve_model(options)
    except SmallMindError as e:
        print(f"smallmind.server: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    log.info("settings: %s", describe(options))
    # Request preparation (templates, tokenizing, schema compiling) runs in worker threads;
    # a shorter GIL switch interval than Python's 5 ms lets the event loop in sooner while
    # one of them computes, so probes and streams stay prompt.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        return asyncio.run(serve(options, source))
    except KeyboardInterrupt:
        return 0


async def serve(options: ServerOptions, source) -> int:
    """Serves until a signal (exit status 0) or until the model fails to load (2)."""
    import tornado.netutil

    from smallmind.server.app import ServerState, make_app
    from smallmind.server.http_layer import GuardedHTTPServer, Limits

    state = ServerState(options)
    server = GuardedHTTPServer(
        make_app(state),
        Limits(
            max_body_bytes=options.max_body_bytes,
            header_timeout_s=options.header_timeout_ms / 1000,
            body_timeout_s=options.body_timeout_ms / 1000,
        ),
    )
    try:
        sockets = tornado.netutil.bind_sockets(options.port, options.host)
    except OSError as e:
        print(
            f"smallmind.server: error: cannot listen on {options.host}:{options.port}: {e.strerror}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    log.info("listening on http://%s:%d (model %s)", options.host, port, source.path)
    signals = _Signals(asyncio.get_running_loop())
    loader = asyncio.get_running_loop().run_in_executor(None, _load, state, source, options)
    stop: asyncio.Future = asyncio.ensure_future(signals.first.wait())
    await asyncio.wait([loader, stop], return_when=asyncio.FIRST_COMPLETED)
    failure = loader.result() if loader.done() else None
    if failure is not None:
        # A process that cannot serve must end, so an orchestrator sees it and restarts or
        # reports it, exactly as when the file is missing.
        named = failure if str(source.path) in failure else f"{source.path}: {failure}"
        print(f"smallmind.server: error: cannot load the model {named}", file=sys.stderr)
        stop.cancel()
        server.stop()
        return 2
    await stop
    await drain(state, options.drain_timeout_ms / 1000)
    server.stop()
    await server.close_all_connections()
    if state.served is not None:
        state.served.close()
    loader.cancel()
    log.info("stopped")
    return 0


class _Signals:
    """SIGTERM/SIGINT: the first starts the drain, a second one exits at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.first = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._received, sig)

    def _received(self, sig: int) -> None:
        if self.first.is_set():
            log.warning("second %s: exiting now", signal.Signals(sig).name)
            os._exit(1)
        log.info("%s: draining", signal.Signals(sig).name)
        self.first.set()


async def drain(state, timeout_s: float) -> None:
    """New requests get 503 and /readyz says draining; in-flight ones may finish."""
    state.set_status("draining", "the server is shutting down")
    deadline = time.monotonic() + timeout_s
    while state.active_requests > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if state.active_requests:
        log.warning("drain timeout: %d requests still running are cut off", state.active_requests)


def _load(state, source, options) -> str | None:
    """Loads the model in a worker thread; None, or what went wrong in one line."""
    try:
        served = ServedModel(source, options)
        seconds = served.warm_up()
        served.scheduler.on_step = state.metrics.set_batch_size
        served.start()
    except Exception as e:
        log.debug("loading %s failed", source.path, exc_info=True)
        state.set_status("failed", f"loading the model failed: {e}")
        return _one_line(e)
    state.served = served
    if state.status == "loading":
        state.set_status("ready")
    log.info("model %s ready (n_ctx %d, warm-up %.2f s)", served.model_id, served.n_ctx, seconds)
    return None


def _one_line(error: Exception) -> str:
    """A load error as one line: our typed errors say what is wrong; for others (numpy,
    mmap, struct) the type names the kind of failure."""
    text = " ".join(str(error).split()) or "no details"
    return text if isinstance(error, SmallMindError) else f"{type(error).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
