"""The kernels' C headers compile as a compiler that is neither GCC nor clang sees them (MSVC,
for the Windows wheels): their vector types, target clones and pragmas are GCC/clang-only and
must stay inside their guards. tools/portable_build.sh builds and tests the whole module that
way (minutes); this syntax check of every header takes a second, and fails on a GNU-only type
used outside its guard (as `bn_vf8` once was in bn_half_one.h)."""
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
CC = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("gcc")

# What tools/portable_build.sh puts before the module: the system headers with GNU C on, then
# the GNU macros off, so that src/*.h take their portable branches.
PRELUDE = """\
#include <Python.h>
#include <numpy/npy_common.h>
#include <math.h>
#include <string.h>
#include <stdint.h>
#include <stdlib.h>
#include <stddef.h>
#include <stdio.h>
#include <float.h>
#include <limits.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <emmintrin.h>
#undef __GNUC__
#undef __GNUC_MINOR__
#undef __GNUC_PATCHLEVEL__
#undef __clang__
"""


def _syntax_check(tmp_path, body):
    source = tmp_path / "portable.c"
    source.write_text(PRELUDE + body)
    cmd = [CC, "-fsyntax-only", "-fopenmp", "-Werror=implicit-function-declaration",
           "-I", str(SRC), "-I", np.get_include(), "-I", sysconfig.get_paths()["include"],
           str(source)]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.skipif(not (SRC / "bn_loops.h").exists(), reason="needs the source tree")
@pytest.mark.skipif(CC is None or "gcc" not in Path(CC).name, reason="needs gcc")
def test_headers_compile_without_gnu_extensions(tmp_path):
    done = _syntax_check(tmp_path, '#include "bn_openmp.h"\n#include "bn_pool.h"\n'
                                   '#include "bn_loops.h"\n')
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.skipif(not (SRC / "bn_loops.h").exists(), reason="needs the source tree")
@pytest.mark.skipif(CC is None or "gcc" not in Path(CC).name, reason="needs gcc")
def test_the_check_sees_a_gnu_type_outside_its_guard(tmp_path):
    """The check can fail: a vector type used outside the guard is an error there."""
    done = _syntax_check(tmp_path, '#include "bn_loops.h"\n'
                                   "static bn_vf8 stray(void);\n")
    assert done.returncode != 0 and "bn_vf8" in done.stderr
