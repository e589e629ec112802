"""Accuracy on data with a large offset (issue section 6): float32 1e4 + N(0, 1),
about 1e6 elements per channel, against the float64 reference of the same float32 values."""

import numpy as np
import pytest

import bnfast
from bnfast import reference as ref

LAYOUTS = [
    pytest.param((1_000_000, 2), 1, id="NC"),
    pytest.param((4, 2, 500, 500), 1, id="NCHW"),
    pytest.param((4, 500, 500, 2), -1, id="NHWC"),
    pytest.param((1_000_000,), 0, id="1d"),
]


@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_large_offset_float32(rng, shape, axis):
    x = (1e4 + rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    rmean, rvar = ref.moments(x, axis=axis)

    mean, var = bnfast.moments(x, axis=axis)
    np.testing.assert_allclose(var, rvar, rtol=1e-6, err_msg="moments var")
    np.testing.assert_allclose(mean, rmean, rtol=1e-10, err_msg="moments mean")

    y, fmean, invstd = bnfast.batch_norm_forward(x, axis=axis)
    ry, _, rinvstd, _, _ = ref.batch_norm_forward(x, axis=axis)
    np.testing.assert_allclose(1 / invstd**2 - 1e-5, rvar, rtol=1e-6, err_msg="forward var")
    np.testing.assert_allclose(fmean, rmean, rtol=1e-10, err_msg="forward mean")
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ry, rtol=0, atol=1e-5, err_msg="forward y")
    del y, ry

    yi = bnfast.batch_norm_inference(x, rmean, rvar, axis=axis)
    ryi = ref.batch_norm_inference(x, rmean, rvar, axis=axis)
    assert yi.dtype == np.float32
    np.testing.assert_allclose(yi, ryi, rtol=0, atol=1e-5, err_msg="inference y")
