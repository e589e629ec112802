"""The typed stub bnfast/_kernels.pyi matches the compiled module (mypy.stubtest)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kernel_stub_matches_compiled_module():
    pytest.importorskip("mypy")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--mypy-config-file",
         os.path.join(ROOT, "pyproject.toml"), "bnfast._kernels"],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_package_is_marked_typed():
    import bnfast
    assert os.path.exists(os.path.join(os.path.dirname(bnfast.__file__), "py.typed"))
