#!/usr/bin/env bash
# Build the kernels as a C compiler that is neither GCC nor clang would see them, and run the
# kernel tests on that build.
#
#   bash tools/portable_build.sh [pytest arguments]
#
# The headers of src/ give GCC and clang vector types, target clones and pragmas, and every
# other compiler (MSVC for the Windows wheels) portable C: plain lane arrays, no dispatch.
# No MSVC runs here, so this compiles the whole module with GCC after undefining __GNUC__ and
# __clang__, once every system header is in (glibc's and GCC's own headers need them), so
# src/*.h and Cython's generated code take their non-GNU branches. It builds in a temporary
# copy of the tracked files and leaves the checkout alone. Default tests: the kernels against
# the reference, thread-count independence, accuracy, the fused passes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 tar c) | tar x -C "$WORK"
cat > "$WORK/prelude.h" <<'EOF'
#include <Python.h>
#include <numpy/arrayobject.h>
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
EOF

cd "$WORK"
# The prelude goes to the extension's compile only: setup.py's OpenMP probe also reads CFLAGS,
# and its probe program has no Python headers to include.
python - <<'EOF'
src = open("setup.py").read()
src = src.replace("extra_compile_args=COMPILE_ARGS,",
                  "extra_compile_args=COMPILE_ARGS + ['-include', 'prelude.h'],", 1)
assert "prelude.h" in src, "setup.py changed: update tools/portable_build.sh"
open("setup.py", "w").write(src)
EOF
python setup.py build_ext --inplace > build.log 2>&1 || { tail -50 build.log; exit 1; }
# The portable branches were taken: no AVX2 clones (GCC's target_clones) in the module.
if nm bnfast/_kernels*.so | grep -q "avx2"; then
    echo "the module still has AVX2 clones: the GNU branches were compiled" >&2
    exit 1
fi
python -c "import bnfast; bnfast.show_config()"
if [ "$#" -eq 0 ]; then
    set -- tests/test_reference.py tests/test_functional.py tests/test_threads.py \
        tests/test_accuracy.py tests/test_fused.py tests/test_streaming_stores.py
fi
python -m pytest -q -x -p no:cacheprovider "$@"
