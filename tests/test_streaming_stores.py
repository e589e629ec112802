"""Non-temporal stores (a speed knob, off by default) never change a result."""
import numpy as np
import pytest

import bnfast
from bnfast import _kernels


@pytest.fixture
def streaming_everywhere():
    old = _kernels.set_stream_min_bytes(0)
    yield
    _kernels.set_stream_min_bytes(old)


@pytest.mark.parametrize("shape, axis", [((6, 20, 33, 17), 1), ((6, 33, 17, 20), -1),
                                         ((3001, 7), 1), ((50001,), None)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_outputs_are_bit_identical(rng, shape, axis, dtype, request):
    x = (rng.standard_normal(shape) * 3 + 7).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = 1 if axis is None else shape[axis]
    gamma, beta = rng.uniform(0.5, 2, C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)

    def run():
        y, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis)
        yi = bnfast.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis)
        dx, dg, db = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
        return y, yi, dx, dg, db

    plain = run()
    request.getfixturevalue("streaming_everywhere")
    streamed = run()
    for a, b in zip(plain, streamed):
        np.testing.assert_array_equal(a, b)
