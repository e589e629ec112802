"""Build bnfast's compiled kernels.

Build switches (environment variables, read at build time):

BNFAST_OPENMP=0     build without OpenMP (serial kernels). By default OpenMP is used when a
                    compile-and-run probe succeeds; otherwise the build warns loudly.
BNFAST_NATIVE=1     add -march=native (faster, but the result runs only on this CPU family).
BNFAST_AVX512=1     also clone the vectorized loops for x86-64-v4 (AVX-512), picked at load time
                    like the AVX2 clones: not measured on AVX-512 hardware yet, hence a switch
                    (docs/design.md §3, "Instruction sets").
BNFAST_DEBUG=1      turn Cython's bounds/wraparound checks back on and build with -O0 -g.
BNFAST_SANITIZE=1   build with AddressSanitizer and UndefinedBehaviorSanitizer.
"""
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d\\n", n);
        return n > 0 ? 0 : 1;
    }
    """
)


def _compiler_argv():
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return cc.split()


def _env_flags(*names):
    """The flags of these environment variables, which setuptools adds to the real build too:
    the probe must see the same include and library paths (Homebrew's libomp) and, on macOS,
    the same ARCHFLAGS (a cross build for x86_64 on arm64 must not pass an arm64 probe)."""
    return [flag for name in names for flag in shlex.split(os.environ.get(name, ""))]


def openmp_flags():
    """Return (compile_args, link_args) for OpenMP, or None when the probe fails."""
    if os.environ.get("BNFAST_OPENMP", "").strip() == "0":
        return None
    if sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"])]
    elif sys.platform == "win32":
        return (["/openmp"], [])
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    tmp = tempfile.mkdtemp(prefix="bnfast-omp-")
    try:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        for cflags, lflags in candidates:
            arch = _env_flags("ARCHFLAGS") if sys.platform == "darwin" else []
            cmd = (_compiler_argv() + _env_flags("CPPFLAGS", "CFLAGS") + arch + cflags
                   + [src, "-o", exe] + _env_flags("LDFLAGS") + lflags)
            try:
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
                subprocess.run([exe], check=True, capture_output=True, timeout=60)
            except (OSError, subprocess.SubprocessError):
                continue
            return cflags, lflags
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return None


def extension_flags():
    debug = _flag("BNFAST_DEBUG")
    if sys.platform == "win32":
        compile_args, link_args = ["/O2"], []
    else:
        compile_args = ["-O0", "-g"] if debug else ["-O3"]
        # -ffp-contract=off: no silent FMA contraction, so every build rounds the same way.
        compile_args += ["-ffp-contract=off", "-fno-math-errno", "-Wno-unused-function"]
        # The thread pool (src/bn_pool.h) is POSIX threads.
        compile_args.append("-pthread")
        link_args = ["-pthread"]
        if _flag("BNFAST_NATIVE"):
            compile_args.append("-march=native")
        if _flag("BNFAST_SANITIZE"):
            san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
            compile_args += san + ["-g"]
            link_args += san
    omp = openmp_flags()
    if omp is None:
        reason = ("BNFAST_OPENMP=0" if os.environ.get("BNFAST_OPENMP", "").strip() == "0"
                  else "the OpenMP compile-and-run probe failed")
        bar = "*" * 78
        print(f"\n{bar}\nWARNING: bnfast is being built WITHOUT OpenMP ({reason}).\n"
              f"Every kernel will run on one thread. Install an OpenMP runtime (libgomp/libomp)\n"
              f"and rebuild to get the parallel kernels.\n{bar}\n", file=sys.stderr)
    else:
        compile_args += omp[0]
        link_args += omp[1]
    return compile_args, link_args, omp is not None, debug


COMPILE_ARGS, LINK_ARGS, HAVE_OPENMP, DEBUG = extension_flags()

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "nonecheck": False,
    "embedsignature": True,
    "autotestdict": False,
}

# _kernels.pyx includes the .pxi files; the .h files are its C side.
KERNEL_SOURCES = [
    "src/loops.pxi", "src/plan.pxi", "src/stats.pxi", "src/elementwise.pxi", "src/backward.pxi",
    "src/plain.pxi", "src/sparse.pxi", "src/config.pxi",
    "src/bn_loops.h", "src/bn_elementwise_impl.h", "src/bn_passes_impl.h", "src/bn_stats_impl.h",
    "src/bn_half.h", "src/bn_half_inst.h", "src/bn_half_one.h", "src/bn_half_exports.h",
    "src/bn_openmp.h", "src/bn_pool.h",
]

extensions = [
    Extension(
        "bnfast._kernels",
        sources=["src/_kernels.pyx"],
        include_dirs=["src", np.get_include()],
        define_macros=[
            ("NPY_NO_DEPRECATED_API", "NPY_1_21_API_VERSION"),
            ("BNFAST_COMPILE_FLAGS", '"' + " ".join(COMPILE_ARGS) + '"'),
        ] + ([("BNFAST_AVX512", "1")] if _flag("BNFAST_AVX512") else []),
        extra_compile_args=COMPILE_ARGS,
        extra_link_args=LINK_ARGS,
        # Every file the module is made of: a change to any of them rebuilds it.
        depends=KERNEL_SOURCES,
    )
]

class BuildExt(build_ext):
    """build_ext that also leaves the compiled module in the source tree.

    ``pip install . && python -m bnfast`` run from a checkout imports the ``bnfast`` folder in
    the current directory, not the installed copy; with the module beside the sources that
    folder works too.  (The copy is a build product: ignored by git.)
    """

    def run(self):
        super().run()
        if not self.inplace:
            try:
                self.copy_extensions_to_source()
            except OSError as exc:  # read-only checkout: the installed copy still works
                print(f"note: could not copy the extension into the source tree: {exc}")


setup(
    ext_modules=cythonize(extensions, compiler_directives=directives, annotate=False),
    cmdclass={"build_ext": BuildExt},
)
