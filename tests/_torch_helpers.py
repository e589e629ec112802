"""Shared by the bnfast.torch tests: they check bnfast's kernels, so the hand-off of small
calls to PyTorch's own kernel (bnfast.torch.set_torch_handoff) is off in every test of a
module that imports ``kernels_only``, except where a test turns it on itself."""
import pytest


@pytest.fixture(autouse=True)
def kernels_only():
    import bnfast.torch

    previous = bnfast.torch.set_torch_handoff(False)
    yield
    bnfast.torch.set_torch_handoff(previous)
