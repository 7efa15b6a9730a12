#!/usr/bin/env bash
# The project's test command: installs everything the tests need on a fresh machine
# (system packages with apt-get, Python packages with pip), builds the extension, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# SIMDe lets the tests run the AVX-512 and NEON kernels on any CPU (tests/test_isa_emulated.py);
# curl runs the README's examples against the server (tests/test_server.py); nginx is the load
# balancer of the scale-out test (tests/test_scale_out.py).
missing=()
[ -f /usr/include/simde/x86/avx512.h ] || missing+=(libsimde-dev)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
    else
        echo "test.sh: please install: ${missing[*]}" >&2
    fi
fi

python -m pip install -q -e ".[test]"
python -m pytest -q "$@"
