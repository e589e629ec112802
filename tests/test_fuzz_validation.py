"""Random arguments of random types to every public entry point (tests/strategies.py).

The outcome of each call is a result or TypeError / ValueError (AxisError is a ValueError),
or one of the documented exceptions listed in tests/strategies.py; never a crash, a hang, another
exception, a modified input, or a layer / scaler changed by a call that raised. CI runs a
fixed budget of examples; a long run is ``python tools/fuzz_validation.py --seconds 600``.
"""

import os
import subprocess
import sys

import pytest

pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402

import strategies as fuzz_validation  # noqa: E402

import bnfast  # noqa: E402


@settings(max_examples=300, **fuzz_validation.SETTINGS)
@given(fuzz_validation.calls)
def test_random_arguments_to_every_entry_point(data):
    fuzz_validation.check_one(data)


def test_every_public_entry_point_is_fuzzed():
    """A new public function or class must be added to the fuzzer."""
    not_fuzzed = {"show_config", "openmp_enabled", "__version__"}  # no data arguments
    public = set(bnfast.__all__) - not_fuzzed
    missing = public - set(fuzz_validation.ENTRY_POINTS)
    assert not missing, f"add these to tests/strategies.py: {sorted(missing)}"


def test_fuzzer_catches_what_it_should(monkeypatch):
    """The checks bite: another exception type, and an input modified by a failed call."""
    import numpy as np

    def raises_key_error(x):
        raise KeyError("x")

    with pytest.raises(fuzz_validation.Failure, match="unexpected KeyError"):
        fuzz_validation._call("f", raises_key_error, (1,), {})

    def writes_then_fails(x):
        x[0] = 99.0
        raise ValueError("bad")

    with pytest.raises(fuzz_validation.Failure, match="modified"):
        fuzz_validation._call("g", writes_then_fails, (np.zeros(3),), {})
    # A documented output may change when the call succeeds.
    out = np.zeros(3)
    fuzz_validation._call("h", lambda out: out.fill(1.0), (), dict(out=out), outputs=("out",))


def test_long_run_cli_runs():
    """tools/fuzz_validation.py, the long-run CLI over the same strategies, still runs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, os.path.join(root, "tools", "fuzz_validation.py"),
                           "--seconds", "0.1", "--seed", "1",
                           "--examples", "20"], capture_output=True, text=True,
                          timeout=300, cwd=root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no distinct failure(s)" in done.stdout and "calls; outcomes:" in done.stdout
