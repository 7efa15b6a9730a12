"""The habits CI enforces, run by the test command too: ruff's lint and format, mypy on
engine/ and server/ (both configured in pyproject.toml), and the native extensions' .pyi
stubs checked against the built modules by mypy's stubtest."""

import subprocess
import sys

import pytest

from tests.conftest import REPO

# slow: not run again against the wheel by scripts/check_wheel.sh, whose nested runs have
# the tests but not the sources these check.
pytestmark = pytest.mark.slow

SHOWN = 6000  # characters of a tool's report kept in a failure message


def run_tool(*args: str) -> None:
    """``python -m <args>`` from the repository root; fails with its report unless it exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        report = (done.stdout + done.stderr).strip()
        pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{report[-SHOWN:]}", pytrace=False)


def test_ruff_check():
    run_tool("ruff", "check", "--output-format", "concise", ".")


def test_ruff_format():
    run_tool("ruff", "format", "--check", ".")


def test_mypy():
    run_tool("mypy")


def test_stubs_match_the_built_extensions():
    run_tool(
        "mypy.stubtest",
        "--ignore-disjoint-bases",
        "--allowlist",
        "tests/stubtest_allowlist.txt",
        "smallmind._kernels",
        "smallmind._tokenize",
    )
