import os
import sys

import numpy as np
import pytest

# Make tests/_helpers.py importable whatever pytest's import mode is.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


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
