"""Build the native kernels.

One translation unit per instruction set, each compiled with only its own flags, so a
wheel built anywhere runs on any CPU of its architecture: dispatch.c picks the best unit
at run time.  Never -march=native.  Needs Cython >= 3 and numpy (see pyproject.toml).

csrc/ builds with -Wall -Wextra -Werror: a new warning fails the build (and CI).  A compiler
that warns where gcc does not can build with SMALLMIND_WERROR=0 (warnings stay visible).
The C that Cython generates gets -Wall -Wextra without -Werror: it is Cython's code, and its
warnings change with Cython releases this project does not pin."""

import os
import platform
import subprocess
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MACHINE = platform.machine().lower()
IS_X86 = MACHINE in ("x86_64", "amd64", "i686", "x86")
IS_ARM64 = MACHINE in ("aarch64", "arm64")

COMMON_FLAGS = ["-O3", "-std=gnu11", "-fno-strict-aliasing"]
WARNING_FLAGS = ["-Wall", "-Wextra"]
CSRC_WARNING_FLAGS = WARNING_FLAGS + ([] if os.environ.get("SMALLMIND_WERROR") == "0" else ["-Werror"])

# (source, flags, macro announcing the unit to dispatch.c / cpu_features.c)
if IS_X86:
    ISA_UNITS = [
        ("csrc/dot_avx2.c", ["-mavx2", "-mfma", "-mf16c"], "SM_HAVE_AVX2_UNIT"),
        (
            "csrc/dot_avx512.c",
            [
                "-mavx2",
                "-mfma",
                "-mf16c",
                "-mavx512f",
                "-mavx512bw",
                "-mavx512vl",
                "-mavx512dq",
                "-mavx512vnni",
            ],
            "SM_HAVE_AVX512_UNIT",
        ),
    ]
elif IS_ARM64:
    ISA_UNITS = [("csrc/dot_neon.c", ["-march=armv8.2-a+dotprod+fp16"], "SM_HAVE_NEON_UNIT")]
else:
    ISA_UNITS = []

# A test build (tests/test_isa_emulated_suite.py): SMALLMIND_EMULATE=avx512,neon compiles
# those units through SIMDe's portable intrinsics (-DSM_SIMDE, libsimde-dev) on an x86-64
# host with AVX2, and announces them as emulated, so that the whole extension, not only the
# dot products, runs their tables on a CPU that lacks them.  Never for what we ship.
EMULATED_UNITS = {
    "avx512": ("csrc/dot_avx512.c", "SM_HAVE_AVX512_UNIT", "SM_EMULATED_AVX512"),
    "neon": ("csrc/dot_neon.c", "SM_HAVE_NEON_UNIT", "SM_EMULATED_NEON"),
}
EMULATE = [name.strip() for name in os.environ.get("SMALLMIND_EMULATE", "").split(",") if name.strip()]
if EMULATE:
    unknown = sorted(set(EMULATE) - set(EMULATED_UNITS))
    if unknown or not IS_X86:
        sys.exit(f"SMALLMIND_EMULATE: emulates {', '.join(EMULATED_UNITS)} on x86-64 only, got {EMULATE}")
    emulated_sources = {EMULATED_UNITS[name][0] for name in EMULATE}
    ISA_UNITS = [u for u in ISA_UNITS if u[0] not in emulated_sources]
    for name in EMULATE:
        source, have, emulated = EMULATED_UNITS[name]
        # -Wno-psabi: gcc notes that SIMDe's 512-bit vectors, passed by value inside the
        # emulated AVX-512 unit, have another ABI without -mavx512f; no vector crosses a
        # unit's C API (pointers and scalars only), so the note does not apply.
        flags = ["-DSM_SIMDE", f"-D{emulated}=1", "-mavx2", "-mfma", "-mf16c", "-Wno-psabi"]
        ISA_UNITS.append((source, flags, have))

BASE_SOURCES = [
    "csrc/dispatch.c",
    "csrc/cpu_features.c",
    "csrc/matmul.c",
    "csrc/team.c",
    "csrc/membench.c",
    "csrc/dot_scalar.c",
    "csrc/forward.c",
    "csrc/model.c",
]
SAMPLE_SOURCE = "csrc/sample.c"
# Load-time repacking prototype (issue 18): its matmul is AVX2 code, built where AVX2 is
REPACK_SOURCE = ("csrc/repack_avx2.c", ["-mavx2", "-mfma", "-mf16c"] if IS_X86 else [])


def openmp_flags(compiler_cmd):
    """-fopenmp if the compiler links it (gcc, clang with libomp); else build without threads."""
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.c")
        with open(path, "w") as f:
            f.write(src)
        try:
            r = subprocess.run(
                [compiler_cmd, "-fopenmp", path, "-o", os.path.join(tmp, "t")], capture_output=True
            )
        except OSError:
            return []
        return ["-fopenmp"] if r.returncode == 0 else []


class BuildWithIsaUnits(build_ext):
    """Compile csrc/ (each ISA unit with its own flags) under -Werror and link the objects
    into the extension, whose own source is the C that Cython generated."""

    def build_extension(self, ext):
        if ext.name != "smallmind._kernels":  # plain extensions: default flags
            return super().build_extension(ext)
        omp = openmp_flags(self.compiler.compiler_so[0])
        if not omp:
            print("warning: OpenMP not found; kernels will run on one thread", file=sys.stderr)
        ext.extra_compile_args = COMMON_FLAGS + WARNING_FLAGS + omp
        ext.extra_link_args = omp + ["-lm"]
        objects = self.compiler.compile(
            BASE_SOURCES,
            output_dir=self.build_temp,
            macros=ext.define_macros,
            include_dirs=["csrc"],
            extra_postargs=COMMON_FLAGS + CSRC_WARNING_FLAGS + omp,
        )
        # the sampler repeats numpy's float64 arithmetic bit for bit: no fused multiply-adds
        objects += self.compiler.compile(
            [SAMPLE_SOURCE],
            output_dir=self.build_temp,
            include_dirs=["csrc"],
            extra_postargs=COMMON_FLAGS + CSRC_WARNING_FLAGS + ["-ffp-contract=off"],
        )
        for src, flags, _ in ISA_UNITS:
            objects += self.compiler.compile(
                [src],
                output_dir=self.build_temp,
                include_dirs=["csrc"],
                extra_postargs=COMMON_FLAGS + CSRC_WARNING_FLAGS + flags + omp,
            )
        objects += self.compiler.compile(
            [REPACK_SOURCE[0]],
            output_dir=self.build_temp,
            include_dirs=["csrc"],
            extra_postargs=COMMON_FLAGS + CSRC_WARNING_FLAGS + REPACK_SOURCE[1],
        )
        ext.extra_objects = objects
        super().build_extension(ext)


extension = Extension(
    "smallmind._kernels",
    # csrc/ is compiled by BuildWithIsaUnits (MANIFEST.in puts it in the sdist)
    sources=["smallmind/_kernels.pyx"],
    include_dirs=["csrc", numpy.get_include()],
    define_macros=[(macro, "1") for _, _, macro in ISA_UNITS]
    + [(EMULATED_UNITS[name][2], "1") for name in EMULATE]
    + [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    depends=[
        "csrc/quants.h",
        "csrc/kernels.h",
        "csrc/forward.h",
        "csrc/model.h",
        "csrc/sample.h",
        "csrc/repack.h",
        "smallmind/_engine.pxi",
    ]
    + BASE_SOURCES
    + [SAMPLE_SOURCE, REPACK_SOURCE[0]]
    + [u[0] for u in ISA_UNITS],
)

# The tokenizer's merge loops (pure Python fallback in smallmind/engine/tokenizer.py).
tokenize_extension = Extension(
    "smallmind._tokenize", sources=["smallmind/_tokenize.pyx"], extra_compile_args=["-O3"] + WARNING_FLAGS
)

setup(
    ext_modules=cythonize(
        [extension, tokenize_extension],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False},
    ),
    cmdclass={"build_ext": BuildWithIsaUnits},
)
