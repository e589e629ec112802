"""Seeds and markers for the whole suite.

One session seed drives every random choice of a run: BNFAST_TEST_SEED when it is set, else a
fresh one. pytest prints it in its header, so one environment variable replays a whole run.
Each test's own seed is derived from the session seed and the test's node id, so a test sees
the same data whatever else runs and in whichever order; a failing test prints the line that
replays it alone. Hypothesis draws from a seed derived the same way (unless --hypothesis-seed
is given), under the "ci" profile when BNFAST_TEST_SEED or CI=true is set.

A seed sweep: BNFAST_TEST_SWEEP=N runs every test that takes the ``seed`` (or ``rng``) fixture
N times, under the session seeds S, S+1, ..., S+N-1 (S the session seed), in one process; a
failure prints the session seed that replays it.
"""
import hashlib
import os
import re
import sys

import numpy as np
import pytest

# Make tests/_helpers.py and tests/strategies.py importable whatever pytest's import mode is.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

SEED_VARIABLE = "BNFAST_TEST_SEED"
SWEEP_VARIABLE = "BNFAST_TEST_SWEEP"
# The sweep's part of a node id: "sweepN-" inside the brackets, "-sweepN]" or "[sweepN]".
_SWEEP_ID = re.compile(r"(?<=[\[-])sweep\d+-|-sweep\d+(?=\])|\[sweep\d+\]")


def _session_seed():
    fixed = os.environ.get(SEED_VARIABLE, "").strip()
    return int(fixed) if fixed else int(np.random.SeedSequence().entropy)


SESSION_SEED = _session_seed()


def derive_seed(*keys, session_seed=None):
    """A 128-bit seed from the session seed and ``keys`` (a hash: independent of test order)."""
    session_seed = SESSION_SEED if session_seed is None else session_seed
    text = ":".join(str(k) for k in (session_seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "little")


def _hypothesis_profile():
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    return "ci" if ci or os.environ.get(SEED_VARIABLE, "").strip() else "dev"


def _register_hypothesis_profiles():
    try:
        from hypothesis import settings
    except ImportError:
        return None
    # deadline=None: the machine is shared, a slow example is not a failure. print_blob: a
    # failure prints the line that replays its example.
    settings.register_profile("dev", deadline=None, print_blob=True)
    # CI: no example database either, so a run depends on the seed alone, not on local files.
    settings.register_profile("ci", deadline=None, print_blob=True, database=None)
    name = _hypothesis_profile()
    settings.load_profile(name)
    return name


@pytest.hookimpl(tryfirst=True)  # before hypothesis' own plugin reads --hypothesis-seed
def pytest_configure(config):
    config._bnfast_hypothesis_profile = _register_hypothesis_profiles()
    if (config._bnfast_hypothesis_profile is not None
            and getattr(config.option, "hypothesis_seed", None) is None):
        config.option.hypothesis_seed = derive_seed("hypothesis") % 2**64


def pytest_report_header(config):
    lines = [f"bnfast test seed: {SESSION_SEED} (replay this run with "
             f"{SEED_VARIABLE}={SESSION_SEED})"]
    profile = getattr(config, "_bnfast_hypothesis_profile", None)
    if profile is not None:
        lines.append(f"hypothesis: profile {profile!r}, seed "
                     f"{getattr(config.option, 'hypothesis_seed', None)}")
    return lines


def pytest_terminal_summary(terminalreporter):
    """The seed again at the end (``-q`` hides the header), with how to replay the run."""
    terminalreporter.write_line(f"bnfast test seed: {SESSION_SEED} (replay this run with "
                                f"{SEED_VARIABLE}={SESSION_SEED})")


def pytest_collection_modifyitems(config, items):
    """Tests marked slow (hours of CPU or many GiB of memory) run only when asked for:
    ``pytest -m slow`` or BNFAST_SLOW=1. A plain ``pytest`` (CI) skips them."""
    if os.environ.get("BNFAST_SLOW", "").strip() == "1" or "slow" in (config.option.markexpr
                                                                       or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or BNFAST_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _sweep_size():
    text = os.environ.get(SWEEP_VARIABLE, "").strip()
    return int(text) if text else 0


def pytest_generate_tests(metafunc):
    if _sweep_size() and "seed" in metafunc.fixturenames:
        metafunc.parametrize("_sweep_offset", range(_sweep_size()), indirect=True,
                             ids=[f"sweep{i}" for i in range(_sweep_size())])


@pytest.fixture
def _sweep_offset(request):
    """How far this run of a test is from the session seed in a sweep (0 outside one)."""
    return getattr(request, "param", 0)


@pytest.fixture
def seed(request, _sweep_offset):
    """This test's seed: derived from the session seed and the node id, printed so that a
    failure (pytest shows the captured stdout of failing tests) can be replayed alone."""
    session_seed = SESSION_SEED
    nodeid = request.node.nodeid
    if _sweep_size():
        session_seed += _sweep_offset
        nodeid = _SWEEP_ID.sub("", nodeid)
    value = derive_seed(nodeid, session_seed=session_seed)
    print(f"random seed: {value} (replay: {SEED_VARIABLE}={session_seed} pytest '{nodeid}')")
    return value


@pytest.fixture
def rng(seed):
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def dask_client():
    """One dask.distributed LocalCluster for the session (test_dask*.py): two worker
    processes with one thread each, on 127.0.0.1 only, closed at the end however the tests
    end. Started on first use; skips where dask.distributed is not installed."""
    import warnings

    distributed = pytest.importorskip("dask.distributed")
    with warnings.catch_warnings():
        # The scheduler's HTTP server (127.0.0.1 here) moves off 8787 when that port is taken.
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None)
    try:
        with distributed.Client(cluster) as client:
            yield client
    finally:
        cluster.close()
