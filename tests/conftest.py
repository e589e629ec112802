import os
import sys

import numpy as np
import pytest

# Make tests/_helpers.py importable whatever pytest's import mode is.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


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


@pytest.fixture
def seed():
    """A fresh random seed per test, printed so a failure can be replayed with
    BNFAST_TEST_SEED=<seed> (pytest shows captured stdout of failing tests)."""
    fixed = os.environ.get("BNFAST_TEST_SEED")
    value = int(fixed) if fixed else np.random.SeedSequence().entropy
    print(f"random seed: {value} (replay with BNFAST_TEST_SEED={value})")
    return value


@pytest.fixture
def rng(seed):
    return np.random.default_rng(seed)
