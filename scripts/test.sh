#!/usr/bin/env bash
# The project's test command: installs everything the tests need on a fresh machine
# (system packages with apt-get, Python packages with pip), builds the extension, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# SIMDe lets the tests run the AVX-512 and NEON kernels on any CPU (tests/test_isa_emulated.py).
if [ ! -f /usr/include/simde/x86/avx512.h ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libsimde-dev gcc
    else
        echo "test.sh: please install SIMDe headers (libsimde-dev) and gcc" >&2
    fi
fi

python -m pip install -q -e ".[test]"
python -m pytest -q "$@"
